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
    pub fn reuse_gap_s(&self) -> f64 {
        self.record.reuse_gap_secs(self.hz)
    }
}
