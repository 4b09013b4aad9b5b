//! Just enough of a DTLS 1.2 ClientHello to route a new peer (sans-IO): is the first datagram
//! a ClientHello at all, and does it offer certificate (ECDHE_ECDSA) cipher suites?
//!
//! webrtc-dtls cannot serve PSK and certificates from one configuration, so the listener picks
//! the configuration from what the client offers (research §2.4 d). Anything that is not a
//! well-formed ClientHello in epoch 0 creates no state at all.

/// Record content type of a handshake.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// DTLS record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// DTLS handshake header: type, length, message_seq, fragment offset, fragment length.
const HANDSHAKE_HEADER: usize = 12;

/// The ECDHE_ECDSA suites webrtc-dtls implements (CCM, CCM_8, GCM, CBC).
const ECDHE_ECDSA: [u16; 4] = [0xc0ac, 0xc0ae, 0xc02b, 0xc00a];
/// The PSK suites webrtc-dtls implements (CCM, CCM_8, GCM).
const PSK: [u16; 3] = [0xc0a4, 0xc0a8, 0x00a8];

/// What a ClientHello offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The offered cipher suites, in the client's order.
    pub suites: Vec<u16>,
}

impl ClientHello {
    /// Parses the first record of a datagram; `None` unless it is an unfragmented
    /// ClientHello in epoch 0.
    pub fn parse(datagram: &[u8]) -> Option<ClientHello> {
        let record = datagram.get(..RECORD_HEADER)?;
        if record[0] != HANDSHAKE || record[1] != 0xfe || record[3..5] != [0, 0] {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([record[11], record[12]]));
        let body = datagram.get(RECORD_HEADER..RECORD_HEADER + length)?;
        let header = body.get(..HANDSHAKE_HEADER)?;
        if header[0] != CLIENT_HELLO || header[6..9] != [0, 0, 0] {
            return None;
        }
        let mut rest = body.get(HANDSHAKE_HEADER..)?;
        // client_version (2) and random (32)
        rest = rest.get(34..)?;
        let session_id = usize::from(*rest.first()?);
        rest = rest.get(1 + session_id..)?;
        let cookie = usize::from(*rest.first()?);
        rest = rest.get(1 + cookie..)?;
        let suites_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let suites = rest.get(2..2 + suites_len)?;
        let suites = suites.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        Some(ClientHello { suites })
    }

    /// Whether the client offers a certificate suite the gateway implements.
    pub fn offers_certificates(&self) -> bool {
        self.suites.iter().any(|s| ECDHE_ECDSA.contains(s))
    }

    /// Whether the client offers a PSK suite the gateway implements.
    pub fn offers_psk(&self) -> bool {
        self.suites.iter().any(|s| PSK.contains(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record offering `suites`, with an empty session id and cookie.
    pub(crate) fn hello(suites: &[u16]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend([7u8; 32]);
        body.extend([0, 0]);
        body.extend(((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend(s.to_be_bytes());
        }
        body.extend([1, 0]); // compression: null
        let len = body.len() as u32;
        let mut handshake = vec![CLIENT_HELLO];
        handshake.extend(&len.to_be_bytes()[1..]);
        handshake.extend([0, 0, 0, 0, 0]);
        handshake.extend(&len.to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    #[test]
    fn a_psk_hello_offers_no_certificates() {
        let parsed = ClientHello::parse(&hello(&[0xc0a8, 0x00ff])).unwrap();
        assert!(parsed.offers_psk());
        assert!(!parsed.offers_certificates());
    }

    #[test]
    fn a_certificate_hello_is_recognised() {
        let parsed = ClientHello::parse(&hello(&[0xc0a8, 0xc0ae])).unwrap();
        assert!(parsed.offers_certificates());
    }

    #[test]
    fn plaintext_coap_and_truncated_hellos_are_not_hellos() {
        assert_eq!(ClientHello::parse(&[0x40, 0x01, 0x12, 0x34]), None);
        assert_eq!(ClientHello::parse(&[]), None);
        let full = hello(&[0xc0a8]);
        for cut in 0..full.len() {
            assert_eq!(ClientHello::parse(&full[..cut]), None, "cut at {cut}");
        }
        let mut later_epoch = full.clone();
        later_epoch[4] = 1;
        assert_eq!(ClientHello::parse(&later_epoch), None);
    }
}
