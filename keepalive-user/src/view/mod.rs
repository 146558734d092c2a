//! What the user sees: a socket with kato's counts and its risk verdict
//! beside it ([`SocketView`]), socket rows like netstat's, and trace lines.

pub mod fit;
pub mod history;
pub mod json;
pub mod sockets;
pub mod trace;
pub mod trace_fit;

use serde::Serialize;

use crate::{
    policy::{Policy, Risk, RuleSource},
    sockets::{table::Counts, Socket},
};

/// One socket as shown by `kato sockets` and `/sockets`: what the kernel
/// said, then kato's counts (null without events), then the risk verdict
/// (null without a policy or for sockets that are not connections).
#[derive(Debug, Clone, Serialize)]
pub struct SocketView<'a> {
    /// The kernel address, only with `--show-kernel-addresses` (CLI, root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock: Option<String>,
    #[serde(flatten)]
    pub socket: &'a Socket,
    /// Keepalive probes kato saw go out / get answered.
    pub probes_sent: Option<u64>,
    pub probes_answered: Option<u64>,
    /// The last reset the kernel sent on this socket, with its reason.
    pub last_reset: Option<&'a str>,
    /// Does keepalive beat the path's idle timeout?
    pub risk: Option<Risk>,
    /// The idle-timeout rule that applies, as written.
    pub idle_timeout: Option<&'a str>,
    /// Where that rule comes from: declared, cloud-assumed, conntrack, learned, ipvs.
    pub idle_timeout_source: Option<RuleSource>,
}

impl<'a> SocketView<'a> {
    /// Adds the kernel address (`--show-kernel-addresses`).
    #[must_use]
    pub fn with_address(mut self) -> Self {
        self.sock = Some(format!("{:#x}", self.socket.sock));
        self
    }

    pub fn new(socket: &'a Socket, counts: Option<&'a Counts>, policy: &'a Policy) -> Self {
        let seen = counts.map(|c| c.silence).unwrap_or_default();
        let (risk, rule) = match policy.classify_watched(socket, &seen) {
            Some((risk, rule)) => (Some(risk), rule),
            None => (None, None),
        };
        SocketView {
            sock: None,
            socket,
            probes_sent: counts.map(|c| c.probes_sent),
            probes_answered: counts.map(|c| c.probes_answered),
            last_reset: counts.and_then(|c| c.last_reset.as_deref()),
            risk,
            idle_timeout: rule.map(|r| r.text.as_str()),
            idle_timeout_source: rule.map(|r| r.source),
        }
    }
}

/// A [`SocketView`] that owns its parts: a page of `/sockets` copied out of
/// the table, rendered after the table's lock is released.
#[derive(Debug, Clone)]
pub struct SocketRow {
    pub socket: Socket,
    pub counts: Option<Counts>,
    pub risk: Option<Risk>,
    pub idle_timeout: Option<String>,
    pub idle_timeout_source: Option<RuleSource>,
    /// The socket's story as JSON, when asked for (`/sockets?history=1`).
    pub history: Option<String>,
}

impl SocketRow {
    pub fn of(v: &SocketView<'_>, counts: Option<&Counts>) -> Self {
        SocketRow {
            socket: v.socket.clone(),
            counts: counts.cloned(),
            risk: v.risk,
            idle_timeout: v.idle_timeout.map(str::to_owned),
            idle_timeout_source: v.idle_timeout_source,
            history: None,
        }
    }

    pub fn view(&self) -> SocketView<'_> {
        SocketView {
            sock: None,
            socket: &self.socket,
            probes_sent: self.counts.as_ref().map(|c| c.probes_sent),
            probes_answered: self.counts.as_ref().map(|c| c.probes_answered),
            last_reset: self.counts.as_ref().and_then(|c| c.last_reset.as_deref()),
            risk: self.risk,
            idle_timeout: self.idle_timeout.as_deref(),
            idle_timeout_source: self.idle_timeout_source,
        }
    }
}
