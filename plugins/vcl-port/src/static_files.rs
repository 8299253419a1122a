//! Static files by extension, as `req.url ~ "\.(css|js|...)(\?.*)?$"` in VCL.

const EXTENSIONS: [&str; 14] = [
    "css", "js", "mjs", "png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "woff", "woff2",
    "ttf",
];

pub(crate) fn is_static(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_decide() {
        assert!(is_static("/assets/app.JS"));
        assert!(is_static("/img/logo.webp"));
        assert!(!is_static("/about"));
        assert!(!is_static("/a.css/page"));
        assert!(!is_static("/.css"), "a dotfile named .css is no stylesheet");
    }
}
