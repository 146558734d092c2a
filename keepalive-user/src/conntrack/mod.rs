//! The local middlebox: netfilter conntrack. When a namespace tracks its
//! flows (any NAT or `ct state` rule turns it on), an established flow is
//! forgotten after `net.netfilter.nf_conntrack_tcp_timeout_established`
//! seconds without a packet, and the next packet of the flow is `invalid`:
//! dropped or reset by the same rules. kato reads, per namespace, that
//! timeout and each socket's entry (seconds left) over ctnetlink.

pub mod ctnetlink;

use std::{collections::HashMap, io, net::SocketAddr};

use serde::Serialize;

use crate::{ip::canonical, netlink};

/// TCP_CONNTRACK_* (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CtState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    SynSent2,
    /// Not conntrack's: the entry was there and is gone while the socket
    /// lives (kato saw it go between two snapshots). The table forgot the
    /// flow; its next packet is `invalid`.
    Forgotten,
}

impl CtState {
    pub fn from_raw(v: u8) -> Option<Self> {
        use CtState::*;
        Some(match v {
            0 => None,
            1 => SynSent,
            2 => SynRecv,
            3 => Established,
            4 => FinWait,
            5 => CloseWait,
            6 => LastAck,
            7 => TimeWait,
            8 => Close,
            9 => SynSent2,
            _ => return Option::None,
        })
    }
}

/// A socket's conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tracked {
    /// Seconds until conntrack forgets the flow unless a packet comes.
    pub remaining_s: u32,
    pub state: CtState,
    /// The namespace whose table holds it: the socket's own, the host's,
    /// or a router's between the two ends.
    pub netns: u32,
}

/// A namespace's conntrack, when the module is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// `net.netfilter.nf_conntrack_tcp_timeout_established`, seconds.
    pub established_timeout_s: u32,
    /// `net.netfilter.nf_conntrack_count`: entries in the table.
    pub entries: u32,
}

/// A socket's flow as (local, remote), addresses canonical (IPv4-mapped
/// IPv6 as IPv4, the way conntrack stores them).
pub type FlowKey = (SocketAddr, SocketAddr);

pub fn key(local: SocketAddr, remote: SocketAddr) -> FlowKey {
    let c = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
    (c(local), c(remote))
}

fn sysctl(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The calling thread's namespace's conntrack; None when conntrack is not
/// loaded (its sysctls exist only then).
pub fn namespace() -> Option<Namespace> {
    Some(Namespace {
        established_timeout_s: sysctl("nf_conntrack_tcp_timeout_established")?,
        entries: sysctl("nf_conntrack_count").unwrap_or(0),
    })
}

/// The keys an entry may be known by from one end of the flow: as the
/// initiator (the original tuple), as the responder, and either behind NAT
/// (the reply tuple).
fn keys(e: &ctnetlink::Entry) -> [FlowKey; 4] {
    let (o, r) = (e.orig, e.reply);
    [
        (o.src, o.dst),
        (o.dst, o.src),
        (r.src, r.dst),
        (r.dst, r.src),
    ]
}

/// The entries of the flows `wanted` keeps, in the calling thread's
/// namespace: a held listing keeps its own sockets' flows, so memory
/// follows the sockets asked about, not the size of the conntrack table;
/// one that prints as it reads keeps every entry. Entries that fail to
/// decode are counted.
pub fn lookup(wanted: impl Fn(&FlowKey) -> bool) -> io::Result<(HashMap<FlowKey, Tracked>, usize)> {
    let mut found = HashMap::new();
    let mut undecodable = 0;
    netlink::dump(
        ctnetlink::NETLINK_NETFILTER,
        &[ctnetlink::request(1)],
        |ty, msg| {
            if ty != ctnetlink::MSG_CT_NEW {
                return;
            }
            match ctnetlink::decode(msg) {
                Ok(Some(e)) => {
                    for k in keys(&e) {
                        if wanted(&k) {
                            found.insert(
                                k,
                                Tracked {
                                    remaining_s: e.remaining_s,
                                    state: e.state,
                                    // Set by the caller, which knows where it is.
                                    netns: 0,
                                },
                            );
                        }
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    log::debug!("conntrack entry: {err}");
                    undecodable += 1;
                }
            }
        },
    )?;
    Ok((found, undecodable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_from_either_end_and_through_nat() {
        let e = ctnetlink::decode(&ctnetlink::build::entry(
            [10, 0, 0, 1],
            40000,
            [10, 0, 0, 2],
            80,
            3,
            9,
        ))
        .unwrap()
        .unwrap();
        let k = keys(&e);
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(
            k.contains(&(a("10.0.0.1:40000"), a("10.0.0.2:80"))),
            "initiator"
        );
        assert!(
            k.contains(&(a("10.0.0.2:80"), a("10.0.0.1:40000"))),
            "responder"
        );
        assert_eq!(
            key(a("[::ffff:10.0.0.1]:40000"), a("[::ffff:10.0.0.2]:80")),
            (a("10.0.0.1:40000"), a("10.0.0.2:80"))
        );
    }
}
