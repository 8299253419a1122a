//! Text from clients, origins and plugins made safe for one line of a log or a terminal.

use std::borrow::Cow;

/// `text` with every character that could break or disguise a log line written as a `\u{..}`
/// escape (`\n`, `\r`, `\t` as such): C0 and C1 controls, DEL, and U+2028, U+2029 and the
/// bidirectional overrides and isolates.
pub fn one_line(text: &str) -> Cow<'_, str> {
    let disguising = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !text.chars().any(disguising) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if disguising(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`one_line`], cut to at most `max_bytes` at a character boundary.
pub fn one_line_within(text: &str, max_bytes: usize) -> String {
    let mut line = one_line(text).into_owned();
    if line.len() > max_bytes {
        let mut cut = max_bytes;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{one_line, one_line_within};

    #[test]
    fn a_bounded_line_is_cut_at_a_character() {
        assert_eq!(one_line_within("ab\ncd", 4), "ab\\n");
        assert_eq!(one_line_within("ab\ncd", 3), "ab\\");
        assert_eq!(one_line_within("aé", 2), "a");
        assert_eq!(one_line_within("short", 64), "short");
    }

    #[test]
    fn a_plugin_log_message_stays_one_line() {
        assert_eq!(one_line("plain text é"), "plain text é");
        let forged = "hi\n2026-12-01T00:00:00Z  INFO cachet::access: request\r\u{1b}[31m\u{202e}x";
        let line = one_line(forged);
        assert!(!line.contains(['\n', '\r', '\u{1b}', '\u{202e}']), "{line}");
        assert!(line.starts_with("hi\\n2026"), "{line}");
    }
}
