//! Inputs: builds the SDK's values from the host's fields.
//!
//! A hook fetches all its inputs with one `inputs` call ([`with_inputs`]) into a buffer kept
//! from call to call, and decodes each SDK value in one pass over that block's records: one
//! crossing per hook instead of one per field. A block longer than the buffer is fetched again
//! into a buffer of its length (the host reports it and writes nothing until it fits).
//!
//! `init` reads the config with one `get` per entry ([`config`]), into a small scratch buffer
//! on the stack; an entry longer than it is read again into an allocation of exactly its
//! length. It runs once per instance, so it keeps the simplest path.
//!
//! Absent or unreadable fields become the type's "none" value, never a failure: the rule
//! decides what a missing field means.

use std::cell::RefCell;

use super::Fields;
use crate::{Access, Config, Downlink, Identity, MessageType, Method, Principal, Request, Uplink};
use sluice_abi::{block, field};

/// Bytes read in a single `get`; longer fields take a second call.
const SCRATCH: usize = 256;
/// An upper bound on a repeated field's entries, against a host that never says "past the end".
const MAX_ENTRIES: i32 = 65_536;
/// The block buffer's first size; it grows to the longest block seen.
const FIRST_BLOCK: usize = 4096;
/// A block buffer grown beyond this is released after the call (a rare huge payload).
const KEEP_BLOCK: usize = 64 * 1024;

thread_local! {
    static BLOCK: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Every input of the running hook, as the host's `inputs` block.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    block: &'a [u8],
}

impl<'a> Inputs<'a> {
    /// The inputs in `block` (`sluice_abi::block` encoding).
    pub fn new(block: &'a [u8]) -> Inputs<'a> {
        Inputs { block }
    }

    fn records(self) -> block::Records<'a> {
        block::records(self.block)
    }

    /// The first record of `field`, if any.
    pub fn bytes(self, field: i32) -> Option<&'a [u8]> {
        self.records().find(|(f, _, _)| *f == field).map(|(_, _, data)| data)
    }

    /// A numeric field, if present.
    pub fn int(self, field: i32) -> Option<i64> {
        self.bytes(field).and_then(block::int)
    }
}

/// Fetches the hook's inputs with one `inputs` call and runs `f` on them.
pub fn with_inputs<R>(host: &mut impl Fields, f: impl FnOnce(Inputs<'_>) -> R) -> R {
    // Taken out of the cell for the call, so that nothing borrowed survives into `f`.
    let mut buf = BLOCK.try_with(RefCell::take).unwrap_or_default();
    let len = fetch(host, &mut buf);
    let result = f(Inputs::new(buf.get(..len).unwrap_or_default()));
    if buf.len() <= KEEP_BLOCK {
        // A failed `try_with` (the thread is exiting) only loses the buffer.
        let _ = BLOCK.try_with(|cell| cell.replace(buf));
    }
    result
}

/// Fills `buf` with the block and returns its length (0 when the host gives none).
fn fetch(host: &mut impl Fields, buf: &mut Vec<u8>) -> usize {
    if buf.is_empty() {
        buf.resize(FIRST_BLOCK, 0);
    }
    let Ok(len) = usize::try_from(host.inputs(buf)) else { return 0 };
    if len <= buf.len() {
        return len;
    }
    buf.resize(len, 0);
    usize::try_from(host.inputs(buf)).ok().filter(|n| *n <= buf.len()).unwrap_or(0)
}

fn string(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    }
}

/// A `key\0value` entry (one without `\0` is a key with an empty value).
fn pair(data: &[u8]) -> (String, String) {
    match data.iter().position(|b| *b == 0) {
        Some(nul) => (string(&data[..nul]), string(&data[nul + 1..])),
        None => (string(data), String::new()),
    }
}

fn int_as<T: TryFrom<i64>>(data: &[u8]) -> Option<T> {
    block::int(data).and_then(|v| T::try_from(v).ok())
}

/// The request (authenticate, route).
pub fn request(inputs: Inputs<'_>) -> Request {
    let mut req = Request::default();
    let mut id = Identity::default();
    for (f, _, data) in inputs.records() {
        match f {
            field::METHOD => req.method = int_as::<u8>(data).and_then(Method::from_code).unwrap_or_default(),
            field::MESSAGE_TYPE if block::int(data) == Some(1) => req.message_type = MessageType::NonConfirmable,
            field::PATH_SEGMENT => req.path.push(string(data)),
            field::QUERY => req.query.push(string(data)),
            field::CONTENT_FORMAT => req.content_format = int_as(data),
            field::ACCEPT => req.accept = int_as(data),
            field::OBSERVE => req.observe = int_as(data),
            field::MAX_AGE => req.max_age = int_as(data),
            field::PEER => req.peer = string(data),
            field::PSK_IDENTITY => id.psk_identity = Some(string(data)),
            field::CERT_SUBJECT => id.cert_subject = Some(string(data)),
            field::CERT_SAN => id.cert_sans.push(string(data)),
            field::CERT_FINGERPRINT => id.cert_fingerprint = Some(string(data)),
            field::PAYLOAD => req.payload = data.to_vec(),
            _ => {}
        }
    }
    req.identity = id;
    req
}

/// The principal (route, authorize, uplink, downlink).
pub fn principal(inputs: Inputs<'_>) -> Principal {
    let mut who = Principal::default();
    for (f, _, data) in inputs.records() {
        match f {
            field::CLIENT_ID => who.client_id = string(data),
            field::USERNAME => who.username = Some(string(data)),
            field::ATTRIBUTE => who.attributes.push(pair(data)),
            _ => {}
        }
    }
    who
}

/// The question of authorize: the access (`None` for a value the ABI does not define) and the
/// topic.
pub fn access(inputs: Inputs<'_>) -> (Option<Access>, String) {
    let access = match inputs.int(field::ACCESS) {
        Some(0) => Some(Access::Publish),
        Some(1) => Some(Access::Subscribe),
        _ => None,
    };
    (access, inputs.bytes(field::TOPIC).map(string).unwrap_or_default())
}

/// The message on its way up.
pub fn uplink(inputs: Inputs<'_>) -> Uplink {
    let mut msg = Uplink::default();
    for (f, _, data) in inputs.records() {
        match f {
            field::TOPIC => msg.topic = string(data),
            field::PAYLOAD => msg.payload = data.to_vec(),
            field::CONTENT_FORMAT => msg.content_format = int_as(data),
            _ => {}
        }
    }
    msg
}

/// The message on its way down.
pub fn downlink(inputs: Inputs<'_>) -> Downlink {
    let mut msg = Downlink::default();
    for (f, _, data) in inputs.records() {
        match f {
            field::TOPIC => msg.topic = string(data),
            field::PAYLOAD => msg.payload = data.to_vec(),
            field::CONTENT_TYPE => msg.content_type = Some(string(data)),
            field::USER_PROPERTY => msg.user_properties.push(pair(data)),
            _ => {}
        }
    }
    msg
}

/// One byte field read with `get`, or `None` when absent or not readable in this hook.
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

/// Every entry of a repeated `key\0value` field read with `get`, in order.
pub fn pairs(host: &mut impl Fields, field: i32) -> Vec<(String, String)> {
    (0..MAX_ENTRIES).map_while(|i| bytes(host, field, i)).map(|entry| pair(&entry)).collect()
}

/// The rule's config, from every `CONFIG_ENTRY`.
pub fn config(host: &mut impl Fields) -> Config {
    Config::from_entries(pairs(host, field::CONFIG_ENTRY))
}
