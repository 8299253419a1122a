//! Which field's cache directives govern a response (RFC 9213 §2.2): `Cachet-Cache-Control`
//! (cachet's own), then `CDN-Cache-Control` (every CDN), then `Cache-Control`. A targeted
//! field counts only when it is present, non-empty and valid; when one is used, `Cache-Control`
//! and `Expires` are ignored. An invalid targeted field is passed over, but what it says
//! against storing (`no-store`, `private`, ...) still holds: an origin that wrote
//! `no-store, max-age="60"` did not mean its `Cache-Control: max-age=300` to store it.

use crate::CacheControl;

/// A response field that carries cache directives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectiveField {
    /// `Cachet-Cache-Control`, targeted at cachet alone.
    CachetCacheControl,
    /// `CDN-Cache-Control`, targeted at every CDN on the path (RFC 9213).
    CdnCacheControl,
    /// `Cache-Control`, for every cache.
    CacheControl,
}

impl DirectiveField {
    /// Most specific first.
    pub const PRECEDENCE: [Self; 3] = [
        Self::CachetCacheControl,
        Self::CdnCacheControl,
        Self::CacheControl,
    ];

    /// The field's name, lower-case.
    pub fn name(self) -> &'static str {
        match self {
            Self::CachetCacheControl => "cachet-cache-control",
            Self::CdnCacheControl => "cdn-cache-control",
            Self::CacheControl => "cache-control",
        }
    }

    /// Whether the field targets specific caches (RFC 9213), which also means `Expires` and
    /// heuristic freshness no longer apply.
    pub fn is_targeted(self) -> bool {
        self != Self::CacheControl
    }
}

/// The directives that govern caching a response, and the field they came from.
///
/// ```
/// use cachet_sdk::{DirectiveField, ResponseDirectives};
/// let lines = |name: &str| match name {
///     "cdn-cache-control" => vec!["max-age=\"oops\""],
///     "cache-control" => vec!["max-age=30"],
///     _ => vec![],
/// };
/// // The invalid targeted field is ignored; Cache-Control applies.
/// let chosen = ResponseDirectives::select(lines).unwrap();
/// assert_eq!(chosen.field, DirectiveField::CacheControl);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// Where the directives came from.
    pub field: DirectiveField,
    /// The directives themselves.
    pub cache_control: CacheControl,
}

impl ResponseDirectives {
    /// Chooses the governing field; `field_lines(name)` gives every line of the named field.
    /// `None` when no field applies (no `Cache-Control` and no valid targeted field).
    pub fn select<F, L>(mut field_lines: F) -> Option<Self>
    where
        F: FnMut(&'static str) -> L,
        L: IntoIterator,
        L::Item: AsRef<str>,
    {
        // Restrictions of the invalid targeted fields passed over.
        let mut carried = Vec::new();
        let mut chosen = DirectiveField::PRECEDENCE.into_iter().find_map(|field| {
            let lines: Vec<L::Item> = field_lines(field.name()).into_iter().collect();
            if lines.is_empty() {
                return None;
            }
            let cache_control = if field.is_targeted() {
                if lines.iter().all(|line| line.as_ref().trim().is_empty()) {
                    return None;
                }
                match CacheControl::parse_targeted(&lines) {
                    Some(cc) => cc,
                    None => {
                        carried.extend(CacheControl::restrictions_in(&lines));
                        return None;
                    }
                }
            } else {
                CacheControl::parse_all(&lines)
            };
            Some(Self {
                field,
                cache_control,
            })
        });
        if !carried.is_empty() {
            let chosen = chosen.get_or_insert(Self {
                field: DirectiveField::CacheControl,
                cache_control: CacheControl::default(),
            });
            for (name, argument) in carried {
                chosen.cache_control.add_if_absent(name, argument);
            }
        }
        chosen
    }

    /// Whether the directives state an explicit lifetime (`max-age`, `s-maxage`), or, for
    /// `Cache-Control` only, `has_expires` says an `Expires` field is present.
    pub fn has_explicit_freshness(&self, has_expires: bool) -> bool {
        self.cache_control.has("max-age")
            || self.cache_control.has("s-maxage")
            || (!self.field.is_targeted() && has_expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn select(fields: &[(&str, &str)]) -> Option<ResponseDirectives> {
        ResponseDirectives::select(|name| {
            fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
        })
    }

    fn chosen(fields: &[(&str, &str)]) -> (DirectiveField, Option<Duration>) {
        let d = select(fields).expect("a field applies");
        (d.field, d.cache_control.max_age())
    }

    #[test]
    fn most_specific_valid_field_wins() {
        let cc = ("Cache-Control", "max-age=1");
        let cdn = ("CDN-Cache-Control", "max-age=2");
        let own = ("Cachet-Cache-Control", "max-age=3");
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(chosen(&[cc]), (DirectiveField::CacheControl, secs(1)));
        assert_eq!(
            chosen(&[cc, cdn]),
            (DirectiveField::CdnCacheControl, secs(2))
        );
        assert_eq!(
            chosen(&[own, cdn, cc]),
            (DirectiveField::CachetCacheControl, secs(3))
        );
        assert_eq!(select(&[]), None);
    }

    #[test]
    fn an_invalid_targeted_field_still_forbids_storing() {
        let d = select(&[
            ("CDN-Cache-Control", "no-store, max-age=\"60\""),
            ("Cache-Control", "public, max-age=300"),
        ])
        .expect("a field applies");
        assert_eq!(d.field, DirectiveField::CacheControl);
        assert!(d.cache_control.no_store());
        assert!(d.cache_control.public());
        // Unparseable as a dictionary, with nothing else to fall back on.
        let d = select(&[("Cachet-Cache-Control", "private, max-age=60,")]).expect("applies");
        assert!(d.cache_control.private());
        assert_eq!(d.cache_control.max_age(), None);
        // A valid field below takes the restriction too.
        let d = select(&[
            ("Cachet-Cache-Control", "no-cache, s-maxage=x"),
            ("CDN-Cache-Control", "max-age=60"),
        ])
        .expect("applies");
        assert_eq!(d.field, DirectiveField::CdnCacheControl);
        assert!(d.cache_control.no_cache());
    }

    #[test]
    fn invalid_or_empty_targeted_fields_fall_through() {
        let cc = ("Cache-Control", "max-age=1");
        for bad in [
            "max-age=\"2\"",
            "no-store=5",
            "Max-Age=2",
            "max-age=-2",
            "",
            "  ",
            "a,",
        ] {
            assert_eq!(
                chosen(&[("CDN-Cache-Control", bad), cc]).0,
                DirectiveField::CacheControl,
                "{bad:?}"
            );
        }
        assert_eq!(
            chosen(&[
                ("Cachet-Cache-Control", "max-age=x"),
                ("CDN-Cache-Control", "max-age=2")
            ]),
            (
                DirectiveField::CdnCacheControl,
                Some(Duration::from_secs(2))
            )
        );
        // Only an invalid targeted field and no Cache-Control: nothing applies.
        assert_eq!(select(&[("CDN-Cache-Control", "max-age=?1")]), None);
    }

    #[test]
    fn a_switched_off_directive_is_still_a_valid_field() {
        let d = select(&[
            ("CDN-Cache-Control", "no-store=?0"),
            ("Cache-Control", "no-store"),
        ])
        .expect("applies");
        assert_eq!(d.field, DirectiveField::CdnCacheControl);
        assert!(!d.cache_control.no_store());
    }

    #[test]
    fn expires_counts_only_under_cache_control() {
        let plain = select(&[("Cache-Control", "public")]).expect("applies");
        assert!(plain.has_explicit_freshness(true));
        assert!(!plain.has_explicit_freshness(false));
        let targeted = select(&[("CDN-Cache-Control", "public")]).expect("applies");
        assert!(!targeted.has_explicit_freshness(true));
        let targeted = select(&[("CDN-Cache-Control", "s-maxage=5")]).expect("applies");
        assert!(targeted.has_explicit_freshness(false));
    }
}
