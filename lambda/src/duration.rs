//! Durations as operators write them: `24h`, `15m`, `30s`, `1h30m`, `500ms`, `7d`.
//!
//! The reading is `humantime`'s. Its grammar is wider than the service's has ever
//! been: fractions (`1.5h`), spaces (`1h 30m`), long unit names (`5min`), weeks,
//! months as `M` (`15M` is fifteen months, not minutes), years, micro- and nanoseconds.
//! Accepting those would let a typo in a pool config mean something else, so a value
//! must also be written with digits and the units `ms`, `s`, `m`, `h` and `d` alone;
//! within that alphabet humantime reads exactly the spellings the service always has.

use std::time::Duration;

const EXPECTED: &str = "a duration like 24h, 15m or 30s";
const UNITS: &str = "ms, s, m, h or d";

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = humantime::parse_duration(text).map_err(|err| match err {
        humantime::DurationError::Empty => format!("is empty; expected {EXPECTED}"),
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("`{text}` needs a unit ({UNITS})")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("`{text}` has an unknown unit `{unit}` (use {UNITS})")
        }
        humantime::DurationError::NumberOverflow => format!("`{text}` has a number that is too large"),
        _ => format!("`{text}` is not {EXPECTED}"),
    })?;
    if !text.bytes().all(|b| b.is_ascii_digit() || b"dhms".contains(&b)) {
        return Err(format!(
            "`{text}` is not {EXPECTED}: whole numbers and the units {UNITS}, no spaces"
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the service has accepted since the first release (environment
    /// variables, pool configs, the template's parameters): each must keep its meaning.
    const ACCEPTED: &[(&str, Duration)] = &[
        ("24h", Duration::from_secs(86_400)),
        ("15m", Duration::from_secs(900)),
        ("30s", Duration::from_secs(30)),
        ("1h30m", Duration::from_secs(5400)),
        ("250ms", Duration::from_millis(250)),
        ("30d", Duration::from_secs(30 * 86_400)),
        ("7d", Duration::from_secs(7 * 86_400)),
        ("500ms", Duration::from_millis(500)),
        ("0s", Duration::ZERO),
        ("1d12h", Duration::from_secs(36 * 3600)),
        (" 60s ", Duration::from_secs(60)),
    ];

    /// Everything it has refused: each must stay an error.
    const REJECTED: &[&str] = &["", "h", "10", "10x", "ten minutes", "-5m", "1.5h"];

    /// What a general-purpose parser might read but the service never did: spaces,
    /// long unit names, weeks, months (`M`, one letter from minutes), years, micro- and
    /// nanoseconds, a sign. Accepting them would make a typo mean something.
    const NEVER_ACCEPTED: &[&str] = &[
        "1h 30m", "1 h", "5min", "1sec", "2hours", "1day", "2w", "1M", "1y", "10us", "10ns", "+5m", "1H", "15M",
        "24h,", "1_000s",
    ];

    #[test]
    fn reads_every_spelling_operators_write() {
        for (text, want) in ACCEPTED {
            assert_eq!(parse_duration(text), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_read_with_a_reason() {
        for bad in REJECTED.iter().chain(NEVER_ACCEPTED) {
            let err = parse_duration(bad).expect_err(bad);
            assert!(
                err.contains("24h, 15m or 30s") || err.contains("unit"),
                "{bad:?}: {err}"
            );
        }
        assert!(parse_duration("10").unwrap_err().contains("unit"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "`10x` has an unknown unit `x` (use ms, s, m, h or d)"
        );
        assert_eq!(
            parse_duration("10").unwrap_err(),
            "`10` needs a unit (ms, s, m, h or d)"
        );
        assert!(parse_duration("1.5h").unwrap_err().contains("whole numbers"));
    }

    /// Why the alphabet check exists: humantime on its own reads these, with meanings
    /// the service never gave them. If a release stops reading them, the check stays
    /// harmless.
    #[test]
    fn humantime_alone_would_read_what_the_service_refuses() {
        assert_eq!(humantime::parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(humantime::parse_duration("15M").unwrap() > Duration::from_secs(365 * 86_400));
        assert_eq!(humantime::parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn a_number_too_large_is_an_error_not_a_wrap() {
        assert!(parse_duration("99999999999999999999999s").is_err());
    }
}
