//! One record, interpreted: everything a sink (trace printer, socket table,
//! metrics) needs, computed once.

use super::{Closed, Derived, Kind, Record, ResetReason, SocketError};
use crate::owner::Owner;

#[derive(Debug)]
pub struct Observation<'a> {
    pub record: &'a Record,
    /// What the record stands for: zero to three kinds.
    pub events: &'a [Derived],
    /// A sent reset's cause, where the kernel gave or context proves one.
    pub reset: Option<ResetReason<'a>>,
    /// An error report's errno and cause.
    pub error: Option<SocketError>,
    /// Seconds since the peer was last heard from (timer runs, resets, FINs).
    pub idle_s: Option<f64>,
    /// Seconds since data last moved either way.
    pub data_idle_s: Option<f64>,
    /// Set on the CLOSED record of a connection whose end was seen.
    pub closed: Option<Closed>,
    /// The process holding the socket, where the sink asked for it.
    pub owner: Option<Owner>,
    /// CONFIG_HZ, for the record's jiffies.
    pub hz: u32,
    /// A stale reuse: who wrote on the closed connection, after how long.
    pub reuse: Option<Reuse>,
    /// The other end's process, when it is a socket on this host kato saw
    /// (a stale reuse names both ends).
    pub peer: Option<Owner>,
    /// The idle timeout of the path, where known (resets, error reports,
    /// timer runs).
    pub path_timeout_s: Option<f64>,
}

/// Which end wrote on a connection its peer had closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReusedBy {
    /// This socket wrote after (or across) the peer's FIN: a client reusing
    /// a pooled connection the server had just closed.
    Local,
    /// The peer wrote after this side closed: this side is the server that
    /// closed the idle connection.
    Peer,
}

impl ReusedBy {
    pub fn name(self) -> &'static str {
        match self {
            ReusedBy::Local => "local",
            ReusedBy::Peer => "peer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reuse {
    pub by: ReusedBy,
    /// Seconds the connection sat without data before the write (unknown
    /// for a TIME_WAIT socket).
    pub idle_s: Option<f64>,
}

impl Observation<'_> {
    /// The reset reason's name, `UNKNOWN` where there is none.
    pub fn reset_name(&self) -> &str {
        self.reset.as_ref().map_or("UNKNOWN", |r| &r.name)
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.events.iter().any(|d| d.kind == kind)
    }

    /// Seconds until the keepalive timer fires (None when not pending).
    pub fn timer_remaining_s(&self) -> Option<f64> {
        self.record.timer_remaining(self.hz)
    }

    /// For a stale reuse: how long the connection sat idle before the write.
    pub fn reuse_gap_s(&self) -> Option<f64> {
        self.reuse.and_then(|r| r.idle_s)
    }

    /// A keepalive timeout after a silence longer than the path keeps a
    /// flow: the peer may be dead, or the path forgot the flow before the
    /// first probe. Both explain it; kato says so instead of picking one.
    pub fn timeout_ambiguous(&self) -> bool {
        self.has(Kind::KeepaliveTimeout)
            && matches!((self.idle_s, self.path_timeout_s), (Some(i), Some(t)) if i >= t)
    }
}
