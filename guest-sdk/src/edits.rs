//! Edits a policy makes to the messages the host handles: the request before
//! the cache key and the origin, the origin's response before it is stored,
//! and the response the client gets. The host checks every edit: a field that
//! frames or routes the message (Host, Content-Length, Transfer-Encoding,
//! Connection and the other hop-by-hop fields), an invalid name or a value
//! with CR/LF makes the hook a plugin fault.

/// One change to a message's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value of the field with this one.
    Set(String, String),
    /// Add a value, keeping the existing ones.
    Append(String, String),
    /// Remove every value of the field.
    Remove(String),
}

/// An ordered list of header edits, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    edits: Vec<HeaderEdit>,
}

impl HeaderEdits {
    /// No edits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.edits.push(HeaderEdit::Set(name.into(), value.into()));
        self
    }

    /// Adds a value to `name`.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.edits
            .push(HeaderEdit::Append(name.into(), value.into()));
        self
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: impl Into<String>) -> &mut Self {
        self.edits.push(HeaderEdit::Remove(name.into()));
        self
    }

    /// The edits, in order.
    pub fn as_slice(&self) -> &[HeaderEdit] {
        &self.edits
    }

    /// Whether there are no edits.
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// The headers `headers` would have after these edits (names compared
    /// case-insensitively), for native tests of a policy.
    pub fn applied_to(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        let mut out = headers.to_vec();
        for edit in &self.edits {
            match edit {
                HeaderEdit::Set(name, value) => {
                    out.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                    out.push((name.clone(), value.clone()));
                }
                HeaderEdit::Append(name, value) => out.push((name.clone(), value.clone())),
                HeaderEdit::Remove(name) => out.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            }
        }
        out
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn into_vec(self) -> Vec<HeaderEdit> {
        self.edits
    }
}

/// How a policy changes a request before the cache key is computed and the
/// origin is contacted. The key hook and the origin both see the edited
/// request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// Header edits, in order.
    pub headers: HeaderEdits,
    /// New path and query for the origin, in origin-form (`/path?query`).
    pub path_and_query: Option<String>,
    /// One of the tenant's `[tenant.backends]` by name; `None`: the tenant's
    /// `upstream`. An unknown name is a plugin fault.
    pub backend: Option<String>,
    /// Call [`Policy::on_deliver`](crate::Policy::on_deliver) for this
    /// request's response.
    pub deliver: bool,
}

impl RequestEdits {
    /// Replaces every value of a request header.
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.headers.set(name, value);
        self
    }

    /// Removes a request header.
    pub fn remove_header(&mut self, name: impl Into<String>) -> &mut Self {
        self.headers.remove(name);
        self
    }

    /// Keeps only the cookies whose name `keep` accepts, each name once (its
    /// first pair, the one [`Request::cookie`](crate::Request::cookie) returns),
    /// each spelled `name=value` as that method reads it (no spaces around
    /// `=`, no quotes), so the origin reads the value a key was made of:
    /// `Cookie` becomes those pairs, or is removed when none is left. Nothing is
    /// edited when the header is already so, so applying it to an edited
    /// request changes nothing.
    pub fn keep_cookies(&mut self, req: &crate::Request, keep: impl Fn(&str) -> bool) -> &mut Self {
        let (kept, changed) = crate::cookie::retain(&req.header_all("cookie"), keep);
        if !changed {
            return self;
        }
        if kept.is_empty() {
            self.remove_header("cookie")
        } else {
            self.set_header("cookie", kept)
        }
    }

    /// Sends the origin this path and query (`/path?query`) instead.
    pub fn rewrite_path(&mut self, path_and_query: impl Into<String>) -> &mut Self {
        self.path_and_query = Some(path_and_query.into());
        self
    }

    /// Sends the request to the tenant backend with this name.
    pub fn backend(&mut self, name: impl Into<String>) -> &mut Self {
        self.backend = Some(name.into());
        self
    }

    /// Asks for [`Policy::on_deliver`](crate::Policy::on_deliver) on this
    /// request's response (hits included).
    pub fn edit_delivery(&mut self) -> &mut Self {
        self.deliver = true;
        self
    }
}

/// Why the origin gave no usable response, for
/// [`Policy::on_error`](crate::Policy::on_error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    /// No connection could be made.
    Unreachable,
    /// Connecting, reading or writing took longer than allowed.
    Timeout,
    /// The origin answered with this 5xx status.
    Status(u16),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn edits_apply_in_order_and_ignore_case() {
        let mut edits = HeaderEdits::new();
        edits
            .remove("set-cookie")
            .set("Cache-Control", "public, max-age=60")
            .append("Vary", "Accept-Language");
        let out = edits.applied_to(&pairs(&[
            ("Set-Cookie", "a=1"),
            ("cache-control", "private"),
            ("Vary", "Accept-Encoding"),
        ]));
        assert_eq!(
            out,
            pairs(&[
                ("Vary", "Accept-Encoding"),
                ("Cache-Control", "public, max-age=60"),
                ("Vary", "Accept-Language"),
            ])
        );
    }

    #[test]
    fn keep_cookies_sets_removes_or_leaves_the_header() {
        let not_tracking = |name: &str| !name.starts_with("_ga");
        let req = |cookie: &str| crate::Request::builder().header("Cookie", cookie).build();
        let mut edits = RequestEdits::default();
        edits.keep_cookies(&req("_ga=1; session=abc"), not_tracking);
        assert_eq!(
            edits.headers.as_slice(),
            [HeaderEdit::Set("cookie".into(), "session=abc".into())]
        );
        let mut edits = RequestEdits::default();
        edits.keep_cookies(&req("_ga=1; _gat=2"), not_tracking);
        assert_eq!(
            edits.headers.as_slice(),
            [HeaderEdit::Remove("cookie".into())]
        );
        let mut edits = RequestEdits::default();
        edits.keep_cookies(&req("session=abc"), not_tracking);
        assert!(edits.headers.is_empty());
    }

    #[test]
    fn request_edits_collect_every_choice() {
        let mut edits = RequestEdits::default();
        edits
            .remove_header("cookie")
            .rewrite_path("/v2/items?id=1")
            .backend("api")
            .edit_delivery();
        assert_eq!(
            edits.headers.as_slice(),
            [HeaderEdit::Remove("cookie".into())]
        );
        assert_eq!(edits.path_and_query.as_deref(), Some("/v2/items?id=1"));
        assert_eq!(edits.backend.as_deref(), Some("api"));
        assert!(edits.deliver);
    }
}
