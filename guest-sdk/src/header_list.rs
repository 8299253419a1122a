//! The headers of a request or response: lines added by a builder, or the
//! block of "name: value\n" lines the host hands a hook (cachet:policy@0.3.0),
//! searched where it lies rather than split into strings up front.

/// Header lines in order; names compare case-insensitively.
#[derive(Debug, Clone)]
pub(crate) enum HeaderList {
    Lines(Vec<(String, String)>),
    /// One field per line, "name: value\n", as the host sends them.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    Block(String),
}

impl Default for HeaderList {
    fn default() -> Self {
        Self::Lines(Vec::new())
    }
}

impl HeaderList {
    /// Adds a line (builders only: a block from the host is never edited).
    pub(crate) fn push(&mut self, name: String, value: String) {
        match self {
            Self::Lines(lines) => lines.push((name, value)),
            Self::Block(_) => {
                let mut lines: Vec<(String, String)> = self
                    .iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                lines.push((name, value));
                *self = Self::Lines(lines);
            }
        }
    }

    /// Gives every line named `name` this value, where it stands (builders only).
    pub(crate) fn replace_values(&mut self, name: &str, value: &str) {
        let mut lines: Vec<(String, String)> = self
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        for (n, v) in &mut lines {
            if n.eq_ignore_ascii_case(name) {
                value.clone_into(v);
            }
        }
        *self = Self::Lines(lines);
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn lines(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_lines(lines: Vec<(String, String)>) -> Self {
        Self::Lines(lines)
    }

    pub(crate) fn first(&self, name: &str) -> Option<String> {
        self.values(name).next().map(str::to_owned)
    }

    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.values(name).map(str::to_owned).collect()
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        match self {
            Self::Lines(lines) => Box::new(lines.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            Self::Block(block) => Box::new(
                block
                    .split('\n')
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, value)| (name, value.strip_prefix(' ').unwrap_or(value))),
            ),
        }
    }

    /// Each field name once, lower-cased, in the order first seen.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in self.iter() {
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(line_name, _)| line_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_keeps_order() {
        let mut headers = HeaderList::default();
        headers.push("Vary".into(), "accept".into());
        headers.push("x-other".into(), "1".into());
        headers.push("VARY".into(), "origin".into());
        assert_eq!(headers.first("vary").as_deref(), Some("accept"));
        assert_eq!(headers.all("vary"), ["accept", "origin"]);
        assert_eq!(headers.first("missing"), None);
        assert!(headers.all("missing").is_empty());
    }

    #[test]
    fn a_block_from_the_host_reads_like_lines() {
        let mut headers =
            HeaderList::Block("vary: accept\nx-empty: \nx-url: http://a/b\nvary: origin\n".into());
        assert_eq!(headers.all("Vary"), ["accept", "origin"]);
        assert_eq!(headers.first("x-empty").as_deref(), Some(""));
        // Only the first colon separates the name.
        assert_eq!(headers.first("x-url").as_deref(), Some("http://a/b"));
        assert_eq!(headers.first("missing"), None);
        headers.push("x-new".into(), "1".into());
        assert_eq!(headers.all("vary"), ["accept", "origin"]);
        assert_eq!(headers.first("x-new").as_deref(), Some("1"));
    }
}
