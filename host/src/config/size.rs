//! Sizes written as text with a unit (`"64MiB"`, `"10GB"`, `"512 KiB"`) or as a number of
//! bytes (`1048576`).

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A size in bytes as the config file gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeValue(u64);

impl SizeValue {
    pub fn as_u64(&self) -> u64 {
        self.0
    }
}

/// Units by name (any letter case): decimal `KB` = 1000, binary `KiB` = 1024, and the single
/// letters as decimal (what earlier versions, which used the `bytesize` crate, accepted).
const UNITS: [(&str, u64); 17] = [
    ("", 1),
    ("b", 1),
    ("k", 1_000),
    ("kb", 1_000),
    ("kib", 1 << 10),
    ("m", 1_000_000),
    ("mb", 1_000_000),
    ("mib", 1 << 20),
    ("g", 1_000_000_000),
    ("gb", 1_000_000_000),
    ("gib", 1 << 30),
    ("t", 1_000_000_000_000),
    ("tb", 1_000_000_000_000),
    ("tib", 1 << 40),
    ("p", 1_000_000_000_000_000),
    ("pb", 1_000_000_000_000_000),
    ("pib", 1 << 50),
];

/// Parses `"<number>[ ]<unit>"`; the number may have a fraction (`"1.5GiB"`).
pub fn parse(text: &str) -> Result<u64, String> {
    let hint = || {
        format!(
            "{text:?} is not a size: write a number and a unit (B, KiB, MiB, GiB, TiB, or \
             KB, MB, GB, TB), e.g. \"64MiB\""
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    let factor = UNITS
        .iter()
        .find_map(|(name, factor)| (*name == unit).then_some(*factor))
        .ok_or_else(hint)?;
    let too_large = || format!("{text:?} is too large");
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(factor).ok_or_else(too_large);
    }
    let valid = !number.is_empty() && number.chars().filter(|&c| c == '.').count() <= 1;
    let value: f64 = number.parse().ok().filter(|_| valid).ok_or_else(hint)?;
    let bytes = (value * factor as f64).round();
    if bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<SizeValue, E> {
                Ok(SizeValue(bytes))
            }

            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<SizeValue, E> {
                u64::try_from(bytes)
                    .map(SizeValue)
                    .map_err(|_| E::custom(format!("{bytes} is negative: a size cannot be")))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<SizeValue, E> {
                parse(text).map(SizeValue).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn units_fractions_and_plain_numbers() {
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("64 mib"), Ok(64 << 20));
        assert_eq!(parse("10GB"), Ok(10_000_000_000));
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("512"), Ok(512));
        assert_eq!(parse("512B"), Ok(512));
        assert_eq!(parse("2k"), Ok(2000));
    }

    #[test]
    fn typos_negatives_and_overflows_are_refused() {
        for text in [
            "10QB",
            "-5MiB",
            "MiB",
            "",
            "1.2.3MiB",
            "ten MiB",
            "5 MiB extra",
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains("is not a size"), "{text}: {e}");
        }
        for text in ["99999999999999999999GiB", "20000PiB", "1e30"] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert!(parse("99999999999999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
