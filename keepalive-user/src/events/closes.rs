//! How connections end: who closed first (local FIN, peer FIN, a reset
//! either way, a keepalive timeout), how long they sat idle before, and how
//! many request/response exchanges they served. This is what reveals the
//! HTTP keep-alive timeout and `max` in force on a path.

use std::collections::HashMap;

use serde::Serialize;

use super::{Derived, Kind, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    LocalFin,
    PeerFin,
    ResetSent,
    ResetReceived,
    KeepaliveTimeout,
}

impl ClosedBy {
    pub fn name(self) -> &'static str {
        match self {
            ClosedBy::LocalFin => "local_fin",
            ClosedBy::PeerFin => "peer_fin",
            ClosedBy::ResetSent => "reset_sent",
            ClosedBy::ResetReceived => "reset_received",
            ClosedBy::KeepaliveTimeout => "keepalive_timeout",
        }
    }
}

/// A connection that just closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closed {
    pub by: ClosedBy,
    /// Seconds without data either way before the first closing event.
    pub idle_s: Option<f64>,
    /// Request/response exchanges: responses sent (server) or answers
    /// received (client); counted only with the HTTP keep-alive view on.
    pub turns_out: u32,
    pub turns_in: u32,
}

/// Bound on connections between their first closing event and CLOSED.
const CAPACITY: usize = 1 << 18;

#[derive(Default)]
pub struct CloseTracker {
    closing: HashMap<u64, (ClosedBy, Option<f64>)>,
    pub evictions: u64,
}

impl CloseTracker {
    /// Feeds one record and what it was derived into; returns the summary
    /// when the connection has closed.
    pub fn on(&mut self, rec: &Record, derived: &[Derived], hz: u32) -> Option<Closed> {
        for d in derived {
            let by = match d.kind {
                Kind::FinSent => ClosedBy::LocalFin,
                Kind::FinReceived => ClosedBy::PeerFin,
                Kind::ResetSent => ClosedBy::ResetSent,
                Kind::ResetReceived => ClosedBy::ResetReceived,
                Kind::KeepaliveTimeout => ClosedBy::KeepaliveTimeout,
                Kind::Closed => {
                    let (by, idle_s) = self.closing.remove(&rec.sk)?;
                    return Some(Closed {
                        by,
                        idle_s,
                        turns_out: rec.turns_out,
                        turns_in: rec.turns_in,
                    });
                }
                _ => continue,
            };
            if self.closing.len() >= CAPACITY {
                self.evictions += self.closing.len() as u64;
                self.closing.clear();
            }
            // The first closing event decides; the rest are consequences.
            self.closing
                .entry(rec.sk)
                .or_insert((by, rec.data_idle_secs(hz)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        fixture::{bytes, raw},
        Deriver,
    };
    use keepalive_common::{kind, Event};

    fn feed(t: &mut CloseTracker, d: &mut Deriver, e: Event) -> Option<Closed> {
        let r = Record::decode(&bytes(&e)).unwrap();
        let mut out = vec![];
        d.derive(&r, &crate::events::derive::Context::default(), &mut out);
        t.on(&r, &out, 250)
    }

    #[test]
    fn server_closes_idle_keepalive_connection() {
        let (mut t, mut d) = (CloseTracker::default(), Deriver::new(250));
        // Last response sent at 500, nothing since: FIN at 1000 = 2 s idle.
        let fin = Event {
            lrcvtime: 400,
            lsndtime: 500,
            state: 4,
            ..raw(kind::FIN_SENT)
        };
        assert_eq!(feed(&mut t, &mut d, fin), None);
        let closed = Event {
            state: 7,
            state_before: 4,
            turns_out: 3,
            ..raw(kind::CLOSED)
        };
        let c = feed(&mut t, &mut d, closed).unwrap();
        assert_eq!(
            (c.by, c.idle_s, c.turns_out),
            (ClosedBy::LocalFin, Some(2.0), 3)
        );
        assert!(t.closing.is_empty());
    }

    #[test]
    fn first_closing_event_decides() {
        let (mut t, mut d) = (CloseTracker::default(), Deriver::new(250));
        feed(
            &mut t,
            &mut d,
            Event {
                state: 8,
                ..raw(kind::FIN_RECEIVED)
            },
        );
        feed(
            &mut t,
            &mut d,
            Event {
                state: 8,
                ..raw(kind::RESET_RECEIVED)
            },
        );
        let c = feed(
            &mut t,
            &mut d,
            Event {
                state: 7,
                ..raw(kind::CLOSED)
            },
        )
        .unwrap();
        assert_eq!(c.by, ClosedBy::PeerFin);
    }

    #[test]
    fn closes_without_a_known_start_are_skipped() {
        let (mut t, mut d) = (CloseTracker::default(), Deriver::new(250));
        assert_eq!(
            feed(
                &mut t,
                &mut d,
                Event {
                    state: 7,
                    state_before: 10,
                    ..raw(kind::CLOSED)
                }
            ),
            None
        );
    }
}
