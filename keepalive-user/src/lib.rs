//! kato: a Linux TCP keepalive observer. The library behind the `kato`
//! binary. A record flows one way: `bpf` (the loaded object, the ring) ->
//! `events` (decode, derive, name: one `Observation`) -> sinks (the trace
//! printer in `view`, the socket table in `sockets`, the agent's metrics).

pub mod agent;
pub mod bpf;
pub mod caps;
pub mod census;
pub mod cloud;
pub mod conntrack;
pub mod doctor;
pub mod duration;
pub mod events;
pub mod files;
pub mod filter;
pub mod heap;
pub mod invalid;
pub mod ip;
pub mod ipvs;
pub mod jiffies;
pub mod kernel;
pub mod learned;
pub mod mib;
pub mod netlink;
pub mod netns;
pub mod owner;
pub mod policy;
pub mod protect;
pub mod rlimit;
pub mod sockets;
pub mod tcp;
pub mod text;
pub mod timefmt;
pub mod view;
pub mod workload;
