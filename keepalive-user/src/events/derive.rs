//! What records mean: the [`Kind`]s kato reports, derived per socket
//! (probe sent, peer answered, keepalive timeout, stale reuse, ...).

use std::collections::{HashMap, HashSet};

use super::{
    names::{ABORT_ON_DATA, ETIMEDOUT},
    record::TCP_SYN,
    Record, RecordKind,
};
use crate::tcp::TcpState;

/// What kato reports: one kernel record may mean one or two of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Keepalive timer armed (keepalive on, connection established, reconfigured).
    Armed,
    /// The keepalive timer ran and only re-armed itself (connection not idle long enough).
    Fired,
    /// The timer ran and sent a keepalive probe.
    ProbeSent,
    /// Probes had gone out and the peer has answered since.
    PeerAnswered,
    /// The timer gave up: the connection is closed with ETIMEDOUT.
    KeepaliveTimeout,
    /// The keepalive timer was stopped (keepalive off, close, or re-arm).
    Disarmed,
    /// The kernel sent a reset: an active one (tcp_send_active_reset), or
    /// a reply to a segment it got (data for a socket already closed, a
    /// segment for no socket).
    ResetSent,
    /// The peer reset the connection (a RST arrived).
    ResetReceived,
    /// The socket left the kernel's tables (any TCP close).
    Closed,
    /// The peer closed its side first (FIN received on an established connection).
    FinReceived,
    /// This side closed first (FIN sent on an established connection).
    FinSent,
    /// The keep-alive race: data written on a connection whose peer had
    /// closed it (its FIN already arrived, or crossed the write on the
    /// wire), answered by a reset. Seen by the side that wrote (a write
    /// the peer never took, then the reset, in CLOSE_WAIT) and by the side
    /// that closed (its reply to data after its own FIN).
    StaleReuse,
    /// Evidence that a middlebox forgot the flow: a reset after the
    /// connection sat idle past its path's known idle timeout, or the
    /// first send after such a silence never getting through
    /// (ETIMEDOUT from retransmissions). A keepalive timeout alone is a
    /// dead or unreachable peer, not this.
    IdleKillSuspected,
    /// The kernel reported an error to the socket's owner (`sk_err`).
    SocketError,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Armed,
        Kind::Fired,
        Kind::ProbeSent,
        Kind::PeerAnswered,
        Kind::KeepaliveTimeout,
        Kind::Disarmed,
        Kind::ResetSent,
        Kind::ResetReceived,
        Kind::Closed,
        Kind::FinReceived,
        Kind::FinSent,
        Kind::StaleReuse,
        Kind::IdleKillSuspected,
        Kind::SocketError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Armed => "armed",
            Kind::Fired => "fired",
            Kind::ProbeSent => "probe_sent",
            Kind::PeerAnswered => "peer_answered",
            Kind::KeepaliveTimeout => "keepalive_timeout",
            Kind::Disarmed => "disarmed",
            Kind::ResetSent => "reset_sent",
            Kind::ResetReceived => "reset_received",
            Kind::Closed => "closed",
            Kind::FinReceived => "fin_received",
            Kind::FinSent => "fin_sent",
            Kind::StaleReuse => "stale_reuse",
            Kind::IdleKillSuspected => "idle_kill_suspected",
            Kind::SocketError => "socket_error",
        }
    }

    /// One per connection, on every TCP connection: shown by `kato trace`
    /// only with `--closes`.
    pub fn is_lifecycle(self) -> bool {
        matches!(self, Kind::Closed | Kind::FinReceived | Kind::FinSent)
    }

    /// Did the keepalive timer run for this event?
    pub fn is_firing(self) -> bool {
        matches!(
            self,
            Kind::Fired | Kind::ProbeSent | Kind::PeerAnswered | Kind::KeepaliveTimeout
        )
    }
}

/// One derived event: its kind and the probe count that goes with it (for
/// `peer_answered`, how many probes were out before the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derived {
    pub kind: Kind,
    pub probes: u8,
}

/// Upper bound on sockets whose probe count the deriver remembers; beyond
/// it the table is cleared (and counted), which can hide one peer_answered.
const DERIVER_CAPACITY: usize = 1 << 18;

/// What deriving a record needs besides the record and the socket's
/// history.
#[derive(Debug, Default, Clone, Copy)]
pub struct Context<'a> {
    /// The idle timeout of the record's path (seconds), where one is known
    /// (declared, conntrack, IPVS, cloud-assumed or learned).
    pub path_timeout_s: Option<f64>,
    /// A sent reset's reason, named (the kernel's or inferred).
    pub reset: Option<&'a str>,
}

/// Turns records into [`Kind`]s. Remembers, per socket, the probes that were
/// unanswered after its last timer run: if the next run starts at zero, the
/// peer answered in between (the ACK path resets `icsk_probes_out`).
pub struct Deriver {
    hz: u32,
    unanswered: HashMap<u64, u8>,
    /// Sockets whose keepalive timeout was already reported by the error
    /// report inside the timer run; their exit record adds nothing.
    timed_out: HashSet<u64>,
    pub evictions: u64,
}

impl Deriver {
    pub fn new(hz: u32) -> Self {
        Self {
            hz,
            unanswered: HashMap::new(),
            timed_out: HashSet::new(),
            evictions: 0,
        }
    }

    /// Silent for at least the path's idle timeout.
    fn past_timeout(ctx: &Context<'_>, silent_s: Option<f64>) -> bool {
        matches!((ctx.path_timeout_s, silent_s), (Some(t), Some(s)) if s >= t)
    }

    /// Appends the events `rec` stands for to `out`.
    pub fn derive(&mut self, rec: &Record, ctx: &Context<'_>, out: &mut Vec<Derived>) {
        let hz = self.hz;
        let mut push = |kind, probes| out.push(Derived { kind, probes });
        match rec.kind {
            RecordKind::Armed => push(Kind::Armed, rec.probes_out),
            RecordKind::ResetSent => {
                push(Kind::ResetSent, rec.probes_out);
                if peer_reused(rec, ctx.reset) {
                    push(Kind::StaleReuse, 0);
                }
            }
            RecordKind::ResetReceived => {
                push(Kind::ResetReceived, rec.probes_out);
                // The peer's FIN came before its reset, and a write of ours
                // was never taken: that write met a closed connection.
                if rec.state == TcpState::CloseWait && rec.unacked > 0 {
                    push(Kind::StaleReuse, 0);
                } else if rec.state == TcpState::Established
                    && Self::past_timeout(ctx, rec.idle_secs(hz))
                {
                    push(Kind::IdleKillSuspected, 0);
                }
            }
            RecordKind::FinReceived => push(Kind::FinReceived, 0),
            RecordKind::FinSent => push(Kind::FinSent, 0),
            RecordKind::ErrorReport => {
                push(Kind::SocketError, rec.probes_out);
                if rec.sk_err != ETIMEDOUT {
                    return;
                }
                // Reported from inside the timer run, before the socket can
                // go away: the reliable moment of a keepalive timeout. The
                // run's exit record is read after the callback, when a
                // closed socket may already be freed (seen under emulation).
                if rec.in_keepalive_timer {
                    push(Kind::KeepaliveTimeout, rec.probes_out);
                    if self.timed_out.len() >= DERIVER_CAPACITY {
                        self.timed_out.clear();
                    }
                    self.timed_out.insert(rec.sk);
                } else if Self::past_timeout(ctx, rec.silence_before_send_secs(hz)) {
                    // Data sent after a silence longer than the path keeps
                    // a flow, retransmitted until the kernel gave up.
                    push(Kind::IdleKillSuspected, 0);
                }
            }
            RecordKind::Closed => {
                self.unanswered.remove(&rec.sk);
                push(Kind::Closed, rec.probes_out);
            }
            RecordKind::Disarmed => {
                self.unanswered.remove(&rec.sk);
                push(Kind::Disarmed, rec.probes_out);
            }
            RecordKind::Fired => {
                if self.timed_out.remove(&rec.sk) {
                    self.unanswered.remove(&rec.sk);
                    return;
                }
                let before = self.unanswered.remove(&rec.sk).unwrap_or(0);
                let answered = before > 0 && rec.probes_before == 0;
                if answered {
                    push(Kind::PeerAnswered, before);
                }
                let closed = rec.state == TcpState::Close && rec.state_before != TcpState::Close;
                if closed && rec.sk_err == ETIMEDOUT {
                    push(Kind::KeepaliveTimeout, rec.probes_out);
                } else if rec.probes_out > rec.probes_before {
                    push(Kind::ProbeSent, rec.probes_out);
                } else if !answered {
                    push(Kind::Fired, rec.probes_out);
                }
                if rec.probes_out > 0 && rec.state != TcpState::Close {
                    if self.unanswered.len() >= DERIVER_CAPACITY {
                        self.evictions += self.unanswered.len() as u64;
                        self.unanswered.clear();
                    }
                    self.unanswered.insert(rec.sk, rec.probes_out);
                }
            }
        }
    }
}

/// A reply reset that answered data the peer sent after this side closed
/// (the side that closed sees the keep-alive race): the kernel aborted the
/// socket for it (TCP_ABORT_ON_DATA), or a TIME_WAIT socket whose owner
/// closed first (substate FIN_WAIT2) got data, not a new SYN.
fn peer_reused(rec: &Record, reset: Option<&str>) -> bool {
    if !rec.reply {
        return false;
    }
    if rec.mini {
        return rec.sk != 0 && rec.state == TcpState::FinWait2 && rec.seg_flags & TCP_SYN == 0;
    }
    rec.local_abort || reset == Some(ABORT_ON_DATA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::fixture::{bytes, raw};
    use keepalive_common::{flags, kind, Event as RawEvent};

    /// The keepalive timeout comes from the error report inside the timer
    /// run; the run's exit record, read after the callback (possibly from a
    /// freed socket), adds nothing for that socket.
    #[test]
    fn keepalive_timeout_from_the_error_report_once() {
        let mut d = Deriver::new(250);
        let mut e = raw(kind::ERROR_REPORT);
        e.sk_err = ETIMEDOUT;
        e.flags = flags::IN_KEEPALIVE_TIMER;
        e.probes_out = 3;
        let mut out = vec![];
        d.derive(
            &Record::decode(&bytes(&e)).unwrap(),
            &Context::default(),
            &mut out,
        );
        assert_eq!(
            out.iter().map(|d| (d.kind, d.probes)).collect::<Vec<_>>(),
            [(Kind::SocketError, 3), (Kind::KeepaliveTimeout, 3)]
        );
        // A stale exit record (state read back as ESTABLISHED, no error).
        out.clear();
        d.derive(
            &Record::decode(&bytes(&raw(kind::FIRED))).unwrap(),
            &Context::default(),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // The next run of the same address is a new story.
        d.derive(
            &Record::decode(&bytes(&raw(kind::FIRED))).unwrap(),
            &Context::default(),
            &mut out,
        );
        assert_eq!(
            out.iter().map(|d| d.kind).collect::<Vec<_>>(),
            [Kind::Fired]
        );
    }

    fn fired(probes_before: u8, probes_out: u8, state: u8, sk_err: i32) -> Record {
        let e = RawEvent {
            probes_before,
            probes_out,
            state,
            sk_err,
            ..raw(kind::FIRED)
        };
        Record::decode(&bytes(&e)).unwrap()
    }

    fn run(d: &mut Deriver, r: &Record) -> Vec<Kind> {
        run_with(d, r, None)
    }

    /// With the path's idle timeout known to be `timeout` seconds.
    fn run_with(d: &mut Deriver, r: &Record, timeout: Option<f64>) -> Vec<Kind> {
        let mut out = vec![];
        let ctx = Context {
            path_timeout_s: timeout,
            reset: None,
        };
        d.derive(r, &ctx, &mut out);
        out.iter().map(|x| x.kind).collect()
    }

    #[test]
    fn peer_answered_carries_probes_needed() {
        let mut d = Deriver::new(250);
        let mut out = vec![];
        let c = Context::default();
        d.derive(&fired(0, 1, 1, 0), &c, &mut out);
        d.derive(&fired(1, 2, 1, 0), &c, &mut out);
        out.clear();
        d.derive(&fired(0, 0, 1, 0), &c, &mut out);
        assert_eq!(
            out,
            [Derived {
                kind: Kind::PeerAnswered,
                probes: 2
            }]
        );
    }

    #[test]
    fn dead_peer_sequence() {
        let mut d = Deriver::new(250);
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(1, 2, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(2, 3, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(
            run(&mut d, &fired(3, 3, 7, ETIMEDOUT)),
            [Kind::KeepaliveTimeout]
        );
        assert!(d.unanswered.is_empty(), "closed socket forgotten");
    }

    #[test]
    fn healthy_peer_answers() {
        let mut d = Deriver::new(250);
        assert_eq!(run(&mut d, &fired(0, 0, 1, 0)), [Kind::Fired]);
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        // ACK reset probes_out to 0; the next run only re-arms.
        assert_eq!(run(&mut d, &fired(0, 0, 1, 0)), [Kind::PeerAnswered]);
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        // Answered and immediately idle long enough to probe again.
        assert_eq!(
            run(&mut d, &fired(0, 1, 1, 0)),
            [Kind::PeerAnswered, Kind::ProbeSent]
        );
    }

    #[test]
    fn close_without_etimedout_is_not_a_keepalive_timeout() {
        let mut d = Deriver::new(250);
        assert_eq!(run(&mut d, &fired(0, 0, 7, 0)), [Kind::Fired]);
        let e = RawEvent {
            probes_before: 3,
            probes_out: 3,
            state: 7,
            state_before: 7,
            sk_err: ETIMEDOUT,
            ..raw(kind::FIRED)
        };
        let already_closed = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(
            run(&mut d, &already_closed),
            [Kind::Fired],
            "closed before this run"
        );
    }

    #[test]
    fn resets_and_closes() {
        let mut d = Deriver::new(250);
        run(&mut d, &fired(0, 1, 1, 0));
        let mut e = raw(kind::RESET_RECEIVED);
        (e.lrcvtime, e.rcv_tstamp, e.lsndtime) = (500, 250, 999);
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(run(&mut d, &r), [Kind::ResetReceived]);
        assert_eq!(
            r.idle_secs(250),
            Some(2.0),
            "since the later of data (500) and ACK (250)"
        );
        assert_eq!(r.data_idle_secs(250), Some(0.004), "data sent at 999");
        let closed = Record::decode(&bytes(&RawEvent {
            state: 7,
            ..raw(kind::CLOSED)
        }))
        .unwrap();
        assert_eq!(run(&mut d, &closed), [Kind::Closed]);
        assert_eq!(closed.idle_secs(250), None);
        assert!(d.unanswered.is_empty(), "closed socket forgotten");
    }

    #[test]
    fn stale_reuse_on_the_side_that_wrote() {
        let mut d = Deriver::new(250);
        // CLOSE_WAIT (the FIN in), a write not acknowledged, a RST back.
        let e = RawEvent {
            state: 8,
            lrcvtime: 300,
            rcv_tstamp: 950,
            lsndtime: 900,
            unacked: 78,
            ..raw(kind::RESET_RECEIVED)
        };
        let stale = Record::decode(&bytes(&e)).unwrap();
        // The FIN crossed the write: its ACK came after (950 > 900).
        assert_eq!(run(&mut d, &stale), [Kind::ResetReceived, Kind::StaleReuse]);
        assert_eq!(stale.reuse_gap_secs(250), 2.4);
        // Nothing of ours outstanding: the peer's reset after its FIN is
        // not a reuse (a keepalive probe met a socket that is gone).
        let e = RawEvent { unacked: 0, ..e };
        assert_eq!(
            run(&mut d, &Record::decode(&bytes(&e)).unwrap()),
            [Kind::ResetReceived]
        );
    }

    #[test]
    fn stale_reuse_on_the_side_that_closed() {
        let mut d = Deriver::new(250);
        let reply = |e: RawEvent| Record::decode(&bytes(&e)).unwrap();
        let with = |d: &mut Deriver, r: &Record, reset: &str| {
            let mut out = vec![];
            let ctx = Context {
                path_timeout_s: None,
                reset: Some(reset),
            };
            d.derive(r, &ctx, &mut out);
            out.iter().map(|x| x.kind).collect::<Vec<_>>()
        };
        // A full socket the kernel aborted for data after its FIN.
        let full = reply(RawEvent {
            state: 7,
            flags: flags::REPLY,
            ..raw(kind::RESET_SENT)
        });
        assert_eq!(
            with(&mut d, &full, "TCP_ABORT_ON_DATA"),
            [Kind::ResetSent, Kind::StaleReuse]
        );
        assert_eq!(with(&mut d, &full, "TCP_FLAGS"), [Kind::ResetSent]);
        // A TIME_WAIT socket whose owner closed first (substate FIN_WAIT2)
        // got data; a SYN to it is a new connection, not a reuse.
        let tw = RawEvent {
            state: 5,
            flags: flags::REPLY | flags::MINI_SOCK,
            seg_flags: 0x18,
            ..raw(kind::RESET_SENT)
        };
        assert_eq!(
            with(&mut d, &reply(tw), "TCP_TIMEWAIT_SOCKET"),
            [Kind::ResetSent, Kind::StaleReuse]
        );
        let syn = RawEvent {
            seg_flags: 0x02,
            ..tw
        };
        assert_eq!(
            with(&mut d, &reply(syn), "TCP_TIMEWAIT_SOCKET"),
            [Kind::ResetSent]
        );
        // An active reset is no reply.
        assert_eq!(
            with(&mut d, &reply(raw(kind::RESET_SENT)), "TCP_ABORT_ON_DATA"),
            [Kind::ResetSent]
        );
    }

    #[test]
    fn idle_kills_need_a_known_timeout_and_keepalive_timeouts_are_not_kills() {
        let mut d = Deriver::new(250);
        // ESTABLISHED, silent since 0 (4 s), our write at 999 met a RST.
        let e = RawEvent {
            lrcvtime: 0,
            rcv_tstamp: 0,
            lsndtime: 999,
            ..raw(kind::RESET_RECEIVED)
        };
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(run(&mut d, &r), [Kind::ResetReceived], "no timeout known");
        assert_eq!(
            run_with(&mut d, &r, Some(3.0)),
            [Kind::ResetReceived, Kind::IdleKillSuspected]
        );
        assert_eq!(
            run_with(&mut d, &r, Some(5.0)),
            [Kind::ResetReceived],
            "silent 4 s < 5 s"
        );
        // Keepalive gave up after 4 s of silence: a dead peer, whatever the path.
        let e = RawEvent {
            sk_err: ETIMEDOUT,
            flags: flags::IN_KEEPALIVE_TIMER,
            ..raw(kind::ERROR_REPORT)
        };
        assert_eq!(
            run_with(&mut d, &Record::decode(&bytes(&e)).unwrap(), Some(1.0)),
            [Kind::SocketError, Kind::KeepaliveTimeout]
        );
        // Retransmissions gave up on data first sent after 3 s of silence
        // (heard at 1, sent 1 s before the report at jiffies 1001; stamps
        // of 0 would be a connect that never got an answer).
        let e = RawEvent {
            sk_err: ETIMEDOUT,
            ts_ns: 10_000_000_000,
            first_unacked_ms: 9_000,
            jiffies: 1001,
            lrcvtime: 1,
            rcv_tstamp: 1,
            ..raw(kind::ERROR_REPORT)
        };
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(r.silence_before_send_secs(250), Some(3.0));
        assert_eq!(
            run_with(&mut d, &r, Some(2.0)),
            [Kind::SocketError, Kind::IdleKillSuspected]
        );
        assert_eq!(run_with(&mut d, &r, Some(5.0)), [Kind::SocketError]);
    }

    #[test]
    fn disarm_forgets_probes() {
        let mut d = Deriver::new(250);
        run(&mut d, &fired(0, 1, 1, 0));
        let dis = Record::decode(&bytes(&raw(kind::DISARMED))).unwrap();
        assert_eq!(run(&mut d, &dis), [Kind::Disarmed]);
        assert_eq!(run(&mut d, &fired(0, 0, 1, 0)), [Kind::Fired]);
    }

    #[test]
    fn error_report_outside_the_timer_is_only_a_socket_error() {
        let e = RawEvent {
            sk_err: ETIMEDOUT,
            ..raw(kind::ERROR_REPORT)
        };
        assert_eq!(
            run(&mut Deriver::new(250), &Record::decode(&bytes(&e)).unwrap()),
            [Kind::SocketError]
        );
    }
}
