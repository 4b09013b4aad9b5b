//! Just enough CoAP for a load generator: request templates built once with coap-lite and
//! patched per message (type, Message-ID, token), and a reader of the fields a reply carries
//! that allocates nothing.

use anyhow::Context;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};

/// Every token the generator sends is this long: a 2-byte run tag, then a 6-byte sequence number.
pub const TOKEN_LEN: usize = 8;

/// The token of message `seq` of run `run`.
pub fn token(run: u16, seq: u64) -> [u8; TOKEN_LEN] {
    let mut t = [0u8; TOKEN_LEN];
    t[..2].copy_from_slice(&run.to_be_bytes());
    t[2..].copy_from_slice(&seq.to_be_bytes()[2..]);
    t
}

/// The run tag and sequence number in a token the generator made, if it is one.
pub fn parse_token(token: &[u8]) -> Option<(u16, u64)> {
    let t: [u8; TOKEN_LEN] = token.try_into().ok()?;
    let run = u16::from_be_bytes([t[0], t[1]]);
    let mut seq = [0u8; 8];
    seq[2..].copy_from_slice(&t[2..]);
    Some((run, u64::from_be_bytes(seq)))
}

/// A request's bytes without type, Message-ID, token and payload, ready to be stamped.
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
    /// The number of the template's last option (new options go after it).
    last_option: u16,
}

impl Template {
    /// A request for `path_and_query` (`/mqtt/a/b?c=d1`), with an Observe option when given.
    pub fn new(method: RequestType, path_and_query: &str, observe: Option<u32>) -> anyhow::Result<Template> {
        let mut p = Packet::new();
        p.header.set_type(MessageType::NonConfirmable);
        p.header.code = MessageClass::Request(method);
        p.set_token(vec![0; TOKEN_LEN]);
        if let Some(o) = observe {
            p.set_observe_value(o);
        }
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let mut last_option = if observe.is_some() { 6 } else { 0 };
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
            last_option = 11;
        }
        for q in query.split('&').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
            last_option = 15;
        }
        let bytes = p.to_bytes().with_context(|| format!("encoding a request for {path_and_query}"))?;
        Ok(Template { bytes, last_option })
    }

    /// The same request carrying an Echo option (RFC 9175) with `echo`: the repetition a
    /// gateway asks an unverified client for with a 4.01 and an Echo value.
    pub fn with_echo(&self, echo: &[u8]) -> Template {
        let mut bytes = self.bytes.clone();
        let delta = ECHO - self.last_option;
        // Echo values are at most 40 bytes (RFC 9175 §2.2.1); the delta is 13 … 268.
        let len = echo.len().min(40);
        let (len_nibble, len_ext) = if len < 13 { (len as u8, None) } else { (13, Some((len - 13) as u8)) };
        bytes.push(0xd0 | len_nibble);
        bytes.push((delta - 13) as u8);
        bytes.extend(len_ext);
        bytes.extend_from_slice(&echo[..len]);
        Template { bytes, last_option: ECHO }
    }

    /// Writes the request into `buf` (cleared first).
    pub fn stamp(&self, buf: &mut Vec<u8>, confirmable: bool, mid: u16, token: &[u8; TOKEN_LEN], payload: &[u8]) {
        buf.clear();
        buf.extend_from_slice(&self.bytes);
        // Version 1, type, token length 8.
        buf[0] = 0x40 | (if confirmable { 0 } else { 1 << 4 }) | TOKEN_LEN as u8;
        buf[2..4].copy_from_slice(&mid.to_be_bytes());
        buf[4..4 + TOKEN_LEN].copy_from_slice(token);
        if !payload.is_empty() {
            buf.push(0xff);
            buf.extend_from_slice(payload);
        }
    }
}

/// The message type of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Confirmable: must be acknowledged.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement.
    Ack,
    /// Reset.
    Rst,
}

/// What a received datagram says, borrowed from it.
#[derive(Debug)]
pub struct Reply<'a> {
    /// Message type.
    pub kind: Kind,
    /// Code byte (0 for an empty message, 0x44 for 2.04).
    pub code: u8,
    /// Message-ID.
    pub mid: u16,
    /// Token.
    pub token: &'a [u8],
    /// Whether it carries an Observe option.
    pub observe: bool,
    /// Payload (after the 0xFF marker).
    pub payload: &'a [u8],
    /// The value of an Echo option (RFC 9175): a 4.01 with one asks for the request again,
    /// carrying it.
    pub echo: Option<&'a [u8]>,
}

/// Reads the header, token and options of a datagram; None if it is not well-formed CoAP.
pub fn parse(buf: &[u8]) -> Option<Reply<'_>> {
    let (&b0, _) = buf.split_first()?;
    if b0 >> 6 != 1 {
        return None;
    }
    let kind = match (b0 >> 4) & 3 {
        0 => Kind::Con,
        1 => Kind::Non,
        2 => Kind::Ack,
        _ => Kind::Rst,
    };
    let tkl = usize::from(b0 & 0x0f);
    let code = *buf.get(1)?;
    let mid = u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]);
    let token = buf.get(4..4 + tkl)?;
    let mut i = 4 + tkl;
    let mut number = 0u32;
    let mut observe = false;
    let mut echo = None;
    while let Some(&b) = buf.get(i) {
        if b == 0xff {
            return Some(Reply { kind, code, mid, token, observe, payload: buf.get(i + 1..)?, echo });
        }
        i += 1;
        let (delta, len) = (u32::from(b >> 4), usize::from(b & 0x0f));
        let delta = extended(buf, &mut i, delta)?;
        let len = extended(buf, &mut i, len as u32)? as usize;
        number += delta;
        if number == 6 {
            observe = true;
        }
        if number == u32::from(ECHO) {
            echo = buf.get(i..i + len);
        }
        i += len;
        if i > buf.len() {
            return None;
        }
    }
    Some(Reply { kind, code, mid, token, observe, payload: &[], echo })
}

fn extended(buf: &[u8], i: &mut usize, nibble: u32) -> Option<u32> {
    match nibble {
        13 => {
            let v = u32::from(*buf.get(*i)?) + 13;
            *i += 1;
            Some(v)
        }
        14 => {
            let v = u32::from(u16::from_be_bytes([*buf.get(*i)?, *buf.get(*i + 1)?])) + 269;
            *i += 2;
            Some(v)
        }
        15 => None,
        n => Some(n),
    }
}

/// An empty ACK for `mid` (to acknowledge a Confirmable response or notification).
pub fn empty_ack(mid: u16) -> [u8; 4] {
    let m = mid.to_be_bytes();
    [0x60, 0, m[0], m[1]]
}

/// A CoAP ping (empty Confirmable); a CoAP endpoint answers it with a Reset.
pub fn ping(mid: u16) -> [u8; 4] {
    let m = mid.to_be_bytes();
    [0x40, 0, m[0], m[1]]
}

/// `"2.04"` for 0x44.
pub fn code_string(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

/// The Echo option's number (RFC 9175).
pub const ECHO: u16 = 252;
/// 4.01 Unauthorized: with an Echo option, "repeat the request with this Echo value".
pub const UNAUTHORIZED: u8 = 0x81;

/// Whether a reply asks for the request again with an Echo value; the value if so.
pub fn echo_challenge<'a>(r: &Reply<'a>) -> Option<&'a [u8]> {
    if r.code == UNAUTHORIZED { r.echo } else { None }
}

/// 2.04 Changed.
pub const CHANGED: u8 = 0x44;
/// 2.05 Content.
pub const CONTENT: u8 = 0x45;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_stamped_template_parses_back() {
        let t = Template::new(RequestType::Get, "/mqtt/a/b?c=d1", Some(0)).unwrap();
        let mut buf = Vec::new();
        t.stamp(&mut buf, true, 0x1234, &token(7, 99), b"hi");
        let p = Packet::from_bytes(&buf).unwrap();
        assert_eq!(p.header.message_id, 0x1234);
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(p.get_observe_value(), Some(Ok(0)));
        assert_eq!(p.payload, b"hi");
        let r = parse(&buf).unwrap();
        assert_eq!((r.kind, r.mid, r.observe, r.payload), (Kind::Con, 0x1234, true, &b"hi"[..]));
        assert_eq!(parse_token(r.token), Some((7, 99)));
    }

    #[test]
    fn an_echo_option_goes_after_the_last_option_and_parses_back() {
        for (path, observe) in [("/mqtt/a/b?c=d1", Some(0)), ("/ps/x", None), ("/", Some(1)), ("", None)] {
            let t = Template::new(RequestType::Get, path, observe).unwrap();
            for echo in [&b"12345678"[..], &[7u8; 20][..]] {
                let mut buf = Vec::new();
                t.with_echo(echo).stamp(&mut buf, true, 1, &token(1, 2), b"p");
                let p = Packet::from_bytes(&buf).unwrap();
                assert_eq!(p.get_option(CoapOption::Unknown(ECHO)).unwrap().front().unwrap(), echo, "{path}");
                assert_eq!(p.get_observe_value().map(|o| o.unwrap()), observe, "{path}");
                assert_eq!(p.payload, b"p");
                let r = parse(&buf).unwrap();
                assert_eq!((r.echo, r.payload), (Some(echo), &b"p"[..]));
            }
        }
    }

    #[test]
    fn codes_read_as_dotted() {
        assert_eq!(code_string(CHANGED), "2.04");
        assert_eq!(code_string(0x84), "4.04");
    }
}
