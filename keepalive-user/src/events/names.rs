//! What the kernel's numbers mean: reset reasons (`enum sk_rst_reason`,
//! named from the running kernel's BTF), errnos, and which timer gave up.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::Serialize;

use super::{Record, RecordKind};
use crate::tcp::TcpState;

pub const ETIMEDOUT: i32 = 110;

/// An errno the kernel reported to a socket's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The names TCP reports to sockets; others are `None`.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            110 => "ETIMEDOUT",
            104 => "ECONNRESET",
            111 => "ECONNREFUSED",
            32 => "EPIPE",
            113 => "EHOSTUNREACH",
            101 => "ENETUNREACH",
            71 => "EPROTO",
            _ => return None,
        })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// Who ended the connection with an error: keepalive gave up, data
/// retransmissions (or TCP_USER_TIMEOUT) gave up, or the peer said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCause {
    Keepalive,
    Retransmits,
    Peer,
}

impl ErrorCause {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCause::Keepalive => "keepalive",
            ErrorCause::Retransmits => "retransmits",
            ErrorCause::Peer => "peer",
        }
    }
}

/// An error report's errno and cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketError {
    pub errno: Errno,
    pub cause: ErrorCause,
}

impl SocketError {
    /// From an `ERROR_REPORT` record: the in-timer flag says which timer
    /// gave up on an ETIMEDOUT.
    pub fn of(rec: &Record) -> Option<Self> {
        (rec.kind == RecordKind::ErrorReport).then_some(SocketError {
            errno: Errno(rec.sk_err),
            cause: match (rec.sk_err, rec.in_keepalive_timer) {
                (ETIMEDOUT, true) => ErrorCause::Keepalive,
                (ETIMEDOUT, false) => ErrorCause::Retransmits,
                _ => ErrorCause::Peer,
            },
        })
    }
}

impl fmt::Display for SocketError {
    /// `ETIMEDOUT (keepalive)`, `ETIMEDOUT (retransmits)`, `ECONNRESET`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            ErrorCause::Peer => write!(f, "{}", self.errno),
            c => write!(f, "{} ({})", self.errno, c.name()),
        }
    }
}

/// A reset's cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReason<'a> {
    pub name: Cow<'a, str>,
    /// The kernel's code, where it gave one.
    pub code: Option<u32>,
    /// The kernel gave no reason (before 6.12); kato named it from where
    /// the reset was sent.
    pub inferred: bool,
}

/// The running kernel's `enum sk_rst_reason`, by value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetReasons(pub BTreeMap<u32, String>);

impl ResetReasons {
    /// A code's name, or `UNKNOWN_<code>` for one the kernel's BTF lacks.
    pub fn name(&self, code: u32) -> Cow<'_, str> {
        match self.0.get(&code) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("UNKNOWN_{code}")),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A sent reset's cause: the kernel's reason by name, or where the
    /// kernel gives none (active resets before 6.10, replies before 6.12),
    /// what the context proves:
    /// - sent from the socket's own keepalive timer while established: the
    ///   keepalive timeout (the timer's other reset ends FIN_WAIT2);
    /// - a reply from a full socket the kernel just closed (it replies from
    ///   a closed socket only when it aborted it for data that arrived after
    ///   its owner closed it), or after its own `tcp_reset()` of the socket:
    ///   TCP_ABORT_ON_DATA;
    /// - a reply from a TIME_WAIT socket: TCP_TIMEWAIT_SOCKET.
    pub fn of(&self, rec: &Record) -> Option<ResetReason<'_>> {
        // Other records from inside the timer (error reports) are no resets.
        if rec.kind != RecordKind::ResetSent {
            return None;
        }
        let inferred = |name| {
            Some(ResetReason {
                name: Cow::Borrowed(name),
                code: None,
                inferred: true,
            })
        };
        match rec.reason {
            Some(code) => Some(ResetReason {
                name: self.name(code),
                code: Some(code),
                inferred: false,
            }),
            None if rec.reply
                && (rec.local_abort || (!rec.mini && rec.state == TcpState::Close)) =>
            {
                inferred(ABORT_ON_DATA)
            }
            None if rec.reply && rec.mini && rec.sk != 0 && rec.state.is_timewait_substate() => {
                inferred("TCP_TIMEWAIT_SOCKET")
            }
            None if !rec.reply && rec.in_keepalive_timer && rec.state != TcpState::FinWait2 => {
                inferred("TCP_KEEPALIVE_TIMEOUT")
            }
            None => None,
        }
    }
}

/// The kernel's name for an abort on data (`enum sk_rst_reason`).
pub const ABORT_ON_DATA: &str = "TCP_ABORT_ON_DATA";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::fixture::{bytes, raw};
    use keepalive_common::{flags, kind};

    fn reasons() -> ResetReasons {
        ResetReasons(BTreeMap::from([(15, "R15".to_owned())]))
    }

    #[test]
    fn error_report_names_the_errno_and_the_timer() {
        let mut e = raw(kind::ERROR_REPORT);
        e.sk_err = ETIMEDOUT;
        let text = |e: &keepalive_common::Event| {
            SocketError::of(&Record::decode(&bytes(e)).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(text(&e), "ETIMEDOUT (retransmits)");
        e.flags = flags::IN_KEEPALIVE_TIMER;
        assert_eq!(text(&e), "ETIMEDOUT (keepalive)");
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(reasons().of(&r), None, "an error report is not a reset");
        e.sk_err = 104;
        assert_eq!(text(&e), "ECONNRESET");
        e.sk_err = 5;
        assert_eq!(text(&e), "errno 5");
        assert_eq!(
            SocketError::of(&Record::decode(&bytes(&e)).unwrap())
                .unwrap()
                .cause,
            ErrorCause::Peer
        );
        assert_eq!(
            SocketError::of(&Record::decode(&bytes(&raw(kind::FIRED))).unwrap()),
            None
        );
    }

    /// Before 6.12 resets carry no reason; one sent from the socket's own
    /// keepalive timer while established is the keepalive timeout.
    #[test]
    fn reset_reason_inferred_only_from_the_keepalive_timer() {
        let names = reasons();
        let of = |e: &keepalive_common::Event| {
            names
                .of(&Record::decode(&bytes(e)).unwrap())
                .map(|r| (r.name.into_owned(), r.inferred))
        };
        let mut e = raw(kind::RESET_SENT);
        assert_eq!(of(&e), None);
        e.flags = flags::IN_KEEPALIVE_TIMER;
        assert_eq!(of(&e), Some(("TCP_KEEPALIVE_TIMEOUT".into(), true)));
        e.state = 5; // FIN_WAIT2: the timer's other reset
        assert_eq!(of(&e), None);
        e.flags |= flags::HAS_REASON;
        e.reason = 15;
        assert_eq!(
            of(&e),
            Some(("R15".into(), false)),
            "the kernel's word wins"
        );
        e.reason = 99;
        assert_eq!(of(&e), Some(("UNKNOWN_99".into(), false)));
    }
}
