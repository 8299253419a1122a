//! HTTP dates as recipients must accept them (RFC 9110 §5.6.7): IMF-fixdate, the obsolete
//! RFC 850 and asctime forms, and weekday, month and zone names in any letter case.

use std::time::{Duration, SystemTime};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The time a date field states, or None when it is not a date.
pub fn parse(value: &http::HeaderValue) -> Option<SystemTime> {
    let text = canonical_case(value.to_str().ok()?.trim());
    rfc850(&text, SystemTime::now())
        .or_else(|| text.parse::<httpdate::HttpDate>().ok().map(Into::into))
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`. Read here because of its two-digit year: one that would
/// be more than 50 years ahead of `now` means the most recent past year with those digits
/// (RFC 9110 §5.6.7), where the httpdate crate always puts 70–99 in the 1900s.
fn rfc850(text: &str, now: SystemTime) -> Option<SystemTime> {
    let (weekday, rest) = text.split_once(", ")?;
    if !WEEKDAYS.contains(&weekday) {
        return None;
    }
    let (date, time) = rest.strip_suffix(" GMT")?.split_once(' ')?;
    let mut date = date.split('-');
    let day = two_digits(date.next()?)?;
    let month_name = date.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as i64 + 1;
    let yy = two_digits(date.next()?)?;
    let mut time = time.split(':');
    let mut clock = [0i64; 3];
    for part in &mut clock {
        *part = two_digits(time.next()?)?;
    }
    if date.next().is_some() || time.next().is_some() {
        return None;
    }
    let [hour, minute, second] = clock;
    let this_year: i64 = httpdate::fmt_http_date(now).get(12..16)?.parse().ok()?;
    let mut year = this_year - this_year % 100 + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    if day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = u64::try_from(days_since_epoch(year, month, day)).ok()?;
    let seconds = days * 86_400 + (hour * 3600 + minute * 60 + second) as u64;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

fn two_digits(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    (bytes.len() == 2 && bytes.iter().all(u8::is_ascii_digit))
        .then(|| i64::from(bytes[0] - b'0') * 10 + i64::from(bytes[1] - b'0'))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian calendar).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let whole_years: i64 = (1970..year)
        .map(|y| if is_leap(y) { 366 } else { 365 })
        .sum();
    let whole_months: i64 = (1..month).map(|m| days_in_month(year, m)).sum();
    whole_years + whole_months + day - 1
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
    fn a_two_digit_year_is_never_more_than_50_years_ahead() {
        // Now: 2026-11-29.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_910_400);
        let year =
            |text: &str| rfc850(text, now).map(|t| httpdate::fmt_http_date(t)[12..16].to_owned());
        assert_eq!(
            year("Sunday, 06-Nov-94 08:49:37 GMT").as_deref(),
            Some("1994")
        );
        assert_eq!(
            year("Friday, 06-Nov-26 08:49:37 GMT").as_deref(),
            Some("2026")
        );
        assert_eq!(
            year("Wednesday, 06-Nov-75 08:49:37 GMT").as_deref(),
            Some("2075")
        );
        assert_eq!(
            year("Sunday, 06-Nov-77 08:49:37 GMT").as_deref(),
            Some("1977")
        );
        let leap = rfc850("Thursday, 29-Feb-24 00:00:00 GMT", now).expect("leap day");
        assert_eq!(
            httpdate::fmt_http_date(leap),
            "Thu, 29 Feb 2024 00:00:00 GMT"
        );
        for bad in [
            "Friday, 29-Feb-25 00:00:00 GMT",
            "Friday, 31-Apr-25 00:00:00 GMT",
            "Fri, 06-Nov-25 08:49:37 GMT",
            "Friday, 06-Nov-25 24:00:00 GMT",
            "Friday, 6-Nov-25 08:49:37 GMT",
            "Friday, 06-Nov-25-1 08:49:37 GMT",
            "Friday, 06-Nov-25 08:49:37:00 GMT",
        ] {
            assert_eq!(rfc850(bad, now), None, "{bad:?}");
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
