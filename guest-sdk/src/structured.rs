//! A strict parser for the Structured Field dictionaries (RFC 8941 §4.2.2) that targeted
//! cache-control fields use (RFC 9213 §2.1). Unlike `Cache-Control`, any syntax error makes
//! the whole field invalid, so a cache can fall back to the next field.

/// One dictionary member's value, reduced to what cache directives need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Boolean(bool),
    Integer(i64),
    String(String),
    /// A token, decimal, byte sequence or inner list, kept as written.
    Other(String),
}

/// Parses the field lines as one dictionary: members in first-seen order, a repeated key
/// taking its last value (RFC 8941 §4.2.2). None when the text is not a valid dictionary.
pub(crate) fn parse_dictionary<I, S>(lines: I) -> Option<Vec<(String, Value)>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let joined = lines
        .into_iter()
        .map(|line| line.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let mut parser = Parser {
        input: joined.as_bytes(),
        at: 0,
    };
    parser.skip(b' ');
    let mut members: Vec<(String, Value)> = Vec::new();
    while !parser.done() {
        let key = parser.key()?;
        let value = if parser.eat(b'=') {
            parser.member_value()?
        } else {
            parser.parameters()?;
            Value::Boolean(true)
        };
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(member) => member.1 = value,
            None => members.push((key, value)),
        }
        parser.skip_ows();
        if parser.done() {
            break;
        }
        if !parser.eat(b',') {
            return None;
        }
        parser.skip_ows();
        // A trailing comma is an error.
        if parser.done() {
            return None;
        }
    }
    Some(members)
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.at >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn skip(&mut self, byte: u8) {
        while self.eat(byte) {}
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn key(&mut self) -> Option<String> {
        let start = self.at;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.at += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.at += 1;
        }
        Some(String::from_utf8_lossy(&self.input[start..self.at]).into_owned())
    }

    fn member_value(&mut self) -> Option<Value> {
        if self.peek() == Some(b'(') {
            let start = self.at;
            self.inner_list()?;
            let text = String::from_utf8_lossy(&self.input[start..self.at]).into_owned();
            self.parameters()?;
            return Some(Value::Other(text));
        }
        let value = self.bare_item()?;
        self.parameters()?;
        Some(value)
    }

    fn inner_list(&mut self) -> Option<()> {
        self.eat(b'(');
        loop {
            self.skip(b' ');
            if self.eat(b')') {
                return Some(());
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    /// `*( ";" *SP key [ "=" bare-item ] )`; parameters carry nothing cachet uses.
    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip(b' ');
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(Value::String),
            b'?' => self.boolean().map(Value::Boolean),
            b':' => self.byte_sequence().map(Value::Other),
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => Some(Value::Other(self.token())),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        self.eat(b'-');
        let digits_start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let integer_digits = self.at - digits_start;
        if integer_digits == 0 {
            return None;
        }
        if self.eat(b'.') {
            let fraction_start = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            let fraction_digits = self.at - fraction_start;
            if integer_digits > 12 || fraction_digits == 0 || fraction_digits > 3 {
                return None;
            }
            let text = String::from_utf8_lossy(&self.input[start..self.at]).into_owned();
            return Some(Value::Other(text));
        }
        if integer_digits > 15 {
            return None;
        }
        let text = std::str::from_utf8(&self.input[start..self.at]).ok()?;
        text.parse().ok().map(Value::Integer)
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"');
        let mut out = String::new();
        loop {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => return Some(out),
                b'\\' => {
                    let escaped = self.peek()?;
                    if escaped != b'"' && escaped != b'\\' {
                        return None;
                    }
                    self.at += 1;
                    out.push(escaped as char);
                }
                0x20..=0x7e => out.push(byte as char),
                _ => return None,
            }
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        self.eat(b'?');
        if self.eat(b'1') {
            Some(true)
        } else if self.eat(b'0') {
            Some(false)
        } else {
            None
        }
    }

    fn byte_sequence(&mut self) -> Option<String> {
        let start = self.at;
        self.eat(b':');
        while matches!(
            self.peek(),
            Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=')
        ) {
            self.at += 1;
        }
        if !self.eat(b':') {
            return None;
        }
        Some(String::from_utf8_lossy(&self.input[start..self.at]).into_owned())
    }

    fn token(&mut self) -> String {
        let start = self.at;
        self.at += 1;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.input[start..self.at]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<Vec<(String, Value)>> {
        parse_dictionary([text])
    }

    #[test]
    fn members_of_every_type() {
        let members =
            parse(r#"max-age=60, no-store, private="a, b", x=tok, d=1.5, b=:AQ==:, l=(1 2), f=?0"#)
                .expect("valid");
        assert_eq!(
            members,
            [
                ("max-age".into(), Value::Integer(60)),
                ("no-store".into(), Value::Boolean(true)),
                ("private".into(), Value::String("a, b".into())),
                ("x".into(), Value::Other("tok".into())),
                ("d".into(), Value::Other("1.5".into())),
                ("b".into(), Value::Other(":AQ==:".into())),
                ("l".into(), Value::Other("(1 2)".into())),
                ("f".into(), Value::Boolean(false)),
            ]
        );
    }

    #[test]
    fn repeated_key_takes_the_last_value_in_the_first_place() {
        let members = parse_dictionary(["max-age=1, a", "max-age=2"]).expect("valid");
        assert_eq!(
            members,
            [
                ("max-age".into(), Value::Integer(2)),
                ("a".into(), Value::Boolean(true))
            ]
        );
    }

    #[test]
    fn parameters_are_accepted_and_dropped() {
        assert_eq!(
            parse("max-age=5;a=1;b, no-cache;x"),
            Some(vec![
                ("max-age".into(), Value::Integer(5)),
                ("no-cache".into(), Value::Boolean(true)),
            ])
        );
    }

    #[test]
    fn syntax_errors_invalidate_the_whole_field() {
        for bad in [
            "Max-Age=5",
            "max-age = 5",
            "max-age=5,",
            "max-age=5,,no-store",
            "max-age=\"5",
            "max-age=1234567890123456",
            "max-age=5 no-store",
            "a=?2",
            "a=\"\u{e9}\"",
            "=5",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn surrounding_spaces_and_tabs_between_members_are_allowed() {
        assert_eq!(
            parse("  max-age=5 ,\tno-store  "),
            Some(vec![
                ("max-age".into(), Value::Integer(5)),
                ("no-store".into(), Value::Boolean(true)),
            ])
        );
        assert_eq!(parse(""), Some(vec![]));
    }
}
