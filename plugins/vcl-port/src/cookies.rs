//! `vcl_recv`'s cookie clean-up: the origin only reads `session` (a logged-in
//! user) and `lang`; every other cookie (analytics, A/B tools) is removed
//! before the key is computed and the origin is contacted.

/// Cookies the origin reads.
pub(crate) fn is_kept(name: &str) -> bool {
    name == "session" || name == "lang"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_and_lang_are_kept() {
        assert!(is_kept("session") && is_kept("lang"));
        for name in ["_ga", "Session", "optimizelyEndUserId", "lang2"] {
            assert!(!is_kept(name), "{name}");
        }
    }
}
