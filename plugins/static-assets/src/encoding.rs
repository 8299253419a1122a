//! Names the variant an Accept-Encoding request header selects, in one canonical
//! spelling, so "gzip, deflate, br" and "br;q=1.0, GZIP ,deflate" share a cached
//! variant.
//!
//! Only the spelling is removed (case, spaces, order, repeats, a weight of 1): every
//! coding the client named stays, with its weight. Bucketing by the best coding alone
//! was wrong: an origin answers `*` with gzip where no header gets plain bytes, and
//! "br, gzip" with gzip where it has no brotli while "br" alone gets plain bytes, so
//! requests in one bucket were served bodies they had not accepted.

/// The canonical spelling of the `Accept-Encoding` lines; `"-"` when there are none
/// (any coding acceptable, RFC 9110 §12.5.3), `""` when they name no coding.
pub fn canonical(lines: &[String]) -> String {
    if lines.is_empty() {
        return "-".to_owned();
    }
    let mut items: Vec<String> = lines
        .iter()
        .flat_map(|line| line.split(','))
        .filter_map(canonical_item)
        .collect();
    items.sort_unstable();
    items.dedup();
    items.join(",")
}

/// `coding[;param...]` lower-cased without the spaces around its parts, its weight
/// written as the shortest equal number (`q=0.50` → `q=0.5`) and left out when it is 1.
/// Spaces inside a part stay: `g zip` is not `gzip` to an origin, so not to the key.
fn canonical_item(item: &str) -> Option<String> {
    let mut parts = item.split(';').map(|part| part.trim().to_ascii_lowercase());
    let mut canonical = parts.next().filter(|coding| !coding.is_empty())?;
    for param in parts {
        match param.strip_prefix("q=").and_then(thousandths) {
            Some(1000) => {}
            Some(weight) => {
                canonical.push_str(";q=");
                canonical.push_str(&shortest(weight));
            }
            None => {
                canonical.push(';');
                canonical.push_str(&param);
            }
        }
    }
    Some(canonical)
}

/// An RFC 9110 §12.4.2 qvalue in thousandths: `0[.ddd]` or `1[.000]`.
fn thousandths(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fraction: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(fraction),
        "1" if fraction == 0 => Some(1000),
        _ => None,
    }
}

fn shortest(weight: u16) -> String {
    match weight {
        0 => "0".to_owned(),
        w => format!("0.{w:03}").trim_end_matches('0').to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    fn of(lines: &[&str]) -> String {
        canonical(&lines.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn spellings_of_the_same_header_share_a_variant() {
        assert_eq!(of(&["gzip, deflate, br"]), "br,deflate,gzip");
        assert_eq!(of(&["BR;q=1.0, gzip", "deflate ,gzip"]), "br,deflate,gzip");
        assert_eq!(of(&["gzip;q=0.50"]), of(&["GZIP ; Q=0.5"]));
        assert_eq!(of(&[" gzip\t;\tq=0.5 "]), "gzip;q=0.5");
        assert_eq!(of(&["gzip;q=0.000"]), "gzip;q=0");
    }

    #[test]
    fn headers_an_origin_may_answer_differently_stay_apart() {
        let variants = [
            of(&[]),
            of(&[""]),
            of(&["*"]),
            of(&["identity"]),
            of(&["br"]),
            of(&["br, gzip"]),
            of(&["gzip"]),
            of(&["gzip;q=0"]),
            of(&["gzip;Q=0"]),
            of(&["gzip;q=0.5, br"]),
            of(&["gzip;q=nonsense"]),
            of(&["g zip"]),
            of(&["gzip;q = 0.5"]),
        ];
        let mut distinct = variants.to_vec();
        distinct.sort();
        distinct.dedup();
        // Only the two zero weights are the same header spelled twice.
        assert_eq!(distinct.len(), variants.len() - 1, "{variants:?}");
        assert_eq!(of(&["gzip;q=0"]), of(&["gzip;Q=0"]));
    }
}
