//! Buckets an Accept-Encoding request header into the one encoding a static
//! file would be served in, so "gzip, deflate, br" and "br;q=1, gzip" share
//! a cached variant.

/// "br", "gzip" or "identity": the best of what the client accepts.
pub fn preferred(lines: &[String]) -> &'static str {
    let accepted = |wanted: &str| {
        lines.iter().flat_map(|l| l.split(',')).any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            coding.eq_ignore_ascii_case(wanted) && !refused
        })
    };
    if accepted("br") {
        "br"
    } else if accepted("gzip") {
        "gzip"
    } else {
        "identity"
    }
}

#[cfg(test)]
mod tests {
    use super::preferred;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equivalent_spellings_share_a_bucket() {
        assert_eq!(preferred(&lines(&["gzip, deflate, br"])), "br");
        assert_eq!(preferred(&lines(&["BR;q=1.0", "gzip"])), "br");
        assert_eq!(preferred(&lines(&["gzip, deflate"])), "gzip");
        assert_eq!(preferred(&lines(&["deflate, gzip;q=0.5"])), "gzip");
    }

    #[test]
    fn refused_or_absent_codings_fall_back_to_identity() {
        assert_eq!(preferred(&lines(&["br;q=0, gzip;q=0"])), "identity");
        assert_eq!(preferred(&[]), "identity");
        assert_eq!(preferred(&lines(&["deflate"])), "identity");
    }
}
