//! Cache directives: a forgiving `Cache-Control` parser (RFC 9111 §5.2), a strict one for the
//! targeted fields (RFC 9213), and the choice of which field a response's directives come
//! from. The host uses this same code, so a plugin and cachet always read a response alike.

use crate::structured::{self, Value};
use std::time::Duration;

/// RFC 9111 §1.2.2: delta-seconds too large to represent count as 2^31.
const DELTA_SECONDS_CAP: u64 = 1 << 31;

/// The directives of one or more `Cache-Control` header lines.
///
/// Directive names compare case-insensitively. When a directive repeats, the
/// first occurrence wins (RFC 9111 §4.2.1). Junk is skipped rather than
/// rejected: empty elements, unterminated quotes and unknown directives never
/// hide the well-formed directives around them. A `;` outside quotes separates
/// like a comma (`private; max-age=0` is `private`), and an unterminated quoted
/// string is read again as if it had no quotes, so `x="a, private` is `private`
/// too: a malformed field never loses a directive that forbids storing.
///
/// ```
/// use std::time::Duration;
/// let cc = cachet_sdk::CacheControl::parse(r#"public, max-age="60", , no-cache="set-cookie""#);
/// assert!(cc.public() && cc.no_cache());
/// assert_eq!(cc.max_age(), Some(Duration::from_secs(60)));
/// assert_eq!(cc.value("no-cache"), Some("set-cookie"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    directives: Vec<Directive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    /// Lower-cased.
    name: String,
    /// Unquoted argument, if the directive had one.
    argument: Option<String>,
}

impl CacheControl {
    /// Parses one header value.
    pub fn parse(value: &str) -> Self {
        Self::parse_all([value])
    }

    /// Parses several header lines as one list, as if joined by commas.
    pub fn parse_all<I>(values: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let directives = values
            .into_iter()
            .flat_map(|value| split_list(value.as_ref()))
            .filter_map(|element| parse_directive(&element))
            .collect();
        Self { directives }
    }

    /// Parses a targeted field (`CDN-Cache-Control`, `Cachet-Cache-Control`): a Structured
    /// Field dictionary whose known directives have the right types (RFC 9213 §2.1). `None`
    /// when the field is not valid, so the next field in precedence applies (the directives
    /// of an invalid field that forbid storing still apply there:
    /// [`crate::ResponseDirectives::select`]). A repeated directive takes its last value, as
    /// dictionaries do; `?0` means the directive is off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachet_sdk::CacheControl;
    /// let cc = CacheControl::parse_targeted(["max-age=60, no-cache=\"set-cookie\""]).unwrap();
    /// assert_eq!(cc.max_age(), Some(Duration::from_secs(60)));
    /// assert_eq!(CacheControl::parse_targeted(["max-age=\"60\""]), None);
    /// ```
    pub fn parse_targeted<I>(values: I) -> Option<Self>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut directives = Vec::new();
        for (name, value) in structured::parse_dictionary(values)? {
            let argument = match (expected_type(&name), value) {
                (_, Value::Boolean(false)) => continue,
                (Expected::Seconds, Value::Integer(n)) if n >= 0 => Some(n.to_string()),
                (Expected::Flag | Expected::FlagOrFields | Expected::Any, Value::Boolean(true)) => {
                    None
                }
                (Expected::FlagOrFields | Expected::Any, Value::String(s)) => Some(s),
                (Expected::Any, Value::Integer(n)) => Some(n.to_string()),
                (Expected::Any, Value::Other(text)) => Some(text),
                _ => return None,
            };
            directives.push(Directive { name, argument });
        }
        Some(Self { directives })
    }

    /// The directives that forbid storing, or reusing without revalidation (`no-store`,
    /// `no-cache`, `private`, `must-revalidate`, `proxy-revalidate`), read forgivingly from
    /// any text: what a field that is otherwise invalid still says.
    pub(crate) fn restrictions_in<I>(values: I) -> Vec<(String, Option<String>)>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::parse_all(values)
            .directives
            .into_iter()
            .filter(|d| restricts(&d.name))
            .map(|d| (d.name, d.argument))
            .collect()
    }

    /// Adds a directive unless one of its name is there already.
    pub(crate) fn add_if_absent(&mut self, name: String, argument: Option<String>) {
        if !self.has(&name) {
            self.directives.push(Directive { name, argument });
        }
    }

    /// Whether the directive is present (with or without an argument).
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The directive's argument, unquoted; `None` if absent or argument-less.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.find(name)?.argument.as_deref()
    }

    /// The directive's argument as delta-seconds; `None` if absent or not a
    /// plain non-negative integer.
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        parse_delta_seconds(self.value(name)?).map(Duration::from_secs)
    }

    /// Every directive in order, names lower-cased.
    pub fn directives(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.directives
            .iter()
            .map(|d| (d.name.as_str(), d.argument.as_deref()))
    }

    /// `no-store`: the response must not be stored at all.
    pub fn no_store(&self) -> bool {
        self.has("no-store")
    }

    /// True with or without a field-name list (`no-cache="set-cookie"`).
    pub fn no_cache(&self) -> bool {
        self.has("no-cache")
    }

    /// True with or without a field-name list (`private="set-cookie"`).
    pub fn private(&self) -> bool {
        self.has("private")
    }

    /// `public`: shared caches may store it even where they otherwise would not.
    pub fn public(&self) -> bool {
        self.has("public")
    }

    /// `must-revalidate`: once stale, never served without revalidation.
    pub fn must_revalidate(&self) -> bool {
        self.has("must-revalidate")
    }

    /// `proxy-revalidate`: `must-revalidate` for shared caches only.
    pub fn proxy_revalidate(&self) -> bool {
        self.has("proxy-revalidate")
    }

    /// `no-transform`: intermediaries must not alter the content.
    pub fn no_transform(&self) -> bool {
        self.has("no-transform")
    }

    /// `immutable` (RFC 8246): the body will not change while fresh.
    pub fn immutable(&self) -> bool {
        self.has("immutable")
    }

    /// `max-age`: freshness lifetime for any cache. A malformed one (`max-age=abc`,
    /// `max-age`) is zero, as the proxy reads it: stale at once, never absent.
    pub fn max_age(&self) -> Option<Duration> {
        self.lifetime("max-age")
    }

    /// `s-maxage`: freshness lifetime for shared caches, overriding `max-age`; a
    /// malformed one is zero, like [`CacheControl::max_age`].
    pub fn s_maxage(&self) -> Option<Duration> {
        self.lifetime("s-maxage")
    }

    /// A freshness lifetime: a present directive whose argument is not delta-seconds must
    /// not leave a policy free to apply its own default TTL where the origin meant "stale".
    fn lifetime(&self, name: &str) -> Option<Duration> {
        self.has(name)
            .then(|| self.seconds(name).unwrap_or(Duration::ZERO))
    }

    /// `stale-while-revalidate` (RFC 5861).
    pub fn stale_while_revalidate(&self) -> Option<Duration> {
        self.seconds("stale-while-revalidate")
    }

    /// `stale-if-error` (RFC 5861).
    pub fn stale_if_error(&self) -> Option<Duration> {
        self.seconds("stale-if-error")
    }

    fn find(&self, name: &str) -> Option<&Directive> {
        self.directives
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }
}

/// The value type RFC 9213 §2.1 gives a directive in a targeted field.
enum Expected {
    Seconds,
    Flag,
    /// `no-cache` and `private`: on, or a string listing field names.
    FlagOrFields,
    /// Extension directives: any type.
    Any,
}

fn expected_type(name: &str) -> Expected {
    match name {
        "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error" => Expected::Seconds,
        "no-store" | "public" | "must-revalidate" | "proxy-revalidate" | "no-transform"
        | "immutable" | "must-understand" => Expected::Flag,
        "no-cache" | "private" => Expected::FlagOrFields,
        _ => Expected::Any,
    }
}

/// Directives that forbid storing, or reusing without revalidation.
pub(crate) fn restricts(name: &str) -> bool {
    matches!(
        name,
        "no-store" | "no-cache" | "private" | "must-revalidate" | "proxy-revalidate"
    )
}

/// Splits on commas (and stray semicolons) outside quoted strings, so `no-cache="a, b"`
/// stays whole. An element whose quote never closes is split again ignoring quotes.
fn split_list(value: &str) -> Vec<String> {
    let mut elements = Vec::new();
    let mut current = String::new();
    let mut current_start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    // The element so far ends in `=` (and spaces): where an argument, quoted or not, begins.
    let mut argument_begins = false;
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' if in_quotes => in_quotes = false,
            // A quoted string opens only an argument (`name="..."`, RFC 9111 §5.2): a quote
            // inside a token is one of its characters, or `x=a"b, no-store, y=c"` read as
            // two directives and hid the `no-store` between them.
            '"' if argument_begins => in_quotes = true,
            ',' | ';' if !in_quotes => {
                elements.push(std::mem::take(&mut current));
                current_start = at + 1;
                argument_begins = false;
                continue;
            }
            _ => {}
        }
        current.push(c);
        argument_begins = !in_quotes && (c == '=' || (argument_begins && matches!(c, ' ' | '\t')));
    }
    if in_quotes {
        elements.extend(value[current_start..].split([',', ';']).map(str::to_owned));
    } else {
        elements.push(current);
    }
    elements
}

fn parse_directive(element: &str) -> Option<Directive> {
    let (name, argument) = match element.split_once('=') {
        Some((name, argument)) => (name, Some(unquote(argument.trim()))),
        None => (element, None),
    };
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    Some(Directive {
        name: name.to_ascii_lowercase(),
        argument,
    })
}

/// Strips a surrounding quoted-string and its backslash escapes; a missing
/// closing quote is tolerated.
fn unquote(argument: &str) -> String {
    let Some(quoted) = argument.strip_prefix('"') else {
        return argument.to_owned();
    };
    let mut unquoted = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => unquoted.extend(chars.next()),
            _ => unquoted.push(c),
        }
    }
    unquoted
}

pub(crate) fn parse_delta_seconds(argument: &str) -> Option<u64> {
    if argument.is_empty() || !argument.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits, so a parse failure can only be overflow.
    Some(
        argument
            .parse::<u64>()
            .map_or(DELTA_SECONDS_CAP, |s| s.min(DELTA_SECONDS_CAP)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_response_directives() {
        let cc = CacheControl::parse("public, max-age=300, s-maxage=600, must-revalidate");
        assert!(cc.public() && cc.must_revalidate());
        assert!(!cc.private() && !cc.no_store() && !cc.no_cache());
        assert_eq!(cc.max_age(), Some(Duration::from_secs(300)));
        assert_eq!(cc.s_maxage(), Some(Duration::from_secs(600)));
    }

    #[test]
    fn names_are_case_insensitive_and_whitespace_tolerated() {
        let cc = CacheControl::parse("  No-Store ,PRIVATE,\tMax-Age = 5 ");
        assert!(cc.no_store() && cc.private());
        assert_eq!(cc.max_age(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn first_occurrence_wins() {
        let cc = CacheControl::parse_all(["max-age=10", "max-age=20"]);
        assert_eq!(cc.max_age(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn quoted_arguments_keep_commas_and_escapes() {
        let cc = CacheControl::parse(r#"private="set-cookie, x-a", x-ext="a\"b", max-age=1"#);
        assert_eq!(cc.value("private"), Some("set-cookie, x-a"));
        assert_eq!(cc.value("x-ext"), Some("a\"b"));
        assert_eq!(cc.max_age(), Some(Duration::from_secs(1)));
    }

    /// A quote inside a token opens no quoted string: the directive after it is still read.
    #[test]
    fn a_quote_inside_a_token_hides_no_directive() {
        let cc = CacheControl::parse(r#"max-age=3600, x=a"b, no-store, y=c""#);
        assert!(cc.no_store());
        assert_eq!(cc.value("x"), Some("a\"b"));
        assert_eq!(cc.max_age(), Some(Duration::from_secs(3600)));
        let spaced = CacheControl::parse(r#"private = "set-cookie, x", max-age=1"#);
        assert_eq!(spaced.value("private"), Some("set-cookie, x"));
        assert_eq!(spaced.max_age(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn junk_is_skipped() {
        let cc = CacheControl::parse(",,=5, max-age=abc, s-maxage=-1, stale-if-error=, no-store");
        assert!(cc.no_store());
        assert!(cc.has("max-age"));
        assert_eq!(cc.seconds("max-age"), None);
        // Present but malformed lifetimes are stale at once, as the proxy reads them.
        assert_eq!(cc.max_age(), Some(Duration::ZERO));
        assert_eq!(cc.s_maxage(), Some(Duration::ZERO));
        assert_eq!(cc.stale_if_error(), None);
        assert_eq!(CacheControl::parse("public").max_age(), None);
        assert_eq!(cc.directives().count(), 4);
    }

    #[test]
    fn an_unterminated_quote_hides_nothing_after_it() {
        let cc = CacheControl::parse(r#"max-age=300, x="a, private"#);
        assert!(cc.private());
        assert_eq!(cc.value("x"), Some("a"));
        let cc = CacheControl::parse(r#"no-cache, x="open, max-age=5"#);
        assert!(cc.no_cache());
        assert_eq!(cc.max_age(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_stray_semicolon_separates_like_a_comma() {
        let cc = CacheControl::parse("private; max-age=0");
        assert!(cc.private());
        assert_eq!(cc.max_age(), Some(Duration::ZERO));
        let cc = CacheControl::parse("no-store; no-cache, x=\"a;b\"");
        assert!(cc.no_store() && cc.no_cache());
        assert_eq!(cc.value("x"), Some("a;b"));
    }

    #[test]
    fn huge_delta_seconds_are_capped() {
        let cc = CacheControl::parse("max-age=99999999999999999999999, s-maxage=4294967296");
        assert_eq!(cc.max_age(), Some(Duration::from_secs(DELTA_SECONDS_CAP)));
        assert_eq!(cc.s_maxage(), Some(Duration::from_secs(DELTA_SECONDS_CAP)));
    }

    #[test]
    fn extension_directives_and_empty_input() {
        let cc = CacheControl::parse("stale-while-revalidate=30, immutable, community=\"UCI\"");
        assert_eq!(cc.stale_while_revalidate(), Some(Duration::from_secs(30)));
        assert!(cc.immutable());
        assert_eq!(cc.value("community"), Some("UCI"));
        assert_eq!(CacheControl::parse(""), CacheControl::default());
    }
}
