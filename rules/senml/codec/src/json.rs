//! A small JSON parser (RFC 8259) into [`Value`], for SenML+JSON. Nesting is limited and
//! trailing text is an error.

use crate::value::Value;

/// How deep arrays and objects may nest.
pub const MAX_DEPTH: usize = 32;

/// Why a payload is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The byte offset where parsing stopped.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Parses exactly one JSON value (surrounding whitespace allowed).
pub fn parse(input: &[u8]) -> Result<Value, ParseError> {
    let mut p = Parser { buf: input, pos: 0 };
    let value = p.value(0)?;
    p.space();
    if p.pos != input.len() {
        return Err(p.error("trailing text after the value"));
    }
    Ok(value)
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError { at: self.pos, what }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.space();
        if self.peek() == Some(c) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, ParseError> {
        if self.buf.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.space();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                if self.eat(b'}') {
                    return Ok(Value::Map(entries));
                }
                loop {
                    self.space();
                    if self.peek() != Some(b'"') {
                        return Err(self.error("expected a string key"));
                    }
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return Err(self.error("expected ':'"));
                    }
                    entries.push((Value::Text(key), self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Ok(Value::Map(entries));
                    }
                    if !self.eat(b',') {
                        return Err(self.error("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Ok(Value::Array(items));
                    }
                    if !self.eat(b',') {
                        return Err(self.error("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => self.string().map(Value::Text),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end")),
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let mut float = false;
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => float = true,
                _ => break,
            }
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.buf[start..self.pos]).map_err(|_| self.error("bad number"))?;
        if !float && let Ok(i) = text.parse::<i128>() {
            return Ok(Value::Int(i));
        }
        let ok = text.bytes().next().is_some_and(|c| c == b'-' || c.is_ascii_digit());
        match text.parse::<f64>() {
            Ok(f) if ok && !text.ends_with('.') && !text.starts_with('.') => Ok(Value::Float(f)),
            _ => Err(ParseError { at: start, what: "bad number" }),
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self.buf.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("bad \\u escape"))?;
        let n = u32::from_str_radix(text, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(n)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or_else(|| self.error("unterminated string"))?;
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi)
                                && self.buf.get(self.pos..self.pos + 2) == Some(b"\\u")
                            {
                                self.pos += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err(self.error("control character in a string")),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_the_writer() {
        for text in [
            r#"[{"bn":"urn:dev:ow:10e2073a01080063","n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2}]"#,
            r#"{"a":[true,false,null,{"b":""}],"c":-0.5,"d":"\"\\\n\u0001é😀"}"#,
            "[]",
            "{}",
            "12",
        ] {
            assert_eq!(parse(text.as_bytes()).unwrap().to_json(), text);
        }
        assert_eq!(
            parse(br#" { "e" : 1e3 , "s": "\u00e9\ud83d\ude00" } "#).unwrap().to_json(),
            r#"{"e":1000.0,"s":"é😀"}"#
        );
    }

    #[test]
    fn malformed_json_is_refused_with_where() {
        assert_eq!(parse(b"[1,]").unwrap_err().what, "unexpected character");
        assert_eq!(parse(b"{\"a\" 1}").unwrap_err(), ParseError { at: 5, what: "expected ':'" });
        assert_eq!(parse(b"[1] x").unwrap_err().what, "trailing text after the value");
        assert_eq!(parse(b"\"abc").unwrap_err().what, "unterminated string");
        assert_eq!(parse(b"1.").unwrap_err().what, "bad number");
        assert_eq!(parse(&[b'['; 100]).unwrap_err().what, "nested too deeply");
        assert_eq!(parse(b"").unwrap_err().what, "unexpected end");
    }
}
