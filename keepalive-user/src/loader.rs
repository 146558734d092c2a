//! Loads kato's eBPF object into the running kernel with the offsets
//! resolved from its BTF, and attaches every program.

use std::path::PathBuf;

use std::io::Read as _;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, Iter, Program},
    Ebpf, EbpfLoader,
};
use keepalive_common::{counter, OwnerRecord, SockRecord, OWNER_RECORD_SIZE, SOCK_RECORD_SIZE};
use thiserror::Error;

use crate::{
    caps,
    kernel::{KernelError, KernelInfo},
    netns::{self, NetnsError, NetnsRef},
    stream::EventStream,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive"));

/// The tracepoint path: (program, tracepoint) pairs, attached as
/// BTF-enabled raw tracepoints. The `timer:*` ones see every kernel timer
/// and filter on `tcp_keepalive_timer`.
pub const PROGRAMS: [(&str, &str); 7] = [
    ("timer_start", "timer_start"),
    ("timer_expire_entry", "timer_expire_entry"),
    ("timer_expire_exit", "timer_expire_exit"),
    ("timer_cancel", "timer_cancel"),
    ("tcp_send_reset", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp_receive_reset"),
    ("inet_sock_set_state", "inet_sock_set_state"),
];

/// The fentry path: trampolines on the keepalive functions themselves
/// (program, kernel function). No other timer runs kato's code.
pub const FENTRY_PROGRAMS: [(&str, &str); 3] = [
    ("fentry_keepalive_timer", "tcp_keepalive_timer"),
    ("fexit_keepalive_timer", "tcp_keepalive_timer"),
    ("fentry_send_active_reset", "tcp_send_active_reset"),
];

/// fentry path, arming and disarming: where the kernel has these functions
/// out of line (6.1 does; newer kernels inline them), else `timer_start`
/// and `timer_cancel` (filtered) as on the tracepoint path.
pub const FENTRY_ARMING: [(&str, &str); 2] = [
    (
        "fexit_reset_keepalive_timer",
        "inet_csk_reset_keepalive_timer",
    ),
    (
        "fentry_delete_keepalive_timer",
        "inet_csk_delete_keepalive_timer",
    ),
];
const TRACEPOINT_ARMING: [(&str, &str); 2] = [
    ("timer_start", "timer_start"),
    ("timer_cancel", "timer_cancel"),
];

/// Both paths, where the kernel has it (5.13+): errors reported to a TCP
/// socket's owner (ETIMEDOUT, ECONNRESET, ...).
pub const ERROR_REPORT: (&str, &str) = ("inet_sk_error_report", "inet_sk_error_report");

/// Both paths: tracepoints that fire only on TCP events (no filtering).
const TCP_TRACEPOINTS: [(&str, &str); 2] = [
    ("tcp_receive_reset", "tcp_receive_reset"),
    ("inet_sock_set_state", "inet_sock_set_state"),
];

/// Which way the programs reach the kernel (`--attach`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// fentry/fexit where the kernel allows it, else tracepoints.
    #[default]
    Auto,
    /// fentry/fexit on the keepalive functions; fail if the kernel refuses.
    Fentry,
    /// BTF tracepoints (`timer:*` filtered on the keepalive timer).
    Tracepoint,
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("`{s}` is not one of auto, fentry, tracepoint"))
    }
}

/// The attach path taken, and why (`kato doctor`, trace banner, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPath {
    /// `fentry` or `tp_btf`.
    pub kind: &'static str,
    /// What is attached where.
    pub detail: String,
    /// Why this path: forced, or what the kernel said to the other one.
    pub why: String,
}

/// Empty programs on the same tracepoints (benchmark floor only).
pub const FLOOR_PROGRAMS: [(&str, &str); 8] = [
    ("floor_timer_start", "timer_start"),
    ("floor_timer_expire_entry", "timer_expire_entry"),
    ("floor_timer_expire_exit", "timer_expire_exit"),
    ("floor_timer_cancel", "timer_cancel"),
    ("floor_tcp_send_reset", "tcp_send_reset"),
    ("floor_tcp_receive_reset", "tcp_receive_reset"),
    ("floor_inet_sock_set_state", "inet_sock_set_state"),
    ("floor_inet_sk_error_report", "inet_sk_error_report"),
];

/// Opt-in: request/response turns from every send/recv (HTTP keep-alive view).
pub const TURN_PROGRAMS: [(&str, &str); 2] = [
    ("sock_send_length", "sock_send_length"),
    ("sock_recv_length", "sock_recv_length"),
];

/// BPF iterators: (program, iterator type).
pub const ITER_TCP: (&str, &str) = ("kato_iter_tcp", "tcp");
pub const ITER_TASK_FILE: (&str, &str) = ("kato_iter_task_file", "task_file");

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{0}")]
    Privilege(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot parse kernel BTF for the loader: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("the kernel refused kato's eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("eBPF program `{name}` is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("cannot load or attach `{name}` to {tracepoint}: {source}")]
    Program {
        name: &'static str,
        tracepoint: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map `{0}` is missing or of the wrong type")]
    Map(&'static str),
    #[error("BPF iterator `{name}`: {source}")]
    Iterator {
        name: &'static str,
        source: std::io::Error,
    },
    #[error(
        "BPF iterator `{name}` returned {len} bytes, not a whole number of {record}-byte records"
    )]
    Torn {
        name: &'static str,
        len: usize,
        record: usize,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "internal: programs opened without kernel symbols cannot trace (LoadOptions::tracing)"
    )]
    NotForTracing,
    #[error("--attach fentry: {}", tidy(.0))]
    FentryRefused(Box<LoadError>),
    #[error("the kernel's BTF has no function {name} to attach fentry/fexit to ({source})")]
    NoFunction {
        name: &'static str,
        source: crate::btf::BtfError,
    },
}

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// Whether the tracing programs will be attached (they need kallsyms).
    pub tracing: bool,
    /// Kernel BTF to resolve offsets from (default /sys/kernel/btf/vmlinux).
    pub btf: Option<PathBuf>,
    /// CONFIG_HZ, when the kernel config cannot be read.
    pub hz: Option<u32>,
    /// Ring buffer size in bytes (a power of two, at least a page); tests
    /// shrink it to provoke overruns.
    pub ring_bytes: Option<u32>,
    /// fentry, tracepoints, or the best the kernel allows.
    pub attach: AttachMode,
    /// Only namespaces given to [`Probes::watch_netns`] make events.
    pub netns_filter: bool,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Events that found the ring buffer full.
    pub lost: u64,
    /// Events dropped because a kernel read failed.
    pub read_failed: u64,
    pub emitted: u64,
    /// Events of unwatched namespaces, dropped in the kernel by design.
    pub filtered: u64,
    /// Offset of the last kernel read that failed (on any CPU), if one did.
    pub last_failed_offset: Option<u32>,
}

/// kato's eBPF object in the kernel. Dropping it detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    btf: aya::Btf,
    pub kernel: KernelInfo,
    /// Set once the tracing programs are attached.
    pub attach: Option<AttachPath>,
}

/// An error as one sentence: aya appends an empty "Verifier output:" when
/// the kernel refused before verifying.
fn tidy(e: &LoadError) -> String {
    let s = e.to_string();
    let s = s.trim_end();
    let s = s.strip_suffix("Verifier output:").unwrap_or(s).trim_end();
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

/// Decodes a whole number of `T` records.
fn records<T: Copy + Default>(
    name: &'static str,
    bytes: &[u8],
    size: usize,
) -> Result<Vec<T>, LoadError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(LoadError::Torn {
            name,
            len: bytes.len(),
            record: size,
        });
    }
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: T is a repr(C) plain-data record of `size` bytes; any bits are valid.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
        .collect())
}

impl Probes {
    /// Loads the object with the running kernel's offsets; attaches nothing.
    pub fn open(opts: &LoadOptions) -> Result<Self, LoadError> {
        caps::require_tracing().map_err(LoadError::Privilege)?;
        let t = std::time::Instant::now();
        let kernel = KernelInfo::probe(opts.btf.clone(), opts.hz, opts.tracing)?;
        log::debug!("kernel probed in {:?}", t.elapsed());
        let btf = aya::Btf::parse_file(&kernel.btf_path, aya::Endianness::default())?;
        log::debug!("aya parsed BTF at {:?}", t.elapsed());
        let mut loader = EbpfLoader::new();
        if let Some(bytes) = opts.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let config = keepalive_common::KernelConfig {
            netns_filter: opts.netns_filter as u32,
            ..kernel.config
        };
        let ebpf = loader
            .btf(Some(&btf))
            .override_global("KATO_CONFIG", &config, true)
            .override_global("KATO_ITER_CONFIG", &kernel.iter_config, true)
            .load(OBJECT)?;
        log::debug!("object loaded at {:?}", t.elapsed());
        Ok(Self {
            ebpf,
            btf,
            kernel,
            attach: None,
        })
    }

    /// Loads and attaches the tracing programs (`kato trace`, the agent).
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let mut p = Self::open(&LoadOptions {
            tracing: true,
            ..opts.clone()
        })?;
        p.attach_tracing(opts.attach)?;
        Ok(p)
    }

    /// Probe, then degrade: fentry/fexit first (unless told otherwise),
    /// tracepoints when the kernel refuses trampolines or lacks a function.
    pub fn attach_tracing(&mut self, mode: AttachMode) -> Result<(), LoadError> {
        if self.kernel.config.keepalive_fn == 0 {
            return Err(LoadError::NotForTracing);
        }
        let path = match mode {
            AttachMode::Tracepoint => {
                self.attach_tracepoint_path("forced with --attach tracepoint".into())?
            }
            AttachMode::Fentry => self
                .attach_fentry_path("forced with --attach fentry".into())
                .map_err(|e| LoadError::FentryRefused(Box::new(e)))?,
            AttachMode::Auto => match self
                .attach_fentry_path("the kernel accepts fentry/fexit trampolines".into())
            {
                Ok(p) => p,
                Err(e) => {
                    let e = tidy(&e);
                    log::info!("fentry path unavailable, using tracepoints: {e}");
                    self.unload_fentry();
                    self.attach_tracepoint_path(format!("fentry/fexit unavailable: {e}"))?
                }
            },
        };
        log::debug!("attached via {}: {}", path.kind, path.detail);
        self.attach = Some(path);
        Ok(())
    }

    fn attach_tracepoint_path(&mut self, why: String) -> Result<AttachPath, LoadError> {
        self.attach_btf_tracepoints(&PROGRAMS)?;
        Ok(AttachPath {
            kind: "tp_btf",
            detail: format!(
                "BTF tracepoints timer:timer_start/expire_entry/expire_exit/cancel (every kernel timer, filtered \
                 on tcp_keepalive_timer), tcp:tcp_send_reset, tcp:tcp_receive_reset, sock:inet_sock_set_state{}",
                self.attach_error_report()?
            ),
            why,
        })
    }

    /// `sock:inet_sk_error_report` where the kernel has it; says which.
    fn attach_error_report(&mut self) -> Result<&'static str, LoadError> {
        if self.kernel.btf.tracepoint_args(ERROR_REPORT.1).is_err() {
            return Ok(" (no sock:inet_sk_error_report before 5.13: no socket_error events)");
        }
        self.attach_btf_tracepoints(&[ERROR_REPORT])?;
        Ok(", sock:inet_sk_error_report")
    }

    fn attach_fentry_path(&mut self, why: String) -> Result<AttachPath, LoadError> {
        for &(name, function) in &FENTRY_PROGRAMS {
            self.attach_trampoline(name, function)?;
        }
        let arming_fns = FENTRY_ARMING
            .iter()
            .all(|(_, f)| self.kernel.btf.function_args(f).is_ok());
        let arming = if arming_fns {
            for &(name, function) in &FENTRY_ARMING {
                self.attach_trampoline(name, function)?;
            }
            "fexit inet_csk_reset_keepalive_timer, fentry inet_csk_delete_keepalive_timer"
        } else {
            // Inlined on this kernel: arming is seen on the timer tracepoints.
            self.attach_btf_tracepoints(&TRACEPOINT_ARMING)?;
            "timer:timer_start/cancel (filtered; the arming functions are inlined on this kernel)"
        };
        self.attach_btf_tracepoints(&TCP_TRACEPOINTS)?;
        let errors = self.attach_error_report()?;
        Ok(AttachPath {
            kind: "fentry",
            detail: format!(
                "fentry/fexit tcp_keepalive_timer, fentry tcp_send_active_reset; arming: {arming}; \
                 tcp:tcp_receive_reset, sock:inet_sock_set_state{errors}"
            ),
            why,
        })
    }

    /// Loads and attaches one fentry or fexit program to `function`.
    fn attach_trampoline(
        &mut self,
        name: &'static str,
        function: &'static str,
    ) -> Result<(), LoadError> {
        self.kernel
            .btf
            .function_args(function)
            .map_err(|source| LoadError::NoFunction {
                name: function,
                source,
            })?;
        let err = |source| LoadError::Program {
            name,
            tracepoint: function,
            source,
        };
        let btf = &self.btf;
        match self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
        {
            Program::FEntry(p) => {
                p.load(function, btf).map_err(err)?;
                p.attach().map_err(err)?;
            }
            Program::FExit(p) => {
                p.load(function, btf).map_err(err)?;
                p.attach().map_err(err)?;
            }
            _ => return Err(LoadError::MissingProgram { name }),
        }
        Ok(())
    }

    /// Undoes a partly attached fentry path before falling back.
    fn unload_fentry(&mut self) {
        for &(name, _) in FENTRY_PROGRAMS.iter().chain(&FENTRY_ARMING) {
            let _ = match self.ebpf.program_mut(name) {
                Some(Program::FEntry(p)) => FEntry::unload(p),
                Some(Program::FExit(p)) => FExit::unload(p),
                _ => Ok(()),
            };
        }
        for &(name, _) in TRACEPOINT_ARMING
            .iter()
            .chain(&TCP_TRACEPOINTS)
            .chain([&ERROR_REPORT])
        {
            if let Some(Program::BtfTracePoint(p)) = self.ebpf.program_mut(name) {
                let _ = p.unload();
            }
        }
    }

    /// Attaches the empty floor programs (for benchmarks).
    pub fn attach_floor(&mut self) -> Result<(), LoadError> {
        self.attach_btf_tracepoints(&FLOOR_PROGRAMS)
    }

    /// Attaches the send/recv turn counters (HTTP keep-alive view; kernels
    /// with `sock:sock_send_length`, 6.3+).
    pub fn attach_turns(&mut self) -> Result<(), LoadError> {
        self.attach_btf_tracepoints(&TURN_PROGRAMS)
    }

    fn attach_btf_tracepoints(
        &mut self,
        programs: &[(&'static str, &'static str)],
    ) -> Result<(), LoadError> {
        for &(name, tracepoint) in programs {
            let err = |source| LoadError::Program {
                name,
                tracepoint,
                source,
            };
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram { name })?
                .try_into()
                .map_err(err)?;
            prog.load(tracepoint, &self.btf).map_err(err)?;
            prog.attach().map_err(err)?;
        }
        Ok(())
    }

    fn iter(&mut self, (name, kind): (&'static str, &'static str)) -> Result<&mut Iter, LoadError> {
        let err = |source| LoadError::Program {
            name,
            tracepoint: kind,
            source,
        };
        let prog: &mut Iter = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(err)?;
        if prog.fd().is_err() {
            prog.load(kind, &self.btf).map_err(err)?;
        }
        Ok(prog)
    }

    /// Loads both iterators (without running them): fails where the kernel
    /// has no BPF iterators or refuses these.
    pub fn check_iterators(&mut self) -> Result<(), LoadError> {
        self.iter(ITER_TCP)?;
        self.iter(ITER_TASK_FILE)?;
        Ok(())
    }

    /// Runs iterator `which` (in namespace `ns`, for netns-scoped ones) and
    /// returns its raw output.
    fn run_iter(
        &mut self,
        which: (&'static str, &'static str),
        ns: Option<&NetnsRef>,
    ) -> Result<Vec<u8>, LoadError> {
        let (name, kind) = which;
        let err = |source| LoadError::Program {
            name,
            tracepoint: kind,
            source,
        };
        let prog = self.iter(which)?;
        let id = prog.attach().map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        let io = |source| LoadError::Iterator { name, source };
        let read = move || -> Result<Vec<u8>, LoadError> {
            let mut file = link.into_file().map_err(|e| io(std::io::Error::other(e)))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(io)?;
            Ok(buf)
        };
        match ns {
            Some(ns) => netns::run_in(ns, read)?,
            None => read(),
        }
    }

    /// Every TCP socket of namespace `ns` (default: kato's own).
    pub fn tcp_sockets(&mut self, ns: Option<&NetnsRef>) -> Result<Vec<SockRecord>, LoadError> {
        let bytes = self.run_iter(ITER_TCP, ns)?;
        records(ITER_TCP.0, &bytes, SOCK_RECORD_SIZE)
    }

    /// Every TCP socket held by a process, in every namespace.
    pub fn socket_owners(&mut self) -> Result<Vec<OwnerRecord>, LoadError> {
        let bytes = self.run_iter(ITER_TASK_FILE, None)?;
        records(ITER_TASK_FILE.0, &bytes, OWNER_RECORD_SIZE)
    }

    /// The event stream; can be taken once.
    pub fn events(&mut self) -> Result<EventStream, LoadError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(LoadError::Map("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(|_| LoadError::Map("EVENTS"))?;
        EventStream::new(ring).map_err(|_| LoadError::Map("EVENTS"))
    }

    /// Makes exactly `inodes` the namespaces whose sockets make events
    /// (with [`LoadOptions::netns_filter`]; otherwise every namespace does).
    pub fn watch_netns(
        &mut self,
        inodes: &std::collections::HashSet<u32>,
    ) -> Result<(), LoadError> {
        let map = self
            .ebpf
            .map_mut("WATCHED_NETNS")
            .ok_or(LoadError::Map("WATCHED_NETNS"))?;
        let mut m: aya::maps::HashMap<&mut MapData, u32, u8> =
            aya::maps::HashMap::try_from(map).map_err(|_| LoadError::Map("WATCHED_NETNS"))?;
        let stale: Vec<u32> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !inodes.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        for &k in inodes {
            m.insert(k, 1, 0)
                .map_err(|_| LoadError::Map("WATCHED_NETNS (full)"))?;
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters, LoadError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(LoadError::Map("COUNTERS"))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|_| LoadError::Map("COUNTERS"))?;
        let sum = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Ok(Counters {
            lost: sum(counter::LOST),
            read_failed: sum(counter::READ_FAILED),
            emitted: sum(counter::EMITTED),
            filtered: sum(counter::FILTERED),
            last_failed_offset: arr
                .get(&counter::LAST_FAILED_OFFSET, 0)
                .ok()
                .and_then(|v| v.iter().copied().max())
                .and_then(|v| v.checked_sub(1))
                .map(|v| v as u32),
        })
    }
}
