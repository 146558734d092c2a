//! `kato trace`'s table on a terminal: the columns that fit its width,
//! chosen by how much they explain, each value cut with a marker rather
//! than wrapped. A stream cannot size columns from what is to come, so
//! each has a width of its own; a pipe keeps the fixed layout.

use super::trace::{cells, TraceLine};

/// Header, width, and rank (0 first) of each column, in display order.
const COLUMNS: [(&str, usize, u8); 10] = [
    ("TIME(UTC)", 15, 3),
    ("EVENT", 19, 0),
    ("LOCAL", 21, 1),
    ("REMOTE", 21, 2),
    ("STATE", 11, 7),
    ("PROBES", 6, 6),
    ("TIMER", 7, 8),
    ("REASON", 22, 4),
    ("PID/COMM", 20, 5),
    ("WORKLOAD", 24, 9),
];

/// Seconds only, where the microseconds do not fit.
const SHORT_TIME: usize = 8;
/// REASON takes what is left, this much at least.
const MIN_REASON: usize = 10;
const REASON: usize = 7;

/// The columns shown (indices into the line's cells) and their widths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    cols: Vec<(usize, usize)>,
}

impl Plan {
    /// The most telling columns that fit `width`.
    pub fn fit(width: usize) -> Plan {
        let mut by_rank: Vec<usize> = (0..COLUMNS.len()).collect();
        by_rank.sort_by_key(|&i| COLUMNS[i].2);
        let mut chosen: Vec<(usize, usize)> = vec![];
        let used = |c: &[(usize, usize)]| c.iter().map(|(_, w)| w + 1).sum::<usize>();
        for i in by_rank {
            let w = COLUMNS[i].1;
            let room = width.saturating_sub(used(&chosen));
            if w <= room {
                chosen.push((i, w));
            } else if i == 0 && SHORT_TIME <= room {
                chosen.push((i, SHORT_TIME));
            } else if i == REASON && MIN_REASON <= room {
                chosen.push((i, room));
            }
        }
        chosen.sort_unstable();
        Plan { cols: chosen }
    }

    fn join(&self, cell: impl Fn(usize) -> String) -> String {
        let mut out = String::new();
        for (n, &(i, w)) in self.cols.iter().enumerate() {
            if n > 0 {
                out.push(' ');
            }
            let text = cell(i);
            let len = text.chars().count();
            if len > w {
                out.extend(text.chars().take(w - 1));
                out.push('…');
            } else {
                out.push_str(&text);
                out.extend(std::iter::repeat_n(' ', w - len));
            }
        }
        out.trim_end().to_owned()
    }

    fn short_time(&self) -> bool {
        self.cols.first() == Some(&(0, SHORT_TIME))
    }

    pub fn header(&self) -> String {
        let short = self.short_time();
        self.join(|i| match i {
            0 if short => "UTC".to_owned(),
            _ => COLUMNS[i].0.to_owned(),
        })
    }

    pub fn line(&self, e: &TraceLine) -> String {
        let cells = cells(e);
        self.join(|i| {
            let c = &cells[i];
            // The time of day to the second, not cut mid-fraction.
            if i == 0 && self.short_time() {
                c.get(..SHORT_TIME).unwrap_or(c).to_owned()
            } else {
                c.clone()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_telling_columns_fit_the_width() {
        let p = Plan::fit(80);
        assert_eq!(
            p.header(),
            "TIME(UTC)       EVENT               LOCAL                 REMOTE"
        );
        assert!(p.header().len() <= 80);
        // Narrower: the time to the second, still the ends.
        let p = Plan::fit(72);
        assert!(p.header().starts_with("UTC      EVENT"), "{}", p.header());
        assert!(p.header().ends_with("REMOTE"));
        let wide = Plan::fit(200);
        assert_eq!(wide.cols.len(), COLUMNS.len());
        let p = Plan::fit(120);
        assert!(
            p.header().contains("REASON") && p.header().len() <= 120,
            "{}",
            p.header()
        );
        // What is left goes to REASON, cut with a marker.
        let p = Plan::fit(92);
        assert_eq!(p.cols.last(), Some(&(REASON, 12)), "{p:?}");
        assert_eq!(p.header().len(), 92 - 12 + "REASON".len());
    }
}
