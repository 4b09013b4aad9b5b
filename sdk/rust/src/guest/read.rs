//! Inputs: builds the SDK's values from the host's fields.
//!
//! Every field is read with one `get` into a small scratch buffer on the stack; a field longer
//! than the buffer is read again into an allocation of exactly its length (the host reports
//! the full length on the first call). Absent or unreadable fields become the type's "none"
//! value, never a failure: the rule decides what a missing field means.

use super::Fields;
use crate::{Config, Downlink, Identity, MessageType, Method, Principal, Request, Uplink};
use sluice_abi::{ABSENT_I64, field};

/// Bytes read in a single `get`; longer fields take a second call.
const SCRATCH: usize = 256;
/// An upper bound on a repeated field's entries, against a host that never says "past the end".
const MAX_ENTRIES: i32 = 65_536;

/// One byte field, or `None` when absent or not readable in this hook.
pub fn bytes(host: &mut impl Fields, field: i32, index: i32) -> Option<Vec<u8>> {
    let mut scratch = [0u8; SCRATCH];
    let len = usize::try_from(host.get(field, index, &mut scratch)).ok()?;
    if let Some(small) = scratch.get(..len) {
        return Some(small.to_vec());
    }
    let mut buf = vec![0u8; len];
    let again = usize::try_from(host.get(field, index, &mut buf)).unwrap_or(0);
    buf.truncate(again.min(len));
    Some(buf)
}

/// One text field (invalid UTF-8 is replaced, never a failure).
pub fn text(host: &mut impl Fields, field: i32, index: i32) -> Option<String> {
    bytes(host, field, index).map(into_string)
}

/// Every entry of a repeated text field, in order.
pub fn list(host: &mut impl Fields, field: i32) -> Vec<String> {
    (0..MAX_ENTRIES).map_while(|i| text(host, field, i)).collect()
}

/// Every entry of a repeated `key\0value` field, in order (an entry without `\0` is a key with
/// an empty value).
pub fn pairs(host: &mut impl Fields, field: i32) -> Vec<(String, String)> {
    list(host, field)
        .into_iter()
        .map(|entry| match entry.split_once('\0') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (entry, String::new()),
        })
        .collect()
}

/// A numeric field, or `None` when absent.
pub fn int(host: &mut impl Fields, field: i32) -> Option<i64> {
    Some(host.get_i64(field, 0)).filter(|v| *v != ABSENT_I64)
}

fn int_as<T: TryFrom<i64>>(host: &mut impl Fields, field: i32) -> Option<T> {
    int(host, field).and_then(|v| T::try_from(v).ok())
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The request (authenticate, route).
pub fn request(host: &mut impl Fields) -> Request {
    Request {
        method: int_as::<u8>(host, field::METHOD).and_then(Method::from_code).unwrap_or_default(),
        message_type: match int(host, field::MESSAGE_TYPE) {
            Some(1) => MessageType::NonConfirmable,
            _ => MessageType::Confirmable,
        },
        path: list(host, field::PATH_SEGMENT),
        query: list(host, field::QUERY),
        content_format: int_as(host, field::CONTENT_FORMAT),
        accept: int_as(host, field::ACCEPT),
        observe: int_as(host, field::OBSERVE),
        max_age: int_as(host, field::MAX_AGE),
        peer: text(host, field::PEER, 0).unwrap_or_default(),
        identity: Identity {
            psk_identity: text(host, field::PSK_IDENTITY, 0),
            cert_subject: text(host, field::CERT_SUBJECT, 0),
            cert_sans: list(host, field::CERT_SAN),
            cert_fingerprint: text(host, field::CERT_FINGERPRINT, 0),
        },
        payload: bytes(host, field::PAYLOAD, 0).unwrap_or_default(),
    }
}

/// The principal (route, authorize, uplink, downlink).
pub fn principal(host: &mut impl Fields) -> Principal {
    Principal {
        client_id: text(host, field::CLIENT_ID, 0).unwrap_or_default(),
        username: text(host, field::USERNAME, 0),
        attributes: pairs(host, field::ATTRIBUTE),
    }
}

/// The rule's config, from every `CONFIG_ENTRY`.
pub fn config(host: &mut impl Fields) -> Config {
    Config::from_entries(pairs(host, field::CONFIG_ENTRY))
}

/// The message on its way up.
pub fn uplink(host: &mut impl Fields) -> Uplink {
    Uplink {
        topic: text(host, field::TOPIC, 0).unwrap_or_default(),
        payload: bytes(host, field::PAYLOAD, 0).unwrap_or_default(),
        content_format: int_as(host, field::CONTENT_FORMAT),
    }
}

/// The message on its way down.
pub fn downlink(host: &mut impl Fields) -> Downlink {
    Downlink {
        topic: text(host, field::TOPIC, 0).unwrap_or_default(),
        payload: bytes(host, field::PAYLOAD, 0).unwrap_or_default(),
        content_type: text(host, field::CONTENT_TYPE, 0),
        user_properties: pairs(host, field::USER_PROPERTY),
    }
}
