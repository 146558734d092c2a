//! TCP states as the kernel numbers them (include/net/tcp_states.h).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub const COUNT: usize = 12;
    /// Every state, in the kernel's order (`ALL[i] as usize == i + 1`).
    pub const ALL: [TcpState; Self::COUNT] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    pub fn from_raw(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v).checked_sub(1)?).copied()
    }

    /// Parses a state as users write it: `established`, `time-wait`,
    /// `TIME_WAIT`, `syn-recv`...
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().to_ascii_uppercase().replace('-', "_");
        Self::ALL.into_iter().find(|st| st.name() == norm)
    }

    /// A TIME_WAIT mini-socket's substate: TIME_WAIT, or FIN_WAIT2 for an
    /// orphan its owner closed (ss and netstat show these for it).
    pub fn is_timewait_substate(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::FinWait2)
    }

    /// The name `netstat` prints.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl serde::Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for TcpState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TcpState::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown state `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::TcpState;

    #[test]
    fn raw_round_trip() {
        for v in 1..=12u8 {
            assert_eq!(TcpState::from_raw(v).unwrap() as u8, v);
        }
        assert_eq!(TcpState::from_raw(0), None);
        assert_eq!(TcpState::from_raw(13), None);
        assert_eq!(TcpState::from_raw(7).unwrap().name(), "CLOSE");
        assert_eq!(TcpState::parse("time-wait"), Some(TcpState::TimeWait));
        assert_eq!(TcpState::parse("ESTABLISHED"), Some(TcpState::Established));
        assert_eq!(TcpState::parse("syn_recv"), Some(TcpState::SynRecv));
        assert_eq!(TcpState::parse("nope"), None);
    }
}
