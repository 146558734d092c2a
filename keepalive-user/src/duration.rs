//! Human durations in config files and flags: `30s`, `500ms`, `5m`,
//! `1.5h`, `1h 30m`: jiff's friendly format (ISO 8601 `PT30S` too); a bare
//! number is seconds (`30`, `0.5`), as in sysctls and `ss`.

use std::time::Duration;

use crate::invalid::Invalid;

/// Parses a positive duration of at most ~31 years.
pub fn parse(s: &str) -> Result<Duration, Invalid> {
    let s = s.trim();
    let bad = || Invalid::not_a(s, "a duration (e.g. 30s, 500ms, 5m, 2h, or seconds)");
    let d: jiff::SignedDuration = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs.abs() < 1e15 => {
            jiff::SignedDuration::try_from_secs_f64(secs).map_err(|_| bad())?
        }
        Ok(_) => return Err(bad()),
        Err(_) => s.parse().map_err(|_| bad())?,
    };
    if d.is_negative() {
        return Err(Invalid::refused(s, "negative"));
    }
    let d = Duration::try_from(d).map_err(|_| bad())?;
    if d > Duration::from_secs(1_000_000_000) {
        return Err(Invalid::refused(s, "out of range"));
    }
    Ok(d)
}

/// `350s`, `1.5s`, `250ms`: how kato prints durations back.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!(
            "{}s",
            format!("{:.3}", d.as_secs_f64()).trim_end_matches('0')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(" 350s "), Ok(Duration::from_secs(350)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)), "bare seconds");
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse("-5").unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["3x", "s", "", "1e99s", "soon", "1e99", "NaN", "inf"] {
            assert!(
                parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("is not a duration"),
                "{bad}"
            );
        }
        assert!(parse("-5s").unwrap_err().to_string().contains("negative"));
        assert!(parse("100000000000s")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("PT30S"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format(Duration::from_secs(350)), "350s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }
}
