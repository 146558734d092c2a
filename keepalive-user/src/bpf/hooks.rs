//! Every program in kato's object and where it attaches: one table, and the
//! groups of hooks each attach path uses.

/// How a program reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgKind {
    /// BTF-enabled raw tracepoint.
    TpBtf,
    FEntry,
    FExit,
    /// BPF iterator (`target` is the iterator type).
    Iter,
}

/// A program of kato's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    TimerStart,
    TimerExpireEntry,
    TimerExpireExit,
    TimerCancel,
    TcpSendReset,
    TcpSendResetReplies,
    TcpReceiveReset,
    InetSockSetState,
    InetSkErrorReport,
    FentryKeepaliveTimer,
    FexitKeepaliveTimer,
    FentrySendActiveReset,
    FentrySendActiveResetR1,
    FexitResetKeepaliveTimer,
    FentryDeleteKeepaliveTimer,
    SockSendLength,
    SockRecvLength,
    IterTcp,
    IterTaskFile,
    /// `kato protect`'s walk of existing connections.
    IterProtect,
}

impl Hook {
    pub const ALL: [Hook; 20] = [
        Hook::TimerStart,
        Hook::TimerExpireEntry,
        Hook::TimerExpireExit,
        Hook::TimerCancel,
        Hook::TcpSendReset,
        Hook::TcpSendResetReplies,
        Hook::TcpReceiveReset,
        Hook::InetSockSetState,
        Hook::InetSkErrorReport,
        Hook::FentryKeepaliveTimer,
        Hook::FexitKeepaliveTimer,
        Hook::FentrySendActiveReset,
        Hook::FentrySendActiveResetR1,
        Hook::FexitResetKeepaliveTimer,
        Hook::FentryDeleteKeepaliveTimer,
        Hook::SockSendLength,
        Hook::SockRecvLength,
        Hook::IterTcp,
        Hook::IterTaskFile,
        Hook::IterProtect,
    ];

    /// (program name in the object, tracepoint / kernel function / iterator
    /// type, kind).
    pub const fn spec(self) -> (&'static str, &'static str, ProgKind) {
        use ProgKind::{FEntry, FExit, Iter, TpBtf};
        match self {
            Hook::TimerStart => ("timer_start", "timer_start", TpBtf),
            Hook::TimerExpireEntry => ("timer_expire_entry", "timer_expire_entry", TpBtf),
            Hook::TimerExpireExit => ("timer_expire_exit", "timer_expire_exit", TpBtf),
            Hook::TimerCancel => ("timer_cancel", "timer_cancel", TpBtf),
            Hook::TcpSendReset => ("tcp_send_reset", "tcp_send_reset", TpBtf),
            Hook::TcpSendResetReplies => ("tcp_send_reset_replies", "tcp_send_reset", TpBtf),
            Hook::TcpReceiveReset => ("tcp_receive_reset", "tcp_receive_reset", TpBtf),
            Hook::InetSockSetState => ("inet_sock_set_state", "inet_sock_set_state", TpBtf),
            Hook::InetSkErrorReport => ("inet_sk_error_report", "inet_sk_error_report", TpBtf),
            Hook::FentryKeepaliveTimer => ("fentry_keepalive_timer", "tcp_keepalive_timer", FEntry),
            Hook::FexitKeepaliveTimer => ("fexit_keepalive_timer", "tcp_keepalive_timer", FExit),
            Hook::FentrySendActiveReset => {
                ("fentry_send_active_reset", "tcp_send_active_reset", FEntry)
            }
            Hook::FentrySendActiveResetR1 => (
                "fentry_send_active_reset_r1",
                "tcp_send_active_reset",
                FEntry,
            ),
            Hook::FexitResetKeepaliveTimer => (
                "fexit_reset_keepalive_timer",
                "inet_csk_reset_keepalive_timer",
                FExit,
            ),
            Hook::FentryDeleteKeepaliveTimer => (
                "fentry_delete_keepalive_timer",
                "inet_csk_delete_keepalive_timer",
                FEntry,
            ),
            Hook::SockSendLength => ("sock_send_length", "sock_send_length", TpBtf),
            Hook::SockRecvLength => ("sock_recv_length", "sock_recv_length", TpBtf),
            Hook::IterTcp => ("kato_iter_tcp", "tcp", Iter),
            Hook::IterTaskFile => ("kato_iter_task_file", "task_file", Iter),
            Hook::IterProtect => ("kato_iter_protect", "tcp", Iter),
        }
    }

    pub const fn program(self) -> &'static str {
        self.spec().0
    }

    pub const fn target(self) -> &'static str {
        self.spec().1
    }

    pub const fn kind(self) -> ProgKind {
        self.spec().2
    }
}

/// The tracepoint path: the `timer:*` ones see every kernel timer and
/// filter on `tcp_keepalive_timer`; arming ([`TRACEPOINT_ARMING`]) besides.
pub const TRACEPOINT_PATH: [Hook; 5] = [
    Hook::TimerExpireEntry,
    Hook::TimerExpireExit,
    Hook::TcpSendReset,
    Hook::TcpReceiveReset,
    Hook::InetSockSetState,
];

/// The fentry path: trampolines on the keepalive functions themselves
/// (and [`active_reset`]'s on `tcp_send_active_reset`).
pub const FENTRY_PATH: [Hook; 2] = [Hook::FentryKeepaliveTimer, Hook::FexitKeepaliveTimer];

/// The fentry program for `tcp_send_active_reset`, by where the kernel's
/// build left its `reason` argument (`reason_at`, from BTF): second where
/// the compiler dropped `priority`, else third or absent.
pub const fn active_reset(reason_at: Option<u8>) -> Hook {
    match reason_at {
        Some(1) => Hook::FentrySendActiveResetR1,
        _ => Hook::FentrySendActiveReset,
    }
}

/// Both fentry programs for `tcp_send_active_reset` (to undo a path).
pub const FENTRY_ACTIVE_RESETS: [Hook; 2] =
    [Hook::FentrySendActiveReset, Hook::FentrySendActiveResetR1];

/// The fentry path's tracepoints: resets sent in reply to segments
/// (`tcp_send_active_reset` has its own trampoline there).
pub const FENTRY_TRACEPOINTS: [Hook; 1] = [Hook::TcpSendResetReplies];

/// fentry path, arming and disarming, where the kernel has these functions
/// out of line (6.1 does; newer kernels inline them) ...
pub const FENTRY_ARMING: [Hook; 2] = [
    Hook::FexitResetKeepaliveTimer,
    Hook::FentryDeleteKeepaliveTimer,
];
/// ... else the filtered timer tracepoints, as on the tracepoint path. These
/// fire on every `mod_timer`/`del_timer` of the system, the most frequent
/// hooks kato has: the agent, which takes timer state from its snapshots,
/// leaves them out.
pub const TRACEPOINT_ARMING: [Hook; 2] = [Hook::TimerStart, Hook::TimerCancel];

/// Both paths: tracepoints that fire only on TCP events (no filtering).
pub const TCP_TRACEPOINTS: [Hook; 2] = [Hook::TcpReceiveReset, Hook::InetSockSetState];

/// Opt-in: request/response turns from every send/recv (HTTP keep-alive view).
pub const TURNS: [Hook; 2] = [Hook::SockSendLength, Hook::SockRecvLength];

/// The socket-listing iterators.
pub const ITERATORS: [Hook; 2] = [Hook::IterTcp, Hook::IterTaskFile];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_hold_the_kinds_they_attach_as() {
        for h in TRACEPOINT_PATH
            .iter()
            .chain(&TCP_TRACEPOINTS)
            .chain(&FENTRY_TRACEPOINTS)
            .chain(&TURNS)
        {
            assert_eq!(h.kind(), ProgKind::TpBtf, "{h:?}");
        }
        for h in FENTRY_PATH
            .iter()
            .chain(&FENTRY_ARMING)
            .chain(&FENTRY_ACTIVE_RESETS)
        {
            assert!(
                matches!(h.kind(), ProgKind::FEntry | ProgKind::FExit),
                "{h:?}"
            );
        }
        assert!(ITERATORS.iter().all(|h| h.kind() == ProgKind::Iter));
    }
}
