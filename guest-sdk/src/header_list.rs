//! Headers held in memory by builder-made requests and responses.

/// Header lines in the order added; names compare case-insensitively.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderList {
    lines: Vec<(String, String)>,
}

impl HeaderList {
    pub(crate) fn push(&mut self, name: String, value: String) {
        self.lines.push((name, value));
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn lines(&self) -> &[(String, String)] {
        &self.lines
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_lines(lines: Vec<(String, String)>) -> Self {
        Self { lines }
    }

    pub(crate) fn first(&self, name: &str) -> Option<String> {
        self.values(name).next().map(str::to_owned)
    }

    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.values(name).map(str::to_owned).collect()
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines
            .iter()
            .filter(move |(line_name, _)| line_name.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
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
}
