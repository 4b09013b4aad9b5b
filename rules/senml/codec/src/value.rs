//! The data model both decoders produce, and its JSON text.

/// A decoded CBOR or JSON item.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null` (CBOR null and undefined).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer (CBOR's whole range, -2^64 ..= 2^64 - 1).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A UTF-8 string.
    Text(String),
    /// A byte string (CBOR only); JSON shows it base64url-encoded without padding
    /// (RFC 8949 §6.1, and SenML's `vd`).
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, in the order written.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value as JSON text. Map keys that are not strings are written as the JSON text of
    /// the key (`2` becomes `"2"`); non-finite floats become `null`.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON text to `out`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(f) if f.is_finite() => out.push_str(&float_text(*f)),
            Value::Float(_) => out.push_str("null"),
            Value::Text(s) => write_string(s, out),
            Value::Bytes(b) => write_string(&base64url(b), out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match k {
                        Value::Text(s) => write_string(s, out),
                        other => write_string(&other.to_json(), out),
                    }
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// The value of a text key in a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => {
                entries.iter().rev().find(|(k, _)| matches!(k, Value::Text(t) if t == key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The number as `f64`, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// The shortest text that reads back as `f`; whole numbers keep a `.0` so they stay floats.
fn float_text(f: f64) -> String {
    let text = f.to_string();
    if text.contains(['.', 'e', 'E']) || text.len() > 17 { text } else { format!("{text}.0") }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// base64url without padding (RFC 4648 §5).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_escapes_and_keeps_floats_floats() {
        let v = Value::Map(vec![
            (Value::Text("a\"b".into()), Value::Float(21.0)),
            (Value::Int(2), Value::Array(vec![Value::Null, Value::Bool(true), Value::Int(-5), Value::Float(0.5)])),
            (Value::Text("d".into()), Value::Bytes(vec![0xfb, 0xff])),
            (Value::Text("nl".into()), Value::Text("x\ny\u{1}".into())),
        ]);
        assert_eq!(v.to_json(), r#"{"a\"b":21.0,"2":[null,true,-5,0.5],"d":"-_8","nl":"x\ny\u0001"}"#);
    }

    #[test]
    fn base64url_has_no_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
    }
}
