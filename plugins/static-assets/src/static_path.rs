//! Which paths name static files, judged by extension.

const STATIC_EXTENSIONS: [&str; 12] = [
    "css", "js", "mjs", "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "woff", "woff2",
];

/// Whether the last path segment ends in a static extension, any case.
pub(crate) fn is_static_path(path: &str) -> bool {
    let last_segment = path.rsplit('/').next().unwrap_or(path);
    last_segment.rsplit_once('.').is_some_and(|(_, extension)| {
        STATIC_EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(extension))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_extensions_in_any_case() {
        for path in [
            "/a.css",
            "/x/y/app.JS",
            "/m.mjs",
            "/i.Png",
            "/f.woff2",
            "/favicon.ico",
        ] {
            assert!(is_static_path(path), "{path}");
        }
    }

    #[test]
    fn other_paths_are_dynamic() {
        for path in [
            "/",
            "/index.html",
            "/css",
            "/a.css/",
            "/dir.png/page",
            "/a.cssx",
            "/js",
        ] {
            assert!(!is_static_path(path), "{path}");
        }
    }
}
