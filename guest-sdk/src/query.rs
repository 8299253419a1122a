//! Query-string handling that never decodes or re-encodes: parameters keep
//! their exact bytes, so rejoining yields what the origin would have seen.

use std::fmt;

/// A query string split on `&` into parameters.
///
/// Empty pairs (`a=1&&b=2`) are dropped; nothing else is changed. Names are
/// compared byte-for-byte as sent, so `utm%5Fsource` is not `utm_source`.
///
/// ```
/// let mut query = cachet_sdk::Query::parse("utm_source=x&b=2&a=1");
/// query.retain(|param| !param.name().starts_with("utm_"));
/// query.sort_by_name();
/// assert_eq!(query.to_string(), "a=1&b=2");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    params: Vec<QueryParam>,
}

/// One `name=value` (or bare `name`) pair, exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    name: String,
    value: Option<String>,
}

impl QueryParam {
    /// Splits a pair at its first `=`.
    pub fn parse(pair: &str) -> Self {
        match pair.split_once('=') {
            Some((name, value)) => Self {
                name: name.to_owned(),
                value: Some(value.to_owned()),
            },
            None => Self {
                name: pair.to_owned(),
                value: None,
            },
        }
    }

    /// The name, still percent-encoded.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `None` for a bare `name`, `Some("")` for `name=`.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl fmt::Display for QueryParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(value) = &self.value {
            write!(f, "={value}")?;
        }
        Ok(())
    }
}

impl Query {
    /// Splits a raw query string (without the leading `?`).
    pub fn parse(raw: &str) -> Self {
        raw.split('&')
            .filter(|pair| !pair.is_empty())
            .map(QueryParam::parse)
            .collect()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// The parameters in order.
    pub fn iter(&self) -> std::slice::Iter<'_, QueryParam> {
        self.params.iter()
    }

    /// Value of the first parameter called `name`; `Some("")` for a bare name.
    pub fn get(&self, name: &str) -> Option<&str> {
        let param = self.params.iter().find(|p| p.name == name)?;
        Some(param.value().unwrap_or(""))
    }

    /// Whether any parameter is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.name == name)
    }

    /// Keeps only the parameters for which `keep` returns true.
    pub fn retain(&mut self, keep: impl FnMut(&QueryParam) -> bool) {
        self.params.retain(keep);
    }

    /// Removes every parameter called `name`.
    pub fn remove(&mut self, name: &str) {
        self.retain(|p| p.name != name);
    }

    /// Sorts by name, byte-wise, on the name as the most lenient origin reads it:
    /// percent-decoded, `+` as a space, cut at a NUL, leading spaces skipped, any ASCII
    /// case, spaces and `.` as `_`, cut at a `[` that is closed later (PHP's `x[]`) and an
    /// unclosed `[` as `_`. The sort is stable, so parameters some framework takes for the
    /// same one keep their relative order: `a=1&%61=2`, `id=1&ID=2`, `a.b=1&a_b=2` and
    /// `x[]=1&x[1]=2` can each mean something else reordered (the first or the last wins,
    /// or the array changes).
    ///
    /// A query with a `;` anywhere is left as it is: some frameworks split on `;` as well
    /// as `&`, so one pair may hold several parameters and no reordering is safe.
    pub fn sort_by_name(&mut self) {
        let semicolon = |text: &str| text.contains(';');
        let has_semicolon = self
            .params
            .iter()
            .any(|p| semicolon(&p.name) || p.value.as_deref().is_some_and(semicolon));
        if has_semicolon {
            return;
        }
        self.params
            .sort_by_cached_key(|param| lenient_name(&param.name));
    }
}

/// A parameter name as the most lenient of common origins reads it (see
/// [`Query::sort_by_name`]).
fn lenient_name(name: &str) -> Vec<u8> {
    let decoded: Vec<u8> = crate::percent::decoded(&name.replace('+', " "));
    // A name read as a C string (PHP) ends at its first NUL; PHP skips leading spaces.
    let name = decoded.split(|byte| *byte == 0).next().unwrap_or_default();
    let name = &name[name.iter().take_while(|byte| **byte == b' ').count()..];
    // A `[` with a `]` after it opens an array index; found once, not searched for at every
    // `[` (a name of 50,000 `[` took the hook past its deadline).
    let last_close = name.iter().rposition(|byte| *byte == b']');
    let mut lenient = Vec::with_capacity(name.len());
    for (i, byte) in name.iter().enumerate() {
        match byte.to_ascii_lowercase() {
            b'[' if last_close.is_some_and(|close| close > i) => break,
            b'[' | b'.' | b' ' => lenient.push(b'_'),
            other => lenient.push(other),
        }
    }
    lenient
}

/// Rejoins the parameters with `&`.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, param) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            write!(f, "{param}")?;
        }
        Ok(())
    }
}

impl FromIterator<QueryParam> for Query {
    fn from_iter<I: IntoIterator<Item = QueryParam>>(iter: I) -> Self {
        Self {
            params: iter.into_iter().collect(),
        }
    }
}

impl<'a> IntoIterator for &'a Query {
    type Item = &'a QueryParam;
    type IntoIter = std::slice::Iter<'a, QueryParam>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Query {
    type Item = QueryParam;
    type IntoIter = std::vec::IntoIter<QueryParam>;

    fn into_iter(self) -> Self::IntoIter {
        self.params.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name of 50,000 `[` with no `]` is read in time a hook has: each `[` searched the rest
    /// of the name for a `]`. A `[` before a `]` still opens an array index.
    #[test]
    fn lenient_names_are_read_in_linear_time() {
        let name = "[".repeat(50_000);
        let started = std::time::Instant::now();
        assert_eq!(lenient_name(&name), vec![b'_'; 50_000]);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(lenient_name("a[b]"), b"a");
        assert_eq!(lenient_name("a]b[c"), b"a]b_c");
    }

    #[test]
    fn round_trips_bytes_exactly() {
        let raw = "q=caf%C3%A9+au+lait&flag&empty=&eq=a=b&%E2%9C%93=1";
        assert_eq!(Query::parse(raw).to_string(), raw);
    }

    #[test]
    fn bare_and_empty_values_differ() {
        let query = Query::parse("flag&empty=");
        let params: Vec<_> = query.iter().map(|p| (p.name(), p.value())).collect();
        assert_eq!(params, [("flag", None), ("empty", Some(""))]);
        assert_eq!(query.get("flag"), Some(""));
        assert_eq!(query.get("missing"), None);
    }

    #[test]
    fn empty_pairs_are_dropped() {
        assert_eq!(Query::parse("&a=1&&b=2&").to_string(), "a=1&b=2");
        assert!(Query::parse("").is_empty());
        assert!(Query::parse("&&").is_empty());
    }

    #[test]
    fn sort_is_by_name_and_stable() {
        let mut query = Query::parse("b=2&x=2&a=1&x=1");
        query.sort_by_name();
        assert_eq!(query.to_string(), "a=1&b=2&x=2&x=1");
    }

    #[test]
    fn names_a_lenient_origin_merges_keep_their_order() {
        for (query, sorted) in [
            ("z=0&a=1&%61=2", "a=1&%61=2&z=0"),
            ("z=0&%61=2&a=1", "%61=2&a=1&z=0"),
            ("id=1&b=0&ID=2", "b=0&id=1&ID=2"),
            ("a_b=1&a.b=2&a+b=3", "a_b=1&a.b=2&a+b=3"),
            ("x[]=b&x[1]=a&w=0", "w=0&x[]=b&x[1]=a"),
            ("a%00x=1&b=0&a=2", "a%00x=1&a=2&b=0"),
            ("+a=1&b=0&%20a=2&a=3", "+a=1&%20a=2&a=3&b=0"),
            ("a[b=1&c=0&a_b=2", "a[b=1&a_b=2&c=0"),
        ] {
            let mut parsed = Query::parse(query);
            parsed.sort_by_name();
            assert_eq!(parsed.to_string(), sorted, "{query}");
        }
    }

    #[test]
    fn a_query_with_a_semicolon_keeps_its_order() {
        // `b=1;a=2&a=3` is b, a=2, a=3 to an origin that splits on `;`: sorted, a=2 would
        // come last and win where a=3 won.
        for query in ["b=1;a=2&a=3", "b;x=1&a=1", "b=1&a%3B=2;"] {
            let mut parsed = Query::parse(query);
            parsed.sort_by_name();
            assert_eq!(parsed.to_string(), query);
        }
    }

    #[test]
    fn filtering_by_name() {
        let mut query = Query::parse("fbclid=1&keep=1&fbclid=2&other=3");
        query.remove("fbclid");
        assert_eq!(query.to_string(), "keep=1&other=3");
        query.retain(|p| p.name() != "other");
        assert_eq!(query.len(), 1);
        assert!(query.contains("keep"));
    }

    #[test]
    fn collects_from_params() {
        let query: Query = ["b=1", "a"].into_iter().map(QueryParam::parse).collect();
        assert_eq!(query.to_string(), "b=1&a");
        let names: Vec<String> = query.into_iter().map(|p| p.name().to_owned()).collect();
        assert_eq!(names, ["b", "a"]);
    }
}
