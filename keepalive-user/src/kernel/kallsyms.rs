//! Symbol addresses from /proc/kallsyms.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KallsymsError {
    #[error("cannot read /proc/kallsyms: {0}")]
    Io(#[from] std::io::Error),
    #[error("kernel symbol `{0}` is not in /proc/kallsyms")]
    Missing(String),
    #[error(
        "kato needs CAP_SYSLOG at start-up to read kernel addresses: /proc/kallsyms shows `{0}` at \
         address 0 (hidden by kernel.kptr_restrict / perf_event_paranoid)"
    )]
    Hidden(String),
}

/// Address of the text symbol `name` (types t/T) in kallsyms-formatted
/// `text`. Suffixed copies such as `name.cold` do not match.
pub fn lookup(text: &str, name: &str) -> Result<u64, KallsymsError> {
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(addr), Some(ty), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if sym != name || !matches!(ty, "t" | "T") {
            continue;
        }
        let addr =
            u64::from_str_radix(addr, 16).map_err(|_| KallsymsError::Missing(name.into()))?;
        if addr == 0 {
            return Err(KallsymsError::Hidden(name.into()));
        }
        return Ok(addr);
    }
    Err(KallsymsError::Missing(name.into()))
}

pub fn lookup_running(name: &str) -> Result<u64, KallsymsError> {
    lookup(&std::fs::read_to_string("/proc/kallsyms")?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81243c71 t tcp_keepalive_timer.cold
ffffffff8202bdf0 t tcp_keepalive_timer
ffffffff8202be00 T tcp_keepalive_timer_x
ffffffffc0001000 t tcp_keepalive_timer\t[some_module]
";

    #[test]
    fn finds_exact_text_symbol() {
        assert_eq!(
            lookup(SAMPLE, "tcp_keepalive_timer").unwrap(),
            0xffffffff8202bdf0
        );
    }

    #[test]
    fn missing_and_hidden() {
        assert!(matches!(
            lookup(SAMPLE, "nope"),
            Err(KallsymsError::Missing(_))
        ));
        let hidden = "0000000000000000 t tcp_keepalive_timer\n";
        let err = lookup(hidden, "tcp_keepalive_timer").unwrap_err();
        assert!(
            err.to_string().contains("CAP_SYSLOG") && err.to_string().contains("kptr_restrict"),
            "{err}"
        );
    }
}
