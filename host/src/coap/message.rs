//! The CoAP wire format (RFC 7252 §3): checked decoding of datagrams, the request options the
//! endpoint understands, and small builders for the messages it sends.
//!
//! Parsing and serialisation are coap-lite's; this module adds what coap-lite leaves out:
//! the version and token checks, the payload marker without payload, option formats and
//! criticality, and Block option values with 20-bit block numbers.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};

/// Option numbers (RFC 7252 §12.2, RFC 7641, RFC 7959, RFC 7967, RFC 9175, RFC 8613).
pub(crate) mod opt {
    pub const IF_MATCH: u16 = 1;
    pub const URI_HOST: u16 = 3;
    pub const ETAG: u16 = 4;
    pub const IF_NONE_MATCH: u16 = 5;
    pub const OBSERVE: u16 = 6;
    pub const URI_PORT: u16 = 7;
    pub const LOCATION_PATH: u16 = 8;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const LOCATION_QUERY: u16 = 20;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const PROXY_URI: u16 = 35;
    pub const PROXY_SCHEME: u16 = 39;
    pub const SIZE1: u16 = 60;
    pub const ECHO: u16 = 252;
    pub const NO_RESPONSE: u16 = 258;
    pub const REQUEST_TAG: u16 = 292;
}

/// Code bytes (`class << 5 | detail`) the endpoint produces itself.
pub(crate) mod code {
    pub const EMPTY: u8 = 0x00;
    pub const GET: u8 = 0x01;
    pub const CONTENT: u8 = 0x45;
    pub const CONTINUE: u8 = 0x5f;
    pub const BAD_REQUEST: u8 = 0x80;
    pub const UNAUTHORIZED: u8 = 0x81;
    pub const BAD_OPTION: u8 = 0x82;
    pub const METHOD_NOT_ALLOWED: u8 = 0x85;
    pub const REQUEST_ENTITY_INCOMPLETE: u8 = 0x88;
    pub const REQUEST_ENTITY_TOO_LARGE: u8 = 0x8d;
    pub const SERVICE_UNAVAILABLE: u8 = 0xa3;
    pub const PROXYING_NOT_SUPPORTED: u8 = 0xa5;
}

/// Why a datagram could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than the four header bytes.
    #[error("datagram of {0} bytes is shorter than the CoAP header")]
    TooShort(usize),
    /// The version field is not 1.
    #[error("unsupported CoAP version {0}")]
    Version(u8),
    /// The token length nibble is 9..=15.
    #[error("token length {0} is over 8")]
    TokenLength(u8),
    /// The datagram ends inside the token.
    #[error("token of {0} bytes is truncated")]
    TokenTruncated(u8),
    /// The header is readable but the options or payload are not.
    #[error("malformed options or payload: {0}")]
    Body(String),
}

impl DecodeError {
    /// Whether the header (type and Message ID) could still be read, so a CON can get an RST.
    pub fn header_readable(&self) -> bool {
        matches!(self, DecodeError::Body(_))
    }
}

/// Why a request is answered by the endpoint with an error instead of reaching the app.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// An unrecognised critical option, or a critical option repeated or of a bad length.
    #[error("Unrecognized critical option {0}")]
    BadOption(u16),
    /// Proxy-Uri or Proxy-Scheme: this endpoint is no proxy.
    #[error("Proxying not supported")]
    Proxy,
    /// A method code outside GET..iPATCH.
    #[error("Method 0.{0:02} not allowed")]
    Method(u8),
    /// Anything else the client got wrong (non-UTF-8 Uri-Path, Block SZX 7).
    #[error("{0}")]
    BadRequest(&'static str),
}

impl RequestError {
    /// The response code for this error; the one place that maps request errors to codes.
    pub(crate) fn code(&self) -> u8 {
        match self {
            RequestError::BadOption(_) => code::BAD_OPTION,
            RequestError::Proxy => code::PROXYING_NOT_SUPPORTED,
            RequestError::Method(_) => code::METHOD_NOT_ALLOWED,
            RequestError::BadRequest(_) => code::BAD_REQUEST,
        }
    }
}

/// The fixed header, read before anything else.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Header {
    pub kind: MessageType,
    pub code: u8,
    pub mid: u16,
}

/// Reads the fixed header and checks the version and token length.
pub(crate) fn peek_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let [b0, code, m0, m1, rest @ ..] = bytes else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    if b0 >> 6 != 1 {
        return Err(DecodeError::Version(b0 >> 6));
    }
    let token_len = b0 & 0x0f;
    if token_len > 8 {
        return Err(DecodeError::TokenLength(token_len));
    }
    if rest.len() < usize::from(token_len) {
        return Err(DecodeError::TokenTruncated(token_len));
    }
    let kind = match (b0 >> 4) & 0x03 {
        0 => MessageType::Confirmable,
        1 => MessageType::NonConfirmable,
        2 => MessageType::Acknowledgement,
        _ => MessageType::Reset,
    };
    Ok(Header { kind, code: *code, mid: u16::from_be_bytes([*m0, *m1]) })
}

/// Decodes a whole datagram; call [`peek_header`] first.
pub(crate) fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let packet = Packet::from_bytes(bytes).map_err(|e| DecodeError::Body(e.to_string()))?;
    if u8::from(packet.header.code) == code::EMPTY && bytes.len() != 4 {
        return Err(DecodeError::Body("empty message with token, options or payload".into()));
    }
    // coap-lite accepts a payload marker followed by nothing (RFC 7252 §3: a format error).
    // Option encodings are canonical, so the head length can be recomputed from the options.
    if packet.payload.is_empty() && bytes.len() > head_len(&packet) {
        return Err(DecodeError::Body("payload marker without payload".into()));
    }
    Ok(packet)
}

/// Length of header, token and options as encoded on the wire.
fn head_len(packet: &Packet) -> usize {
    fn ext(x: usize) -> usize {
        match x {
            0..13 => 0,
            13..269 => 1,
            _ => 2,
        }
    }
    let mut previous = 0u16;
    let mut len = 4 + packet.get_token().len();
    for (&number, values) in packet.options() {
        for value in values {
            len += 1 + ext(usize::from(number - previous)) + ext(value.len()) + value.len();
            previous = number;
        }
    }
    len
}

/// Serialises a packet; coap-lite's 1280-byte limit is not applied (Block2 keeps us small).
pub(crate) fn encode(packet: &Packet) -> Option<Vec<u8>> {
    match packet.to_bytes_unlimited() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::warn!(%error, "Could not encode a CoAP message.");
            None
        }
    }
}

/// Cuts the payload of `packet` (a diagnostic) so that the message encodes to at most `limit`
/// bytes, at a character boundary when the payload is UTF-8 text. Returns whether it was cut.
pub(crate) fn cut_payload(packet: &mut Packet, limit: usize) -> bool {
    let size = encode(packet).map_or(0, |bytes| bytes.len());
    if size <= limit {
        return false;
    }
    let keep = packet.payload.len().saturating_sub(size - limit);
    let keep = std::str::from_utf8(&packet.payload).map_or(keep, |text| text.floor_char_boundary(keep));
    packet.payload.truncate(keep);
    true
}

/// The four bytes of an Empty message (ACK, RST).
pub(crate) fn empty(kind: MessageType, mid: u16) -> Vec<u8> {
    let t: u8 = match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let [m0, m1] = mid.to_be_bytes();
    vec![0x40 | (t << 4), code::EMPTY, m0, m1]
}

/// A message of the given type and code; MID and options are added by the caller.
pub(crate) fn packet(kind: MessageType, code: u8, mid: u16, token: &[u8]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(kind);
    packet.header.code = MessageClass::from(code);
    packet.header.message_id = mid;
    packet.set_token(token.to_vec());
    packet
}

/// Adds an option by number.
pub(crate) fn add(packet: &mut Packet, number: u16, value: Vec<u8>) {
    packet.add_option(CoapOption::from(number), value);
}

/// Adds a uint option in its shortest form.
pub(crate) fn add_uint(packet: &mut Packet, number: u16, value: u32) {
    add(packet, number, encode_uint(value));
}

/// The shortest big-endian encoding of a uint option value (0 is zero-length).
pub(crate) fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.get(skip..).unwrap_or_default().to_vec()
}

/// Decodes a uint option value of at most `max` bytes.
pub(crate) fn decode_uint(value: &[u8], max: usize) -> Option<u32> {
    (value.len() <= max.min(4)).then(|| value.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// A Block1 or Block2 option value (RFC 7959 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    /// Decodes 0–3 bytes; SZX 7 (BERT) is not valid over UDP.
    pub(crate) fn decode(value: &[u8]) -> Result<Block, RequestError> {
        let raw = decode_uint(value, 3).ok_or(RequestError::BadRequest("Block option too long"))?;
        let szx = (raw & 0x07) as u8;
        if szx == 7 {
            return Err(RequestError::BadRequest("Block option with SZX 7"));
        }
        Ok(Block { num: raw >> 4, more: raw & 0x08 != 0, szx })
    }

    /// The option value.
    pub(crate) fn encode(self) -> Vec<u8> {
        encode_uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 0x07))
    }

    /// The block size in bytes.
    pub(crate) fn size(self) -> usize {
        16 << self.szx
    }

    /// The byte offset of this block, if it fits in `usize`.
    pub(crate) fn offset(self) -> usize {
        (self.num as usize).saturating_mul(self.size())
    }
}

/// SZX for a block size (a power of two in 16..=1024).
pub(crate) fn szx_of(size: usize) -> u8 {
    (size.clamp(16, 1024).ilog2() - 4) as u8
}

/// A request's options as the endpoint understands them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestOptions {
    pub path: Vec<String>,
    pub query: Vec<String>,
    pub content_format: Option<u16>,
    pub accept: Option<u16>,
    pub observe: Option<u32>,
    pub max_age: Option<u32>,
    pub block1: Option<Block>,
    pub block2: Option<Block>,
    pub size1: Option<u32>,
    pub request_tag: Option<Vec<u8>>,
    /// No-Response (RFC 7967): bit 1 suppresses 2.xx, bit 3 4.xx, bit 4 5.xx answers.
    pub no_response: u8,
}

impl RequestOptions {
    /// Uri-Path joined with "/": the key of an Observe relation.
    pub(crate) fn path_key(&self) -> String {
        self.path.join("/")
    }

    /// Uri-Path and Uri-Query: the key of block-wise state.
    pub(crate) fn uri_key(&self) -> String {
        let mut key = self.path_key();
        if !self.query.is_empty() {
            key.push('?');
            key.push_str(&self.query.join("&"));
        }
        key
    }
}

/// How an option is checked: repeatable or not, and its length range (RFC 7252 §5.4.3, §5.10).
struct Format {
    repeatable: bool,
    len: (usize, usize),
}

fn format(number: u16) -> Option<Format> {
    use opt::*;
    let (repeatable, len) = match number {
        IF_MATCH => (true, (0, 8)),
        URI_HOST => (false, (1, 255)),
        ETAG => (true, (1, 8)),
        IF_NONE_MATCH => (false, (0, 0)),
        OBSERVE | BLOCK2 | BLOCK1 => (false, (0, 3)),
        URI_PORT | CONTENT_FORMAT | ACCEPT => (false, (0, 2)),
        LOCATION_PATH | LOCATION_QUERY | URI_PATH | URI_QUERY => (true, (0, 255)),
        MAX_AGE | SIZE2 | SIZE1 => (false, (0, 4)),
        PROXY_URI => (false, (1, 1034)),
        PROXY_SCHEME => (false, (1, 255)),
        ECHO => (false, (1, 40)),
        NO_RESPONSE => (false, (0, 1)),
        REQUEST_TAG => (true, (0, 8)),
        _ => return None,
    };
    Some(Format { repeatable, len })
}

/// Checks a request and extracts its options; errors become the endpoint's own answer.
///
/// Critical options (odd numbers) that are unknown, repeated when not repeatable, or of a bad
/// length are rejected (RFC 7252 §5.4.1, §5.4.5); such elective options are ignored.
pub(crate) fn parse_request(packet: &Packet) -> Result<(u8, RequestOptions), RequestError> {
    let mut options = RequestOptions::default();
    for (&number, values) in packet.options() {
        let critical = number & 1 == 1;
        let valid = format(number).is_some_and(|f| {
            (f.repeatable || values.len() <= 1) && values.iter().all(|v| (f.len.0..=f.len.1).contains(&v.len()))
        });
        if !valid {
            if critical {
                return Err(RequestError::BadOption(number));
            }
            continue;
        }
        let first = values.front().map(Vec::as_slice).unwrap_or_default();
        match number {
            opt::PROXY_URI | opt::PROXY_SCHEME => return Err(RequestError::Proxy),
            opt::URI_PATH => options.path = strings(values)?,
            opt::URI_QUERY => options.query = strings(values)?,
            opt::CONTENT_FORMAT => options.content_format = decode_uint(first, 2).map(|v| v as u16),
            opt::ACCEPT => options.accept = decode_uint(first, 2).map(|v| v as u16),
            opt::OBSERVE => options.observe = decode_uint(first, 3),
            opt::MAX_AGE => options.max_age = decode_uint(first, 4),
            opt::SIZE1 => options.size1 = decode_uint(first, 4),
            opt::BLOCK1 => options.block1 = Some(Block::decode(first)?),
            opt::BLOCK2 => options.block2 = Some(Block::decode(first)?),
            opt::REQUEST_TAG => options.request_tag = Some(first.to_vec()),
            opt::NO_RESPONSE => options.no_response = decode_uint(first, 1).map_or(0, |v| v as u8),
            _ => {}
        }
    }
    let method = u8::from(packet.header.code);
    if !(1..=7).contains(&method) {
        return Err(RequestError::Method(method & 0x1f));
    }
    Ok((method, options))
}

fn strings<'a>(values: impl IntoIterator<Item = &'a Vec<u8>>) -> Result<Vec<String>, RequestError> {
    values
        .into_iter()
        .map(|v| String::from_utf8(v.clone()))
        .collect::<Result<_, _>>()
        .map_err(|_| RequestError::BadRequest("Uri-Path or Uri-Query is not UTF-8"))
}

/// The decoder and request checks for the fuzz targets and their regression tests
/// (`crate::fuzzing`), reachable through the public [`Endpoint`](super::Endpoint) because this
/// module is private to `coap`. Compiled with the `fuzzing` feature (and in tests) only.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
impl super::Endpoint {
    /// Decodes a datagram the way [`Endpoint::handle_datagram`](super::Endpoint::handle_datagram)
    /// does: header first, then options and payload.
    pub fn decode_datagram(bytes: &[u8]) -> Result<Packet, DecodeError> {
        peek_header(bytes)?;
        decode(bytes)
    }

    /// Encodes a message as the endpoint sends it.
    pub fn encode_datagram(packet: &Packet) -> Option<Vec<u8>> {
        encode(packet)
    }

    /// Checks a request's options: its method, or the code it would be answered with. The
    /// Block values it carries are decoded, re-encoded and decoded again on the way.
    pub fn check_request(packet: &Packet) -> Result<u8, u8> {
        let (method, options) = parse_request(packet).map_err(|e| e.code())?;
        for block in [options.block1, options.block2].into_iter().flatten() {
            assert_eq!(Block::decode(&block.encode()), Ok(block), "a Block value does not round-trip");
            let _ = (block.size(), block.offset());
        }
        Ok(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnostic_is_cut_to_the_limit_at_a_character_boundary() {
        let mut reply = packet(MessageType::Acknowledgement, 0x80, 1, &[7]);
        reply.payload = "température élevée".as_bytes().to_vec();
        let whole = encode(&reply).unwrap().len();
        assert!(!cut_payload(&mut reply, whole), "it fits");
        assert!(cut_payload(&mut reply, whole - 8));
        let size = encode(&reply).unwrap().len();
        assert!(size <= whole - 8 && size >= whole - 10, "cut by 8 bytes, less at most one character");
        assert!(std::str::from_utf8(&reply.payload).is_ok());
    }

    #[test]
    fn header_of_a_get_is_read() {
        let header = peek_header(&[0x41, 0x01, 0x12, 0x34, 0xaa]).unwrap();
        assert_eq!(header.kind, MessageType::Confirmable);
        assert_eq!((header.code, header.mid), (0x01, 0x1234));
    }

    #[test]
    fn truncated_header_is_unreadable() {
        let error = peek_header(&[0x40, 0x01, 0x12]).unwrap_err();
        assert!(matches!(error, DecodeError::TooShort(3)));
        assert!(!error.header_readable());
    }

    #[test]
    fn version_two_is_unreadable() {
        assert!(matches!(peek_header(&[0x80, 0x01, 0, 1]), Err(DecodeError::Version(2))));
    }

    #[test]
    fn token_length_nine_is_unreadable() {
        let bytes = [0x49, 0x01, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert!(matches!(peek_header(&bytes), Err(DecodeError::TokenLength(9))));
    }

    #[test]
    fn truncated_token_is_unreadable() {
        assert!(matches!(peek_header(&[0x44, 0x01, 0, 1, 1]), Err(DecodeError::TokenTruncated(4))));
    }

    #[test]
    fn get_with_uri_path_decodes() {
        let packet = decode(&[0x40, 0x01, 0x12, 0x34, 0xb4, b't', b'e', b's', b't']).unwrap();
        let (method, options) = parse_request(&packet).unwrap();
        assert_eq!(method, 1);
        assert_eq!(options.path, ["test"]);
    }

    #[test]
    fn option_delta_fifteen_is_malformed() {
        let error = decode(&[0x40, 0x01, 0, 1, 0xf0]).unwrap_err();
        assert!(error.header_readable());
    }

    #[test]
    fn option_length_fifteen_is_malformed() {
        assert!(decode(&[0x40, 0x01, 0, 1, 0xbf, b'x']).is_err());
    }

    #[test]
    fn truncated_option_is_malformed() {
        assert!(decode(&[0x40, 0x01, 0, 1, 0xb4, b't', b'e']).is_err());
        assert!(decode(&[0x40, 0x01, 0, 1, 0xbd]).is_err());
    }

    #[test]
    fn payload_marker_without_payload_is_malformed() {
        assert!(decode(&[0x40, 0x02, 0, 1, 0xb1, b'x', 0xff]).is_err());
        // An option value ending in 0xff is not a payload marker.
        assert!(decode(&[0x40, 0x01, 0, 1, 0x41, 0xff]).is_ok());
    }

    #[test]
    fn empty_message_with_token_is_malformed() {
        assert!(decode(&[0x41, 0x00, 0, 1, 7]).is_err());
        assert!(decode(&[0x40, 0x00, 0, 1]).is_ok());
    }

    #[test]
    fn extended_option_numbers_round_trip() {
        let mut p = packet(MessageType::Confirmable, code::GET, 7, &[1, 2]);
        add(&mut p, opt::URI_PATH, b"a-rather-long-path-segment".to_vec());
        add(&mut p, opt::REQUEST_TAG, vec![9]);
        p.payload = vec![0; 300];
        let bytes = encode(&p).unwrap();
        assert_eq!(decode(&bytes).unwrap(), p);
        assert_eq!(head_len(&p), bytes.len() - 301);
    }

    #[test]
    fn unknown_critical_option_is_rejected_and_elective_ignored() {
        let mut p = packet(MessageType::Confirmable, code::GET, 1, &[]);
        add(&mut p, 2048, vec![1]); // elective, unknown
        assert!(parse_request(&p).is_ok());
        add(&mut p, 9, vec![]); // OSCORE, critical, unsupported
        assert_eq!(parse_request(&p), Err(RequestError::BadOption(9)));
    }

    #[test]
    fn repeated_block1_is_a_bad_option() {
        let mut p = packet(MessageType::Confirmable, 0x03, 1, &[]);
        add(&mut p, opt::BLOCK1, vec![0x0e]);
        add(&mut p, opt::BLOCK1, vec![0x1e]);
        assert_eq!(parse_request(&p), Err(RequestError::BadOption(27)));
    }

    #[test]
    fn proxy_uri_is_not_supported() {
        let mut p = packet(MessageType::Confirmable, code::GET, 1, &[]);
        add(&mut p, opt::PROXY_URI, b"coap://x".to_vec());
        assert_eq!(parse_request(&p).unwrap_err().code(), 0xa5);
    }

    #[test]
    fn method_eight_is_not_allowed() {
        let p = decode(&[0x40, 0x08, 0, 1]).unwrap();
        assert_eq!(parse_request(&p), Err(RequestError::Method(8)));
    }

    #[test]
    fn non_utf8_path_is_a_bad_request() {
        let p = decode(&[0x40, 0x01, 0, 1, 0xb1, 0xff]).unwrap();
        assert_eq!(parse_request(&p).unwrap_err().code(), code::BAD_REQUEST);
    }

    #[test]
    fn block_values_round_trip_with_twenty_bit_numbers() {
        let block = Block { num: 0xfffff, more: true, szx: 6 };
        assert_eq!(Block::decode(&block.encode()), Ok(block));
        assert_eq!(Block::decode(&[]), Ok(Block { num: 0, more: false, szx: 0 }));
        assert!(Block::decode(&[0x07]).is_err());
        assert_eq!(block.size(), 1024);
        assert_eq!(szx_of(1024), 6);
        assert_eq!(szx_of(16), 0);
    }

    #[test]
    fn uints_use_the_shortest_encoding() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(0x0102), vec![1, 2]);
        assert_eq!(decode_uint(&[1, 2], 2), Some(0x0102));
        assert_eq!(decode_uint(&[1, 2, 3], 2), None);
    }

    #[test]
    fn empty_ack_bytes() {
        assert_eq!(empty(MessageType::Acknowledgement, 0x1234), [0x60, 0, 0x12, 0x34]);
        assert_eq!(empty(MessageType::Reset, 1), [0x70, 0, 0, 1]);
    }
}
