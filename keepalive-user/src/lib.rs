//! kato: a Linux TCP keepalive observer. The library behind the `kato`
//! binary: kernel probing, eBPF loading, event decoding and formatting.

pub mod agent;
pub mod btf;
pub mod caps;
pub mod closes;
pub mod doctor;
pub mod duration;
pub mod event;
pub mod filter;
pub mod format;
pub mod kernel;
pub mod loader;
pub mod netns;
pub mod owner;
pub mod policy;
pub mod sockets;
pub mod stream;
pub mod tcp;
pub mod timefmt;
