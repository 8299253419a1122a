//! Cookie lookup over `Cookie` header lines (RFC 6265 §5.4 layout).

use std::collections::HashSet;

/// Value of the first cookie named exactly `name`, across all header lines.
/// Pairs are split on `;`, surrounding whitespace is trimmed, and a value in
/// double quotes is returned without them. Malformed pairs are skipped.
pub(crate) fn find(header_lines: &[String], name: &str) -> Option<String> {
    header_lines
        .iter()
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(pair_name, _)| pair_name.trim() == name)
        .map(|(_, value)| unquote(value.trim()).to_owned())
}

/// The cookies of every line whose name `keep` accepts, as one `Cookie` value, and
/// whether it differs from the header as sent. Each is spelled `name=value` exactly as
/// [`find`] reads it (spaces around `=` gone, quotes stripped), so an origin that parses
/// strictly reads the value a key was made of. Malformed pairs are dropped, and so is
/// every pair after the first of its name: [`find`] reads the first, while an origin may
/// read the last. A pair whose value [`find`] would read differently once written (`" fr"`
/// reads `fr` but is written ` fr`; `""fr""` reads `"fr"`, written, `fr`) is dropped too:
/// the key would be made of one value and the origin sent another.
pub(crate) fn retain(header_lines: &[String], keep: impl Fn(&str) -> bool) -> (String, bool) {
    let mut kept: Vec<(&str, &str)> = Vec::new();
    // Looked up, not searched: a client's megabyte of distinct names made this quadratic,
    // and the hook overran its deadline on every such request.
    let mut kept_names: HashSet<&str> = HashSet::new();
    for pair in header_lines.iter().flat_map(|line| line.split(';')) {
        if let Some((name, value)) = pair.split_once('=') {
            let name = name.trim();
            if keep(name) && !kept_names.contains(name) {
                let value = unquote(value.trim());
                if unquote(value.trim()) == value {
                    kept_names.insert(name);
                    kept.push((name, value));
                }
            }
        }
    }
    let mut header = String::new();
    for (name, value) in kept {
        if !header.is_empty() {
            header.push_str("; ");
        }
        header.push_str(name);
        header.push('=');
        header.push_str(value);
    }
    let changed = !matches!(header_lines, [only] if *only == header);
    (header, changed)
}

/// Whether any cookie parser in common use could read a cookie called `name` from these
/// lines: names compared without regard to ASCII case and after percent-decoding, pairs
/// separated by `;`, `,` or whitespace, a lone name counted as a cookie. [`find`] reads
/// cookies as RFC 6265 lays them out; origins are more lenient (ASP.NET ignores case,
/// Python's `SimpleCookie` splits on spaces, older Rack on commas and decodes names), so a
/// request that must not be shared when it carries a cookie is tested with this.
pub(crate) fn may_carry(header_lines: &[String], name: &str) -> bool {
    let separators = |c: char| matches!(c, ';' | ',') || c.is_whitespace();
    header_lines
        .iter()
        .flat_map(|line| line.split(separators))
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .map(|pair_name| pair_name.trim_matches(|c: char| c == '"' || c.is_whitespace()))
        .any(|pair_name| crate::percent::decoded(pair_name).eq_ignore_ascii_case(name.as_bytes()))
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's megabyte of distinct cookie names is filtered in time a hook has: the
    /// names kept were searched one by one for each pair, minutes of work on such a header.
    #[test]
    fn retaining_many_distinct_cookies_takes_linear_time() {
        let line: String = (0..100_000).map(|i| format!("a{i}=;")).collect();
        let started = std::time::Instant::now();
        let (kept, changed) = retain(&[line], |_| true);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(changed);
        assert!(kept.starts_with("a0=; a1=; a2="), "{}", &kept[..20]);
        assert_eq!(kept.matches("; ").count(), 99_999);
    }

    #[test]
    fn may_carry_sees_the_spellings_lenient_origins_read() {
        for line in [
            "session=alice",
            "Session=alice",
            "theme=dark session=alice",
            "theme=dark, session=alice",
            "%73ession=alice",
            "%53ESSION=alice",
            "x=\"a; session=alice\"",
            "session",
            "\tsession\t=alice",
        ] {
            assert!(may_carry(&lines(&[line]), "session"), "{line}");
        }
        for line in ["sessions=1", "xsession=1", "theme=session", "lang=fr"] {
            assert!(!may_carry(&lines(&[line]), "session"), "{line}");
        }
        assert!(!may_carry(&[], "session"));
    }

    #[test]
    fn retain_keeps_accepted_names_across_lines() {
        let header = lines(&["_ga=1; session=abc", " _gid=2 ;lang=en; junk"]);
        let (kept, dropped) = retain(&header, |name| !name.starts_with('_'));
        assert_eq!(kept, "session=abc; lang=en");
        assert!(dropped);
        let (again, dropped) = retain(&lines(&[&kept]), |name| !name.starts_with('_'));
        assert_eq!(again, kept);
        assert!(!dropped, "idempotent");
    }

    #[test]
    fn retain_writes_only_values_find_reads_back_the_same() {
        for odd in [r#"lang=" fr""#, r#"lang=""fr"""#, r#"lang="fr ""#] {
            let header = lines(&[&format!("{odd}; theme=dark")]);
            let (kept, changed) = retain(&header, |_| true);
            assert_eq!(kept, "theme=dark", "{odd}");
            assert!(changed);
        }
        // Whatever is kept reads back as written: the key and the origin see one value.
        let header = lines(&[r#"lang=" fr"; lang=de; a="x""#]);
        let (kept, _) = retain(&header, |_| true);
        assert_eq!(kept, "lang=de; a=x");
        let written = lines(&[&kept]);
        assert_eq!(find(&written, "lang").as_deref(), Some("de"));
        assert_eq!(retain(&written, |_| true), (kept.clone(), false));
    }

    #[test]
    fn retain_keeps_only_the_first_pair_of_a_name() {
        let header = lines(&["lang=fr; _ga=1; lang=de", "lang=en"]);
        let (kept, dropped) = retain(&header, |name| name == "lang");
        assert_eq!(kept, "lang=fr");
        assert!(dropped);
        assert_eq!(find(&lines(&[&kept]), "lang"), find(&header, "lang"));
    }

    #[test]
    fn retain_spells_each_pair_as_find_reads_it() {
        let header = lines(&["lang = fr; theme=\"dark\""]);
        let (kept, changed) = retain(&header, |_| true);
        assert_eq!(kept, "lang=fr; theme=dark");
        assert!(changed);
        for name in ["lang", "theme"] {
            assert_eq!(find(&lines(&[&kept]), name), find(&header, name));
        }
        // Two lines (HTTP/2 crumbs) are one header once rebuilt.
        let (kept, changed) = retain(&lines(&["lang=fr", "theme=dark"]), |_| true);
        assert_eq!(kept, "lang=fr; theme=dark");
        assert!(changed);
    }

    fn lines(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn finds_by_exact_name() {
        let cookies = lines(&["theme=dark; session=abc123;lang=en"]);
        assert_eq!(find(&cookies, "session").as_deref(), Some("abc123"));
        assert_eq!(find(&cookies, "lang").as_deref(), Some("en"));
        assert_eq!(find(&cookies, "sess"), None);
        assert_eq!(find(&cookies, "SESSION"), None);
    }

    #[test]
    fn first_match_across_lines_wins() {
        let cookies = lines(&["a=1", "session=first", "session=second"]);
        assert_eq!(find(&cookies, "session").as_deref(), Some("first"));
    }

    #[test]
    fn tolerates_junk_quotes_and_empty_values() {
        let cookies = lines(&[";; junk ; =x; q=\"quoted\"; e=; v=a=b"]);
        assert_eq!(find(&cookies, "q").as_deref(), Some("quoted"));
        assert_eq!(find(&cookies, "e").as_deref(), Some(""));
        assert_eq!(find(&cookies, "v").as_deref(), Some("a=b"));
        assert_eq!(find(&cookies, "junk"), None);
        assert_eq!(find(&[], "a"), None);
    }
}
