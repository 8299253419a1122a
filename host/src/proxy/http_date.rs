//! HTTP dates as recipients must accept them (RFC 9110 §5.6.7): IMF-fixdate, the obsolete
//! RFC 850 and asctime forms, and weekday, month and zone names in any letter case.

use std::time::SystemTime;

/// The time a date field states, or None when it is not a date.
pub fn parse(value: &http::HeaderValue) -> Option<SystemTime> {
    let text = value.to_str().ok()?.trim();
    text.parse::<httpdate::HttpDate>()
        .or_else(|_| canonical_case(text).parse::<httpdate::HttpDate>())
        .ok()
        .map(Into::into)
}

/// `sunday, 06-NOV-94 08:49:37 gmt` → `Sunday, 06-Nov-94 08:49:37 GMT`: every word capitalised,
/// the zone upper-case, which is the only spelling the date parser knows.
fn canonical_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.eq_ignore_ascii_case("gmt") {
            out.push_str("GMT");
        } else {
            for (i, c) in word.chars().enumerate() {
                out.push(if i == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                });
            }
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 1994-11-06 08:49:37 UTC, RFC 9110's example.
    fn example() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn date(text: &str) -> Option<SystemTime> {
        parse(&http::HeaderValue::from_str(text).expect("value"))
    }

    #[test]
    fn every_format_and_case_is_accepted() {
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "SUNDAY, 06-NOV-94 08:49:37 Gmt",
            "sun NOV  6 08:49:37 1994",
            "  Sun, 06 Nov 1994 08:49:37 GMT ",
        ] {
            assert_eq!(date(text), Some(example()), "{text:?}");
        }
    }

    #[test]
    fn non_dates_are_refused() {
        for text in [
            "0",
            "-1",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(date(text), None, "{text:?}");
        }
    }
}
