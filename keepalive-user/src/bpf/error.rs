//! Why loading or using kato's eBPF object failed: one sentence each.

use thiserror::Error;

use crate::{
    kernel::{btf::BtfError, KernelError},
    netns::NetnsError,
};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Privilege(#[from] crate::caps::MissingCapabilities),
    #[error(transparent)]
    Mount(#[from] crate::protect::MountError),
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
    #[error("cannot start the event ring's reader: {0}")]
    Reader(#[source] std::io::Error),
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
    #[error("BPF iterator `{0}` was not loaded (LoadOptions::iterators)")]
    IteratorNotLoaded(&'static str),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "internal: programs opened without kernel symbols cannot trace (LoadOptions::tracing)"
    )]
    NotForTracing,
    #[error("--attach fentry: {}", super::tidy(.0))]
    FentryRefused(Box<LoadError>),
    #[error("the kernel's BTF has no function {name} to attach fentry/fexit to ({source})")]
    NoFunction {
        name: &'static str,
        source: BtfError,
    },
}
