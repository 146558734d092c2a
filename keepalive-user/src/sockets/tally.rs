//! The socket table counted as the metrics report it (by state and
//! keepalive, by risk verdict, probing), kept as entries come, change and
//! go: a scrape reads a few dozen numbers, not every entry. At a million
//! sockets a walk is 200 MB of entries, 20–40 ms a scrape.

use super::compact::Compact;
use crate::{
    policy::{Risk, RuleSource},
    tcp::TcpState,
};

/// A risk verdict and the source of its rule.
pub type Verdict = Option<(Risk, Option<RuleSource>)>;

/// Verdict bytes per risk: no source, then each source.
const PER: usize = RuleSource::ALL.len() + 1;

/// Distinct verdict bytes: none (0), then every risk with every source.
const VERDICTS: usize = 1 + Risk::ALL.len() * PER;
const _: () = assert!(VERDICTS <= 256);

/// A verdict in one byte, below [`VERDICTS`].
pub(super) fn verdict_byte(v: Verdict) -> u8 {
    let Some((r, src)) = v else { return 0 };
    let r = Risk::ALL.iter().position(|x| *x == r).unwrap_or(0);
    let src = src.map_or(0, |s| {
        1 + RuleSource::ALL.iter().position(|x| *x == s).unwrap_or(0)
    });
    1 + (r * PER + src) as u8
}

/// The verdict of a [`verdict_byte`].
#[cfg(test)]
fn byte_verdict(b: u8) -> Verdict {
    let i = usize::from(b.checked_sub(1)?);
    let src = match i % PER {
        0 => None,
        s => Some(RuleSource::ALL[s - 1]),
    };
    Some((Risk::ALL[i / PER], src))
}

/// Live entries counted. Signed so that a missed uncount shows as a
/// wrong number in a test, not as a wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// By state (kernel order), then keepalive: not known, on, off.
    by: [[i64; 3]; TcpState::COUNT],
    /// By verdict byte.
    verdicts: [i64; VERDICTS],
    probing: i64,
    tracked: i64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            by: [[0; 3]; TcpState::COUNT],
            verdicts: [0; VERDICTS],
            probing: 0,
            tracked: 0,
        }
    }
}

impl Tally {
    /// Counts (`n` = 1) or takes back (`n` = -1) a live entry: its socket
    /// as it stands and its verdict byte. Every change to an entry's
    /// socket or verdict is a take-back before and a count after.
    pub(super) fn count(&mut self, s: &Compact, verdict: u8, n: i64) {
        let ka = match s.keepalive_enabled() {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        let by = &mut self.by[s.state as usize - 1][ka];
        *by += n;
        // Bytes come from `verdict_byte` alone.
        let v = &mut self.verdicts[usize::from(verdict)];
        *v += n;
        debug_assert!(*by >= 0 && *v >= 0, "a take-back without a count");
        if s.keepalive_probing() {
            self.probing += n;
        }
        self.tracked += n;
    }

    /// Live entries.
    pub fn tracked(&self) -> i64 {
        self.tracked
    }

    /// Entries with keepalive probes out and unanswered.
    pub fn probing(&self) -> i64 {
        self.probing
    }

    /// Entries by state and keepalive (None: not known), nonzero ones.
    pub fn by_state(&self) -> impl Iterator<Item = (TcpState, Option<bool>, i64)> + '_ {
        TcpState::ALL.iter().flat_map(move |&st| {
            [None, Some(true), Some(false)]
                .into_iter()
                .enumerate()
                .map(move |(i, ka)| (st, ka, self.by[st as usize - 1][i]))
                .filter(|(_, _, n)| *n != 0)
        })
    }

    /// Entries whose last verdict was `v`.
    pub fn with_verdict(&self, v: Verdict) -> i64 {
        self.verdicts[usize::from(verdict_byte(v))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_has_its_own_byte_and_comes_back() {
        let mut all = vec![None];
        for r in Risk::ALL {
            all.push(Some((r, None)));
            all.extend(RuleSource::ALL.map(|s| Some((r, Some(s)))));
        }
        assert_eq!(all.len(), VERDICTS);
        let bytes: Vec<u8> = all.iter().map(|v| verdict_byte(*v)).collect();
        assert_eq!(bytes, (0..VERDICTS as u8).collect::<Vec<_>>());
        for v in all {
            assert_eq!(byte_verdict(verdict_byte(v)), v);
        }
    }
}
