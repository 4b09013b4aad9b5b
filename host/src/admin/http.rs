//! The little HTTP/1.1 the admin API speaks: a request head read strictly (request line,
//! headers), query strings and percent-encoded path segments.

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head<'a> {
    pub(crate) method: &'a str,
    /// The path, still percent-encoded.
    pub(crate) path: &'a str,
    /// The query string (after `?`), still encoded.
    pub(crate) query: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Head<'a> {
    /// Parses the request head in `buf` (up to the blank line); `None` if it is not HTTP/1.x.
    pub(crate) fn parse(buf: &'a [u8]) -> Option<Head<'a>> {
        let (method, target) = request_line(buf)?;
        let text = std::str::from_utf8(buf).ok()?;
        let headers = text
            .split('\n')
            .skip(1)
            .map(|l| l.trim_end_matches('\r'))
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Some(Head { method, path, query, headers })
    }

    /// A header's value (names compare case-insensitively).
    pub(crate) fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// A query parameter, decoded (`+` is a space).
    pub(crate) fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| decode(&v.replace('+', " ")))
    }
}

/// `GET /metrics HTTP/1.1` → (`GET`, `/metrics`).
pub(crate) fn request_line(buf: &[u8]) -> Option<(&str, &str)> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

/// Percent-decodes `text` (invalid escapes are kept as written; invalid UTF-8 is replaced).
pub(crate) fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares two secrets in time that depends on their lengths only.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_read_strictly() {
        assert_eq!(request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line(b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n"), Some(("HEAD", "/healthz?x=1")));
        assert_eq!(request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line(b"GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line(b"GET / HTTP/1.1 extra\r\n\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe / HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn heads_give_headers_params_and_decoded_segments() {
        let head = Head::parse(
            b"GET /clients/dev%2F1?prefix=a+b&limit=5&x HTTP/1.1\r\nHost: h\r\nauthorization: Bearer t\r\n\r\n",
        )
        .unwrap();
        assert_eq!((head.method, head.path), ("GET", "/clients/dev%2F1"));
        assert_eq!(head.header("Authorization"), Some("Bearer t"));
        assert_eq!(head.param("prefix").as_deref(), Some("a b"));
        assert_eq!(head.param("limit").as_deref(), Some("5"));
        assert_eq!(head.param("x").as_deref(), Some(""));
        assert_eq!(head.param("y"), None);
        assert_eq!(decode("dev%2F1%zz%"), "dev/1%zz%");
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
