//! Loads kato's eBPF object into the running kernel with the offsets
//! resolved from its BTF, and attaches every program.

use std::path::PathBuf;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Ebpf, EbpfLoader,
};
use keepalive_common::counter;
use thiserror::Error;

use crate::{
    caps,
    kernel::{KernelError, KernelInfo},
    stream::EventStream,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive"));

/// (program, tracepoint) pairs, attached as BTF-enabled raw tracepoints.
pub const PROGRAMS: [(&str, &str); 5] = [
    ("timer_start", "timer_start"),
    ("timer_expire_entry", "timer_expire_entry"),
    ("timer_expire_exit", "timer_expire_exit"),
    ("timer_cancel", "timer_cancel"),
    ("tcp_send_reset", "tcp_send_reset"),
];

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
}

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// Kernel BTF to resolve offsets from (default /sys/kernel/btf/vmlinux).
    pub btf: Option<PathBuf>,
    /// CONFIG_HZ, when the kernel config cannot be read.
    pub hz: Option<u32>,
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

/// Loaded and attached programs. Dropping it detaches them all.
pub struct Probes {
    ebpf: Ebpf,
    pub kernel: KernelInfo,
}

impl Probes {
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        caps::require_tracing().map_err(LoadError::Privilege)?;
        let kernel = KernelInfo::probe(opts.btf.clone(), opts.hz)?;
        let btf = aya::Btf::parse_file(&kernel.btf_path, aya::Endianness::default())?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("KATO_CONFIG", &kernel.config, true)
            .load(OBJECT)?;
        for (name, tracepoint) in PROGRAMS {
            let err = |source| LoadError::Program { name, tracepoint, source };
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram { name })?
                .try_into()
                .map_err(err)?;
            prog.load(tracepoint, &btf).map_err(err)?;
            prog.attach().map_err(err)?;
        }
        Ok(Self { ebpf, kernel })
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
