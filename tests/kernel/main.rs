//! Kernel-facing tests: the real eBPF programs in the running kernel, real
//! sockets in network namespaces created (and deleted) per test. They need
//! root and fail, never skip, when the programs cannot load.
// Thread bodies own the channels they are handed.
#![allow(clippy::needless_pass_by_value)]

mod agent;
mod agent_support;
mod btf;
mod cli;
mod conntrack;
mod deploy;
mod doctor;
mod eventlog;
mod guide;
mod habits;
mod history;
mod http;
mod ipvs;
mod jsondocs;
mod keepalive;
mod middlebox;
mod nginx;
mod otlp;
mod package;
mod prometheus;
mod protect;
mod quiet;
mod reliability;
mod screens;
mod servers;
mod sockets;
mod ss;
mod support;
mod truth;
mod turns;
mod workload;
mod zombies;
