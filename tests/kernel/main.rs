//! Kernel-facing tests: the real eBPF programs in the running kernel, real
//! sockets in network namespaces created (and deleted) per test. They need
//! root and fail, never skip, when the programs cannot load.

mod agent;
mod agent_support;
mod btf;
mod cli;
mod deploy;
mod doctor;
mod keepalive;
mod middlebox;
mod nginx;
mod prometheus;
mod reliability;
mod sockets;
mod ss;
mod support;
