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

    /// The states `ss state FILTER` means by `s`: a state by ss's name
    /// (`established`, `syn-sent`, `fin-wait-1`, `listening`, `closed`...)
    /// or kato's (`fin-wait1`, `listen`, `TIME_WAIT`), `estab` (ss's column
    /// heading), or one of ss's groups: `all`, `connected` (all but
    /// listening and closed), `synchronized` (connected but syn-sent),
    /// `bucket` (syn-recv, time-wait: mini-sockets), `big` (all but bucket).
    pub fn parse_ss(s: &str) -> Option<Vec<Self>> {
        use TcpState::*;
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        let all = || Self::ALL.into_iter().filter(|&st| st != NewSynRecv);
        let connected = || all().filter(|&st| !matches!(st, Listen | Close));
        Some(match norm.as_str() {
            "all" => all().collect(),
            "connected" => connected().collect(),
            "synchronized" => connected().filter(|&st| st != SynSent).collect(),
            "bucket" => vec![SynRecv, TimeWait],
            "big" => all()
                .filter(|&st| !matches!(st, SynRecv | TimeWait))
                .collect(),
            "estab" => vec![Established],
            "fin-wait-1" => vec![FinWait1],
            "fin-wait-2" => vec![FinWait2],
            "closed" => vec![Close],
            "listening" => vec![Listen],
            _ => vec![Self::parse(&norm)?],
        })
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
    use super::TcpState::{self, *};

    #[test]
    fn ss_state_names_and_groups() {
        let p = |s| TcpState::parse_ss(s).unwrap();
        assert_eq!(p("estab"), [Established]);
        assert_eq!(p("established"), [Established]);
        assert_eq!(p("fin-wait-1"), [FinWait1]);
        assert_eq!(p("fin-wait1"), [FinWait1]);
        assert_eq!(p("listening"), [Listen]);
        assert_eq!(p("TIME_WAIT"), [TimeWait]);
        assert_eq!(p("bucket"), [SynRecv, TimeWait]);
        let connected = p("connected");
        assert!(!connected.contains(&Listen) && !connected.contains(&Close));
        assert!(connected.contains(&SynSent) && connected.contains(&TimeWait));
        assert!(!p("synchronized").contains(&SynSent));
        assert_eq!(p("all").len(), 11);
        assert!(!p("big").contains(&TimeWait));
        assert_eq!(TcpState::parse_ss("napping"), None);
    }

    #[test]
    fn raw_round_trip() {
        for v in 1..=12u8 {
            assert_eq!(TcpState::from_raw(v).unwrap() as u8, v);
        }
        assert_eq!(TcpState::from_raw(0), None);
        assert_eq!(TcpState::from_raw(13), None);
        assert_eq!(TcpState::from_raw(7).unwrap().name(), "CLOSE");
        assert_eq!(TcpState::parse("time-wait"), Some(TimeWait));
        assert_eq!(TcpState::parse("ESTABLISHED"), Some(Established));
        assert_eq!(TcpState::parse("syn_recv"), Some(SynRecv));
        assert_eq!(TcpState::parse("nope"), None);
    }
}
