//! The per-request access-log line. The `cachet` binary formats it here
//! instead of through `tracing_subscriber`: the subscriber's generic event path
//! (field visitors, `Debug` formatting, a timestamp formatted from scratch per
//! line) took 9% of a cache hit's CPU. The line is the one the subscriber
//! wrote, in text or JSON (`--log-format`), `CACHET_LOG` still decides whether
//! it is written (target `cachet::access`, level INFO), and it goes to the
//! background writer (`log_writer`), never to stderr from a worker. A program
//! that embeds cachet as a library gets a `tracing` event, as before, for its
//! own subscriber.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const AS_TRACING_EVENT: u8 = 0;
const AS_TEXT: u8 = 1;
const AS_JSON: u8 = 2;

static FORMAT: AtomicU8 = AtomicU8::new(AS_TRACING_EVENT);

/// Formats access lines here, as text or JSON; the binary calls this when it
/// installs its log subscriber with the same format.
pub fn format_lines_here(json: bool) {
    FORMAT.store(if json { AS_JSON } else { AS_TEXT }, Ordering::Relaxed);
}

/// What one access-log line says about a request.
pub struct AccessLine<'a> {
    pub tenant: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub cache: &'a str,
    pub reason: &'a str,
    pub error: Option<String>,
}

/// Longest path an access line holds: a line is cut at 4 KiB by the writer, and a client's
/// long path must not cut away the status, outcome and tenant written after it (or leave a
/// JSON line that does not parse).
const MAX_LOGGED_PATH: usize = 1024;

/// `path`, cut to [`MAX_LOGGED_PATH`] bytes (at a character boundary) with the cut noted.
fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= MAX_LOGGED_PATH {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut cut = MAX_LOGGED_PATH;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}...({} bytes cut)",
        &path[..cut],
        path.len() - cut
    ))
}

/// Writes the line for one request, if the log filter lets INFO lines of
/// `cachet::access` through.
pub fn write(line: &AccessLine<'_>) {
    let path = logged_path(line.path);
    let line = &AccessLine {
        path: &path,
        error: line.error.clone(),
        ..*line
    };
    let format = FORMAT.load(Ordering::Relaxed);
    if format == AS_TRACING_EVENT {
        tracing::info!(
            target: crate::log_writer::ACCESS_TARGET,
            tenant = line.tenant,
            method = %line.method,
            path = line.path,
            status = line.status,
            cache = line.cache,
            reason = line.reason,
            error = line.error.as_deref(),
            "request"
        );
        return;
    }
    if !tracing::enabled!(target: crate::log_writer::ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    let now = SystemTime::now();
    let text = if format == AS_JSON {
        json_line(now, line)
    } else {
        text_line(now, line)
    };
    crate::log_writer::queue_access_line(text.into_bytes());
}

/// `2026-11-29T09:25:07.783207Z  INFO cachet::access: request tenant="a" ...`, as
/// `tracing_subscriber`'s full text format writes it (strings in `Debug` form).
fn text_line(now: SystemTime, line: &AccessLine<'_>) -> String {
    let mut out = String::with_capacity(160 + line.path.len());
    push_timestamp(&mut out, now);
    out.push_str("  INFO cachet::access: request tenant=");
    push_debug(&mut out, line.tenant);
    out.push_str(" method=");
    out.push_str(line.method);
    out.push_str(" path=");
    push_debug(&mut out, line.path);
    out.push_str(" status=");
    push_decimal(&mut out, u32::from(line.status), 1);
    out.push_str(" cache=");
    push_debug(&mut out, line.cache);
    out.push_str(" reason=");
    push_debug(&mut out, line.reason);
    if let Some(error) = &line.error {
        out.push_str(" error=");
        push_debug(&mut out, error);
    }
    out.push('\n');
    out
}

/// `text` as `{:?}` writes it. Printable ASCII other than quotes and backslashes (nearly
/// every tenant, path and reason) stands for itself there, so it is copied without the
/// formatting machinery, which cost a hit more than the rest of its line.
fn push_debug(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// `value` in decimal, zero-padded to at least `digits` digits.
fn push_decimal(out: &mut String, value: u32, digits: usize) {
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(value);
    out.extend(std::iter::repeat_n('0', digits.saturating_sub(text.len())));
    out.push_str(text);
}

/// The JSON object `tracing_subscriber`'s JSON format writes for the event.
fn json_line(now: SystemTime, line: &AccessLine<'_>) -> String {
    let mut timestamp = String::with_capacity(27);
    push_timestamp(&mut timestamp, now);
    let mut fields = serde_json::json!({
        "message": "request",
        "tenant": line.tenant,
        "method": line.method,
        // JSON leaves line separators and bidi overrides as they are: escaped here, as the
        // text form's `Debug` escapes them, so the line reads as what was asked.
        "path": crate::one_line::one_line(line.path),
        "status": line.status,
        "cache": line.cache,
        "reason": line.reason,
    });
    if let Some(error) = &line.error {
        fields["error"] = serde_json::Value::from(error.as_str());
    }
    let object = serde_json::json!({
        "timestamp": timestamp,
        "level": "INFO",
        "fields": fields,
        "target": crate::log_writer::ACCESS_TARGET,
    });
    let mut out = object.to_string();
    out.push('\n');
    out
}

thread_local! {
    /// The date and time to the second of the last line this thread wrote:
    /// a worker formats a new one about once a second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 in UTC with microseconds: `2026-11-29T09:25:07.783207Z`.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != seconds {
            cached.1.clear();
            push_civil_second(&mut cached.1, seconds);
            cached.0 = seconds;
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    push_decimal(out, since_epoch.subsec_micros(), 6);
    out.push('Z');
}

fn push_civil_second(out: &mut String, unix_seconds: u64) {
    let datetime = time::OffsetDateTime::from_unix_timestamp(unix_seconds as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        datetime.year(),
        u8::from(datetime.month()),
        datetime.day(),
        datetime.hour(),
        datetime.minute(),
        datetime.second()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(error: Option<&str>) -> AccessLine<'static> {
        AccessLine {
            tenant: "shop",
            method: "GET",
            path: "/a \"b\"",
            status: 200,
            cache: "hit",
            reason: "",
            error: error.map(str::to_owned),
        }
    }

    const AT: Duration = Duration::new(1_795_944_307, 783_207_000);

    #[test]
    fn text_lines_read_as_the_subscriber_wrote_them() {
        let at = UNIX_EPOCH + AT;
        assert_eq!(
            text_line(at, &line(None)),
            "2026-11-29T09:25:07.783207Z  INFO cachet::access: request tenant=\"shop\" \
             method=GET path=\"/a \\\"b\\\"\" status=200 cache=\"hit\" reason=\"\"\n"
        );
        assert!(text_line(at, &line(Some("upstream refused")))
            .ends_with("reason=\"\" error=\"upstream refused\"\n"));
    }

    /// Copied as they are or formatted, strings and numbers read as `{:?}` and `{:06}` give.
    #[test]
    fn fields_are_written_as_the_formatting_machinery_writes_them() {
        for text in [
            "",
            "shop",
            "/a b~c",
            "/a\"b",
            "a\\b",
            "tab\there",
            "caf\u{e9}",
            "\u{7f}",
            "\u{202e}x",
            "new\nline",
            "\u{0}",
        ] {
            let mut out = String::new();
            push_debug(&mut out, text);
            assert_eq!(out, format!("{text:?}"));
        }
        for (value, digits) in [
            (0, 1),
            (7, 1),
            (200, 1),
            (65_535, 1),
            (0, 6),
            (42, 6),
            (999_999, 6),
        ] {
            let mut out = String::new();
            push_decimal(&mut out, value, digits);
            assert_eq!(out, format!("{value:0digits$}"));
        }
    }

    #[test]
    fn json_lines_are_one_object_with_the_fields() {
        let text = json_line(UNIX_EPOCH + AT, &line(Some("boom")));
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["timestamp"], "2026-11-29T09:25:07.783207Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], "cachet::access");
        assert_eq!(value["fields"]["message"], "request");
        assert_eq!(value["fields"]["path"], "/a \"b\"");
        assert_eq!(value["fields"]["status"], 200);
        assert_eq!(value["fields"]["error"], "boom");
        let disguised = AccessLine {
            path: "/a\u{202e}b\u{2028}c",
            ..line(None)
        };
        let text = json_line(UNIX_EPOCH + AT, &disguised);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let path = value["fields"]["path"].as_str().expect("a path");
        assert!(!path.contains(['\u{202e}', '\u{2028}']), "{path:?}");
        assert!(path.starts_with("/a") && path.ends_with('c'), "{path:?}");
    }

    #[test]
    fn timestamps_follow_the_calendar() {
        let mut out = String::new();
        push_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, "2000-02-29T00:00:00.000000Z");
    }
}

#[cfg(test)]
mod path_tests {
    use super::logged_path;

    #[test]
    fn a_long_path_is_cut_before_the_line_is_written() {
        assert_eq!(logged_path("/a"), "/a");
        let long = format!("/{}", "é".repeat(2000));
        let logged = logged_path(&long);
        assert!(logged.len() < 1100, "{}", logged.len());
        assert!(logged.ends_with("bytes cut)"), "{logged}");
    }
}
