//! Fields the host will set on a request before it is sent to the origin (the
//! forwarding fields), kept aside until the request turns out to need the
//! origin.
//!
//! Writing a field into Pingora's `RequestHeader` costs a name parse and a
//! case-map entry per field, on every request. A 0.3.0 plugin receives the
//! request as a value, so it can be shown the fields without them being
//! written: a cache hit never writes them. What the plugin is shown is, field
//! for field and in order, what writing them produces (`fields_after`).

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// Most fields that may be pending at once.
const MAX_PENDING: usize = 64;

/// Each name at most once, in the order they are to be written. `None`
/// removes the field.
#[derive(Debug, Default, Clone)]
pub struct PendingFields(Vec<(HeaderName, Option<HeaderValue>)>);

impl PendingFields {
    /// No fields: the request is shown as it is.
    pub fn none() -> &'static PendingFields {
        static NONE: PendingFields = PendingFields(Vec::new());
        &NONE
    }

    /// Room for `fields` fields without growing.
    pub fn with_capacity(fields: usize) -> Self {
        Self(Vec::with_capacity(fields))
    }

    /// `name` is to be replaced by `value`.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.put(name, Some(value));
    }

    /// `name` is to be removed.
    pub fn remove(&mut self, name: HeaderName) {
        self.put(name, None);
    }

    fn put(&mut self, name: HeaderName, value: Option<HeaderValue>) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => {
                // `FieldsAfter` keeps one bit per field (the host sets five).
                assert!(
                    self.0.len() < MAX_PENDING,
                    "more than {MAX_PENDING} pending fields"
                );
                self.0.push((name, value));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes the fields into `request` and forgets them: applied once.
    pub fn apply(&mut self, request: &mut RequestHeader) {
        for (name, value) in self.0.drain(..) {
            match value {
                Some(value) => {
                    // The names are valid `HeaderName`s: this cannot fail.
                    let _ = request.insert_header(name, value);
                }
                None => {
                    request.remove_header(&name);
                }
            }
        }
    }

    /// Every field of `headers` as it will be once the pending fields are
    /// written, in the order the origin will get them: a replaced field keeps
    /// the place of its first line and loses its other lines (what
    /// `HeaderMap::insert` does), a new one comes after the rest.
    ///
    /// One difference is left: removing a field moves `headers`' last field
    /// into its place (`HeaderMap::remove` swaps), while here the rest keep
    /// their order. Only a client value that cannot be sent on is removed,
    /// and the order of fields with different names carries no meaning
    /// (RFC 9110 §5.3).
    pub fn fields_after<'a>(&'a self, headers: &'a HeaderMap) -> FieldsAfter<'a> {
        FieldsAfter {
            lines: headers.iter(),
            pending: &self.0,
            met: 0,
            added: 0,
        }
    }
}

/// The iterator of [`PendingFields::fields_after`]: one pass over the
/// request's fields, with no lookups in its map (it runs for every hook call
/// of a 0.3.0 plugin).
pub struct FieldsAfter<'a> {
    lines: http::header::Iter<'a, HeaderValue>,
    pending: &'a [(HeaderName, Option<HeaderValue>)],
    /// Bit `i`: the request has a line named like pending field `i`.
    met: u64,
    /// How many pending fields the tail (fields new to the request) has looked at.
    added: usize,
}

impl<'a> Iterator for FieldsAfter<'a> {
    type Item = (&'a HeaderName, &'a HeaderValue);

    fn next(&mut self) -> Option<Self::Item> {
        for (name, value) in self.lines.by_ref() {
            let Some(index) = self.pending.iter().position(|(n, _)| n == name) else {
                return Some((name, value));
            };
            let first_line = self.met & (1 << index) == 0;
            self.met |= 1 << index;
            // The replacement takes the place of the field's first line only.
            if let (true, Some(replacement)) = (first_line, &self.pending[index].1) {
                return Some((name, replacement));
            }
        }
        while self.added < self.pending.len() {
            let index = self.added;
            self.added += 1;
            if let (0, (name, Some(value))) = (self.met & (1 << index), &self.pending[index]) {
                return Some((name, value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in fields {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn lines<'a>(fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) -> Vec<String> {
        fields
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    fn pending(sets: &[(&'static str, &'static str)], removes: &[&'static str]) -> PendingFields {
        let mut pending = PendingFields::default();
        for (name, value) in sets {
            pending.set(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        for name in removes {
            pending.remove(HeaderName::from_static(name));
        }
        pending
    }

    /// The view given to a plugin is what the origin gets once the fields are
    /// written: compared line for line against the written request.
    #[test]
    fn the_view_is_the_written_request_line_for_line() {
        let cases: Vec<(Vec<(&str, &str)>, PendingFields)> = vec![
            (
                vec![("host", "a"), ("accept", "*/*")],
                pending(
                    &[("x-forwarded-for", "1.2.3.4"), ("via", "1.1 cachet")],
                    &[],
                ),
            ),
            (
                vec![
                    ("host", "a"),
                    ("x-forwarded-for", "9.9.9.9"),
                    ("accept", "*/*"),
                    ("x-forwarded-for", "8.8.8.8"),
                    ("via", "1.1 lb"),
                    ("cookie", "c=1"),
                ],
                pending(
                    &[
                        ("x-forwarded-for", "9.9.9.9, 8.8.8.8, 1.2.3.4"),
                        ("x-forwarded-proto", "http"),
                        ("via", "1.1 lb, 1.1 cachet"),
                    ],
                    &[],
                ),
            ),
            (
                vec![("forwarded", "for=x"), ("host", "a")],
                pending(&[("forwarded", "for=1.2.3.4")], &[]),
            ),
            (vec![("host", "a")], PendingFields::default()),
        ];
        for (fields, mut pending) in cases {
            let mut req = request(&fields);
            let view = lines(pending.fields_after(&req.headers));
            pending.apply(&mut req);
            assert!(pending.is_empty(), "applied once");
            assert_eq!(view, lines(req.headers.iter()), "from {fields:?}");
        }
    }

    #[test]
    fn a_removed_field_is_gone_from_the_view_and_the_request() {
        let mut req = request(&[("host", "a"), ("via", "x"), ("accept", "*/*")]);
        let mut pending = pending(&[], &["via"]);
        let view = lines(pending.fields_after(&req.headers));
        assert_eq!(view, ["host: a", "accept: */*"]);
        pending.apply(&mut req);
        assert!(req.headers.get("via").is_none());
    }

    #[test]
    fn a_name_set_twice_keeps_its_last_value_and_first_place() {
        let pending = pending(&[("via", "a"), ("x-b", "b"), ("via", "c")], &[]);
        let req = request(&[("host", "h")]);
        let view = lines(pending.fields_after(&req.headers));
        assert_eq!(view, ["host: h", "via: c", "x-b: b"]);
    }
}
