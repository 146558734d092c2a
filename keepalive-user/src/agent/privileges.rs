//! Which capabilities the agent needs to start and keeps after, for the
//! namespaces it watches: the one place that says so.

use caps::Capability;

use super::{config::NetnsScope, state::AgentError};
use crate::caps;

/// Capabilities kept after start-up, for this scope: the needed ones, and
/// CAP_NET_ADMIN where the agent was given it (conntrack entries over
/// ctnetlink; without it they are unknown and the risk ignores conntrack).
pub fn runtime_caps(scope: &NetnsScope) -> Vec<Capability> {
    let mut keep = needed_caps(scope);
    // CAP_NET_ADMIN: conntrack; CAP_SETUID/CAP_SETGID/CAP_SETPCAP: each
    // HTTP process switches to nobody and empties its bounding set with
    // them (and drops them) after its exec.
    for c in [
        caps::CAP_NET_ADMIN,
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_SETPCAP,
    ] {
        if caps::has(c) {
            keep.push(c);
        }
    }
    keep
}

fn needed_caps(scope: &NetnsScope) -> Vec<Capability> {
    let mut keep = vec![caps::CAP_BPF, caps::CAP_PERFMON];
    match scope {
        NetnsScope::Own => {}
        NetnsScope::Listed(_) => keep.push(caps::CAP_SYS_ADMIN),
        NetnsScope::All => keep.extend([caps::CAP_SYS_ADMIN, caps::CAP_SYS_PTRACE]),
    }
    keep
}

/// Fails, naming the first capability missing for this scope.
pub fn check_caps(scope: &NetnsScope) -> Result<(), AgentError> {
    match needed_caps(scope).into_iter().find(|&c| !caps::has(c)) {
        Some(c) => Err(AgentError::Privilege(caps::name(c))),
        None => Ok(()),
    }
}
