//! Loads kato's eBPF object into the running kernel with the offsets
//! resolved from its BTF, and attaches every program.

use std::path::PathBuf;

use std::io::Read as _;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter},
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

/// (program, tracepoint) pairs, attached as BTF-enabled raw tracepoints.
pub const PROGRAMS: [(&str, &str); 7] = [
    ("timer_start", "timer_start"),
    ("timer_expire_entry", "timer_expire_entry"),
    ("timer_expire_exit", "timer_expire_exit"),
    ("timer_cancel", "timer_cancel"),
    ("tcp_send_reset", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp_receive_reset"),
    ("inet_sock_set_state", "inet_sock_set_state"),
];

/// Empty programs on the same tracepoints (benchmark floor only).
pub const FLOOR_PROGRAMS: [(&str, &str); 7] = [
    ("floor_timer_start", "timer_start"),
    ("floor_timer_expire_entry", "timer_expire_entry"),
    ("floor_timer_expire_exit", "timer_expire_exit"),
    ("floor_timer_cancel", "timer_cancel"),
    ("floor_tcp_send_reset", "tcp_send_reset"),
    ("floor_tcp_receive_reset", "tcp_receive_reset"),
    ("floor_inet_sock_set_state", "inet_sock_set_state"),
];

/// Opt-in: request/response turns from every send/recv (HTTP keep-alive view).
pub const TURN_PROGRAMS: [(&str, &str); 2] = [("sock_send_length", "sock_send_length"), ("sock_recv_length", "sock_recv_length")];

/// BPF iterators: (program, iterator type).
pub const ITER_TCP: (&str, &str) = ("kato_iter_tcp", "tcp");
pub const ITER_TASK_FILE: (&str, &str) = ("kato_iter_task_file", "task_file");

/// How the programs reach the kernel (the only path so far: this kernel has
/// no kprobes and refuses fentry).
pub const ATTACH_KIND: &str = "tp_btf";

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
    #[error("cannot load or attach `{name}` to tracepoint {tracepoint}: {source}")]
    Program {
        name: &'static str,
        tracepoint: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map `{0}` is missing or of the wrong type")]
    Map(&'static str),
    #[error("BPF iterator `{name}`: {source}")]
    Iterator { name: &'static str, source: std::io::Error },
    #[error("BPF iterator `{name}` returned {len} bytes, not a whole number of {record}-byte records")]
    Torn { name: &'static str, len: usize, record: usize },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("internal: programs opened without kernel symbols cannot trace (LoadOptions::tracing)")]
    NotForTracing,
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
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Events that found the ring buffer full.
    pub lost: u64,
    /// Events dropped because a kernel read failed.
    pub read_failed: u64,
    pub emitted: u64,
}

/// kato's eBPF object in the kernel. Dropping it detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    btf: aya::Btf,
    pub kernel: KernelInfo,
}

/// Decodes a whole number of `T` records.
fn records<T: Copy + Default>(name: &'static str, bytes: &[u8], size: usize) -> Result<Vec<T>, LoadError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(LoadError::Torn { name, len: bytes.len(), record: size });
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
        let ebpf = loader
            .btf(Some(&btf))
            .override_global("KATO_CONFIG", &kernel.config, true)
            .override_global("KATO_ITER_CONFIG", &kernel.iter_config, true)
            .load(OBJECT)?;
        log::debug!("object loaded at {:?}", t.elapsed());
        Ok(Self { ebpf, btf, kernel })
    }

    /// Loads and attaches the tracing programs (`kato trace`, the agent).
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let mut p = Self::open(&LoadOptions { tracing: true, ..opts.clone() })?;
        p.attach_tracing()?;
        Ok(p)
    }

    pub fn attach_tracing(&mut self) -> Result<(), LoadError> {
        if self.kernel.config.keepalive_fn == 0 {
            return Err(LoadError::NotForTracing);
        }
        self.attach_btf_tracepoints(&PROGRAMS)
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

    fn attach_btf_tracepoints(&mut self, programs: &[(&'static str, &'static str)]) -> Result<(), LoadError> {
        for &(name, tracepoint) in programs {
            let err = |source| LoadError::Program { name, tracepoint, source };
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
        let err = |source| LoadError::Program { name, tracepoint: kind, source };
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
    fn run_iter(&mut self, which: (&'static str, &'static str), ns: Option<&NetnsRef>) -> Result<Vec<u8>, LoadError> {
        let (name, kind) = which;
        let err = |source| LoadError::Program { name, tracepoint: kind, source };
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
        let map = self.ebpf.take_map("EVENTS").ok_or(LoadError::Map("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(|_| LoadError::Map("EVENTS"))?;
        EventStream::new(ring).map_err(|_| LoadError::Map("EVENTS"))
    }

    pub fn counters(&self) -> Result<Counters, LoadError> {
        let map = self.ebpf.map("COUNTERS").ok_or(LoadError::Map("COUNTERS"))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(|_| LoadError::Map("COUNTERS"))?;
        let sum = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Ok(Counters {
            lost: sum(counter::LOST),
            read_failed: sum(counter::READ_FAILED),
            emitted: sum(counter::EMITTED),
        })
    }
}
