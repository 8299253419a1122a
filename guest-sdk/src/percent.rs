//! Percent-decoding as origins do it when they read names: each valid `%XX` becomes its byte,
//! anything else (an invalid escape included) is kept as it is.

/// `text` with each valid `%XX` decoded.
pub(crate) fn decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::decoded;

    #[test]
    fn valid_escapes_only() {
        assert_eq!(decoded("%73ession%3d"), b"session=");
        assert_eq!(decoded("a%zz%4"), b"a%zz%4");
        assert_eq!(decoded("%C3%A9"), "é".as_bytes());
    }
}
