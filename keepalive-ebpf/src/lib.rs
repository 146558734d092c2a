#![no_std]
// This file exists to enable the library target, which keepalive-user names as a
// build-dependency so cargo rebuilds the eBPF object when this crate changes.
