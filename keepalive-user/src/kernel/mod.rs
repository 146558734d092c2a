//! What kato learns about the running kernel before loading its programs.

pub mod btf;
pub mod cache;
pub mod hz;
pub mod kallsyms;
pub mod offsets;

use std::{collections::BTreeMap, path::PathBuf};

use keepalive_common::{IterConfig, KernelConfig};
use thiserror::Error;

use btf::{Btf, BtfError};

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const KEEPALIVE_TIMER_FN: &str = "tcp_keepalive_timer";

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("{0} (kato needs kernel BTF: CONFIG_DEBUG_INFO_BTF=y, or point --btf at a BTF file)")]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    #[error(transparent)]
    Kallsyms(#[from] kallsyms::KallsymsError),
    #[error(transparent)]
    Hz(#[from] hz::HzError),
}

/// Everything resolved about the running kernel. The parsed BTF is not part
/// of it: [`KernelInfo::probe`] hands it out separately so that it can be
/// dropped once the programs are loaded (it is the largest allocation kato
/// makes).
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub release: String,
    pub btf_path: PathBuf,
    pub config: KernelConfig,
    pub iter_config: IterConfig,
    pub hz: u32,
    /// `enum sk_rst_reason` values to names, without the `SK_RST_REASON_` prefix.
    pub reset_reasons: BTreeMap<u32, String>,
    /// Where the keepalive timer lives (`sock.sk_timer`, ...), for doctor.
    pub keepalive_timer: &'static str,
}

pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

impl KernelInfo {
    /// Parses the BTF at `btf_path` (default: the running kernel's) and
    /// resolves everything from it. `symbols`: also look up
    /// `tcp_keepalive_timer` in /proc/kallsyms (about 50 ms: the kernel
    /// formats 100k+ lines), which only the timer programs need.
    pub fn probe(
        btf_path: Option<PathBuf>,
        hz: Option<u32>,
        symbols: bool,
    ) -> Result<(Self, Btf), KernelError> {
        let btf_path = btf_path.unwrap_or_else(|| PathBuf::from(DEFAULT_BTF));
        let t = std::time::Instant::now();
        let btf = Btf::from_file(&btf_path)?;
        log::debug!("BTF parsed in {:?}", t.elapsed());
        let info = Self::from_btf(btf_path, &btf, hz, symbols)?;
        Ok((info, btf))
    }

    /// [`KernelInfo::probe`] with the BTF already parsed.
    pub fn from_btf(
        btf_path: PathBuf,
        btf: &Btf,
        hz: Option<u32>,
        symbols: bool,
    ) -> Result<Self, KernelError> {
        let release = release();
        let keepalive_fn = if symbols {
            kallsyms::lookup_running(KEEPALIVE_TIMER_FN)?
        } else {
            0
        };
        let config = offsets::resolve(btf, keepalive_fn)?;
        let iter_config = offsets::resolve_iter(btf)?;
        let hz = match hz {
            Some(hz) => hz,
            None => hz::running(&release)?,
        };
        let (_, keepalive_timer) = offsets::keepalive_timer(btf)?;
        Ok(Self {
            reset_reasons: reset_reason_names(btf),
            release,
            btf_path,
            config,
            iter_config,
            hz,
            keepalive_timer,
        })
    }
}

/// Names of the kernel's reset reasons; empty where the kernel has none (< 6.10).
pub fn reset_reason_names(btf: &Btf) -> BTreeMap<u32, String> {
    btf.enum_values("sk_rst_reason")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, v)| {
            let name = name
                .strip_prefix("SK_RST_REASON_")
                .unwrap_or(&name)
                .to_owned();
            Some((u32::try_from(v).ok()?, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::btf::{fixture, Btf};

    #[test]
    fn reset_reason_prefix_stripped() {
        let btf = Btf::parse(&fixture::kernel_like()).unwrap();
        let names = super::reset_reason_names(&btf);
        assert_eq!(
            names.get(&15).map(String::as_str),
            Some("TCP_KEEPALIVE_TIMEOUT")
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("NOT_SPECIFIED"));
    }

    #[test]
    fn offsets_resolved_from_fixture() {
        let btf = Btf::parse(&fixture::kernel_like()).unwrap();
        let c = super::offsets::resolve(&btf, 0xffff_ffff_8202_bdf0).unwrap();
        assert_eq!(c.keepalive_fn, 0xffff_ffff_8202_bdf0);
        assert_eq!(
            (c.sk_timer, c.timer_function, c.timer_expires, c.timer_pprev),
            (512, 24, 16, 8)
        );
        assert_eq!(
            (c.skc_daddr, c.skc_rcv_saddr, c.skc_dport, c.skc_num),
            (0, 4, 12, 14)
        );
        assert_eq!((c.skc_family, c.skc_state, c.skc_net), (16, 18, 48));
        assert_eq!(
            (c.skc_v6_daddr, c.skc_v6_rcv_saddr, c.skc_cookie),
            (56, 72, 88)
        );
        assert_eq!((c.net_inum, c.sk_err, c.icsk_probes_out), (24, 256, 1051));
        // vfs_inode (128) - socket (0) + i_ino (64)
        assert_eq!(c.socket_ino, 192);
        assert_eq!(c.sk_socket, 264);
        assert_eq!(
            (
                c.icsk_lrcvtime,
                c.tp_rcv_tstamp,
                c.sk_protocol,
                c.inet_sport,
                c.tp_lsndtime
            ),
            (1064, 1724, 272, 800, 1584)
        );
        assert_eq!(c.has_reset_reason, 1);
        // The reason where the compiler left it: second of two.
        assert_eq!(c.active_reset_has_reason, 2);
        assert_eq!((c.skc_flags, c.sock_keepopen_bit), (96, 3));
        assert_eq!((c.sk_shutdown, c.sk_max_ack_backlog), (274, 276));
        assert_eq!(
            (
                c.tw_substate,
                c.tp_retrans_stamp,
                c.tp_write_seq,
                c.tp_snd_una
            ),
            (144, 1732, 1568, 1576)
        );
        assert_eq!(
            (
                c.skb_dev,
                c.skb_transport_header,
                c.skb_network_header,
                c.skb_head
            ),
            (16, 180, 182, 200)
        );
        assert_eq!(c.dev_nd_net, 128);
        assert_eq!(
            super::offsets::keepalive_timer(&btf).unwrap(),
            (512, "sock.sk_timer")
        );
    }

    /// Debian's 6.1.0-56 keeps the keepalive timer in the connection socket;
    /// reading `sk_timer` there watched a timer nobody arms.
    #[test]
    fn keepalive_timer_found_where_the_kernel_moved_it() {
        let btf = Btf::parse(&fixture::kernel_like_with(true)).unwrap();
        let c = super::offsets::resolve(&btf, 1).unwrap();
        assert_eq!(c.sk_timer, 1176);
        assert_eq!(
            super::offsets::keepalive_timer(&btf).unwrap(),
            (1176, "inet_connection_sock.icsk_keepalive_timer")
        );
    }
}
