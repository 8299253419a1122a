//! Times written as text with a unit: `"10s"`, `"500ms"`, `"1.5s"`, `"2m"`, `"1h"`.

use serde::Deserialize;
use std::time::Duration;

/// A time as written in the file: text with a unit, or a bare number (which
/// is refused with a hint, since a number alone says nothing about its unit).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum DurationValue {
    Text(String),
    Number(i64),
}

impl DurationValue {
    pub(super) fn to_duration(&self) -> Result<Duration, String> {
        match self {
            Self::Text(text) => parse(text),
            Self::Number(n) => Err(format!(
                "{n} has no unit: write it as a string, e.g. \"{n}ms\" or \"{n}s\""
            )),
        }
    }
}

/// Units by their suffix and length in nanoseconds, two-letter units first
/// so "ms" is not read as "s".
const UNITS: [(&str, f64); 5] = [
    ("ms", 1e6),
    ("us", 1e3),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
];

/// Longest time accepted (a week): guards against typos that would
/// overflow or park something forever.
const MAX_NANOS: f64 = 7.0 * 24.0 * 3600e9;

/// Parses `"<number><unit>"`; the number may have a fraction (`"1.5s"`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let hint = || {
        format!("{text:?} is not a duration: write a number and a unit (us, ms, s, m, h), e.g. \"10s\" or \"500ms\"")
    };
    let (number, scale) = UNITS
        .iter()
        .find_map(|(unit, scale)| Some((trimmed.strip_suffix(unit)?, *scale)))
        .ok_or_else(hint)?;
    let number = number.trim_end();
    let valid = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|&c| c == '.').count() <= 1;
    if !valid {
        return Err(hint());
    }
    let value: f64 = number.parse().map_err(|_| hint())?;
    let nanos = (value * scale).round();
    if nanos > MAX_NANOS {
        return Err(format!("{text:?} is longer than the maximum of 7 days"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn units_and_fractions() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse(" 3 s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "", "10", "s", "ten s", "-1s", "1.2.3s", "1e3s", "10 sec", "9999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
