//! A small CBOR decoder (RFC 8949): every major type, definite and indefinite lengths, half,
//! single and double floats. Tags are read and dropped (the tagged item stays). No allocation
//! is larger than the input, nesting is limited, and trailing bytes are an error, so a hostile
//! payload costs at most its own size.

use crate::value::Value;

/// How deep arrays and maps may nest.
pub const MAX_DEPTH: usize = 32;

/// Why a payload is not CBOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The byte offset where decoding stopped.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Decodes exactly one CBOR item that fills `input`.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader { buf: input, pos: 0 };
    let value = r.item(0)?;
    if r.pos != input.len() {
        return Err(r.error("trailing bytes after the item"));
    }
    Ok(value)
}

/// The break byte that ends an indefinite-length item.
const BREAK: u8 = 0xff;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.pos, what }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf.get(self.pos).copied().ok_or_else(|| self.error("unexpected end"))
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let remaining = self.buf.len() - self.pos;
        let n = usize::try_from(n).ok().filter(|n| *n <= remaining).ok_or_else(|| self.error("length past the end"))?;
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn uint(&mut self, bytes: u64) -> Result<u64, DecodeError> {
        Ok(self.take(bytes)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// The argument of an initial byte; `None` for an indefinite length.
    fn argument(&mut self, info: u8) -> Result<Option<u64>, DecodeError> {
        Ok(Some(match info {
            0..=23 => u64::from(info),
            24 => self.uint(1)?,
            25 => self.uint(2)?,
            26 => self.uint(4)?,
            27 => self.uint(8)?,
            31 => return Ok(None),
            _ => return Err(self.error("reserved additional information")),
        }))
    }

    /// A count of items, capped by the bytes left (each item takes at least one).
    fn count(&self, n: u64) -> Result<usize, DecodeError> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.buf.len() - self.pos)
            .ok_or_else(|| self.error("more items than bytes left"))
    }

    fn at_break(&mut self) -> Result<bool, DecodeError> {
        if self.peek()? == BREAK {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    fn string(&mut self, major: u8, info: u8) -> Result<Vec<u8>, DecodeError> {
        match self.argument(info)? {
            Some(n) => Ok(self.take(n)?.to_vec()),
            None => {
                let mut out = Vec::new();
                while !self.at_break()? {
                    let initial = self.byte()?;
                    if initial >> 5 != major || initial & 0x1f == 31 {
                        return Err(self.error("bad chunk in an indefinite-length string"));
                    }
                    let n = self.argument(initial & 0x1f)?.unwrap_or(0);
                    out.extend_from_slice(self.take(n)?);
                }
                Ok(out)
            }
        }
    }

    fn item(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        match major {
            0 => Ok(Value::Int(i128::from(self.argument(info)?.ok_or_else(|| self.error("indefinite integer"))?))),
            1 => {
                let n = self.argument(info)?.ok_or_else(|| self.error("indefinite integer"))?;
                Ok(Value::Int(-1 - i128::from(n)))
            }
            2 => Ok(Value::Bytes(self.string(2, info)?)),
            3 => {
                let start = self.pos;
                let bytes = self.string(3, info)?;
                String::from_utf8(bytes)
                    .map(Value::Text)
                    .map_err(|_| DecodeError { at: start, what: "text is not UTF-8" })
            }
            4 => {
                let mut items = Vec::new();
                match self.argument(info)? {
                    Some(n) => {
                        let n = self.count(n)?;
                        items.reserve(n);
                        for _ in 0..n {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                    None => {
                        while !self.at_break()? {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                }
                Ok(Value::Array(items))
            }
            5 => {
                let mut entries = Vec::new();
                match self.argument(info)? {
                    Some(n) => {
                        let n = self.count(n)?;
                        entries.reserve(n / 2);
                        for _ in 0..n {
                            entries.push((self.item(depth + 1)?, self.item(depth + 1)?));
                        }
                    }
                    None => {
                        while !self.at_break()? {
                            entries.push((self.item(depth + 1)?, self.item(depth + 1)?));
                        }
                    }
                }
                Ok(Value::Map(entries))
            }
            6 => {
                self.argument(info)?.ok_or_else(|| self.error("indefinite tag"))?;
                self.item(depth + 1)
            }
            _ => self.simple(info),
        }
    }

    fn simple(&mut self, info: u8) -> Result<Value, DecodeError> {
        Ok(match info {
            20 => Value::Bool(false),
            21 => Value::Bool(true),
            22 | 23 => Value::Null,
            24 => {
                self.byte()?;
                Value::Null
            }
            25 => Value::Float(narrow(f64::from(half(self.uint(2)? as u16)))),
            26 => Value::Float(narrow(f64::from(f32::from_bits(self.uint(4)? as u32)))),
            27 => Value::Float(f64::from_bits(self.uint(8)?)),
            31 => return Err(self.error("break outside an indefinite-length item")),
            28..=30 => return Err(self.error("reserved simple value")),
            _ => Value::Null,
        })
    }
}

/// A single-precision value as the double its shortest text means (`21.1f32` → `21.1`, not
/// `21.100000381…`), since the sender wrote 21.1.
fn narrow(f: f64) -> f64 {
    if !f.is_finite() {
        return f;
    }
    (f as f32).to_string().parse().unwrap_or(f)
}

/// IEEE 754 half precision to single.
fn half(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f32::from(bits & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn json(h: &str) -> String {
        decode(&hex(h)).unwrap().to_json()
    }

    #[test]
    fn rfc8949_appendix_a_examples_decode() {
        assert_eq!(json("00"), "0");
        assert_eq!(json("1903e8"), "1000");
        assert_eq!(json("1bffffffffffffffff"), "18446744073709551615");
        assert_eq!(json("3bffffffffffffffff"), "-18446744073709551616");
        assert_eq!(json("3863"), "-100");
        assert_eq!(json("f93e00"), "1.5");
        assert_eq!(json("f90001"), "0.000000059604645");
        assert_eq!(json("f97c00"), "null");
        assert_eq!(json("fa47c35000"), "100000.0");
        assert_eq!(json("fb3ff199999999999a"), "1.1");
        assert_eq!(json("f4"), "false");
        assert_eq!(json("f6"), "null");
        assert_eq!(json("6449455446"), "\"IETF\"");
        assert_eq!(json("4401020304"), "\"AQIDBA\"");
        assert_eq!(json("83010203"), "[1,2,3]");
        assert_eq!(json("a201020304"), r#"{"1":2,"3":4}"#);
        assert_eq!(json("a26161016162820203"), r#"{"a":1,"b":[2,3]}"#);
        assert_eq!(json("c074323031332d30332d32315432303a30343a30305a"), "\"2013-03-21T20:04:00Z\"");
        assert_eq!(json("9f018202039f0405ffff"), "[1,[2,3],[4,5]]");
        assert_eq!(json("bf6346756ef563416d7421ff"), r#"{"Fun":true,"Amt":-2}"#);
        assert_eq!(json("7f657374726561646d696e67ff"), "\"streaming\"");
    }

    #[test]
    fn a_single_float_reads_as_its_shortest_text() {
        assert_eq!(json("fa41a8cccd"), "21.1");
    }

    #[test]
    fn malformed_input_is_refused_with_where() {
        assert_eq!(decode(&hex("")).unwrap_err().what, "unexpected end");
        assert_eq!(decode(&hex("0000")).unwrap_err(), DecodeError { at: 1, what: "trailing bytes after the item" });
        assert_eq!(decode(&hex("5affffffff00")).unwrap_err().what, "length past the end");
        assert_eq!(decode(&hex("9bffffffffffffffff")).unwrap_err().what, "more items than bytes left");
        assert_eq!(decode(&hex("62c328")).unwrap_err().what, "text is not UTF-8");
        assert_eq!(decode(&hex("ff")).unwrap_err().what, "break outside an indefinite-length item");
        assert_eq!(decode(&[0x81; 100]).unwrap_err().what, "nested too deeply");
        assert_eq!(decode(&hex("1c")).unwrap_err().what, "reserved additional information");
    }
}
