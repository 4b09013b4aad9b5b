//! The inputs of a call: which hook may read which field, and the per-store arena they are
//! copied into.
//!
//! The arena is written in the encoding of `sluice1.inputs` (`sluice_abi::block`) as the
//! fields are pushed, so that import is one copy of it; `get` and `get_i64` look fields up in
//! the same bytes.

use std::ops::Range;

use sluice_sdk::abi::{block, field};
use sluice_sdk::{Access, Downlink, MessageType, Principal, Request, Uplink};

use super::Hook;

/// Input buffers larger than this are released after the call instead of kept for the next.
const KEEP_INPUT_BYTES: usize = 64 * 1024;

/// The inputs of the current call, in one reused byte arena.
#[derive(Default)]
pub(crate) struct Inputs {
    /// Every input as a `sluice_abi::block`.
    bytes: Vec<u8>,
    /// `(field, index, range of its data in bytes)`, numeric fields included (8 bytes).
    entries: Vec<(i32, u32, Range<usize>)>,
}

impl Inputs {
    pub(super) fn clear(&mut self) {
        if self.bytes.capacity() > KEEP_INPUT_BYTES {
            self.bytes = Vec::new();
        }
        self.bytes.clear();
        self.entries.clear();
    }

    fn push(&mut self, field: i32, index: usize, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        // The limits on a request and a message keep every length far below `i32::MAX`.
        let (wire_index, wire_len) = (i32::try_from(index).unwrap_or(i32::MAX), i32::try_from(len).unwrap_or(i32::MAX));
        self.bytes.extend_from_slice(&block::header(field, wire_index, wire_len));
        let start = self.bytes.len();
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.entries.push((field, index, start..self.bytes.len()));
    }

    fn text(&mut self, field: i32, value: Option<&str>) {
        if let Some(value) = value {
            self.push(field, 0, &[value.as_bytes()]);
        }
    }

    fn list(&mut self, field: i32, values: &[String]) {
        for (i, value) in values.iter().enumerate() {
            self.push(field, i, &[value.as_bytes()]);
        }
    }

    fn pairs(&mut self, field: i32, values: &[(String, String)]) {
        for (i, (k, v)) in values.iter().enumerate() {
            self.push(field, i, &[k.as_bytes(), b"\0", v.as_bytes()]);
        }
    }

    fn int(&mut self, field: i32, value: Option<i64>) {
        if let Some(value) = value {
            self.push(field, 0, &[&value.to_le_bytes()]);
        }
    }

    /// Every input, as `sluice1.inputs` gives them.
    pub(super) fn block(&self) -> &[u8] {
        &self.bytes
    }

    pub(super) fn find(&self, field: i32, index: u32) -> Option<&[u8]> {
        let (_, _, range) = self.entries.iter().find(|(f, i, _)| *f == field && *i == index)?;
        self.bytes.get(range.clone())
    }

    pub(super) fn find_int(&self, field: i32) -> Option<i64> {
        self.find(field, 0).and_then(block::int)
    }

    /// The request's fields (authenticate, route).
    pub(crate) fn request(&mut self, req: &Request) {
        self.int(field::METHOD, Some(i64::from(req.method.code())));
        let kind = match req.message_type {
            MessageType::Confirmable => 0,
            MessageType::NonConfirmable => 1,
        };
        self.int(field::MESSAGE_TYPE, Some(kind));
        self.list(field::PATH_SEGMENT, &req.path);
        self.list(field::QUERY, &req.query);
        self.int(field::CONTENT_FORMAT, req.content_format.map(i64::from));
        self.int(field::ACCEPT, req.accept.map(i64::from));
        self.int(field::OBSERVE, req.observe.map(i64::from));
        self.int(field::MAX_AGE, req.max_age.map(i64::from));
        self.text(field::PEER, Some(&req.peer));
        self.push(field::PAYLOAD, 0, &[&req.payload]);
        let id = &req.identity;
        self.text(field::PSK_IDENTITY, id.psk_identity.as_deref());
        self.text(field::CERT_SUBJECT, id.cert_subject.as_deref());
        self.list(field::CERT_SAN, &id.cert_sans);
        self.text(field::CERT_FINGERPRINT, id.cert_fingerprint.as_deref());
    }

    /// The principal's fields (route, authorize, uplink, downlink).
    pub(crate) fn principal(&mut self, who: &Principal) {
        self.text(field::CLIENT_ID, Some(&who.client_id));
        self.text(field::USERNAME, who.username.as_deref());
        self.pairs(field::ATTRIBUTE, &who.attributes);
    }

    /// The question of authorize.
    pub(crate) fn authorize(&mut self, access: Access, topic: &str) {
        let access = match access {
            Access::Publish => 0,
            Access::Subscribe => 1,
        };
        self.int(field::ACCESS, Some(access));
        self.text(field::TOPIC, Some(topic));
    }

    /// The message of uplink.
    pub(crate) fn uplink(&mut self, msg: &Uplink) {
        self.text(field::TOPIC, Some(&msg.topic));
        self.push(field::PAYLOAD, 0, &[&msg.payload]);
        self.int(field::CONTENT_FORMAT, msg.content_format.map(i64::from));
    }

    /// The message of downlink.
    pub(crate) fn downlink(&mut self, msg: &Downlink) {
        self.text(field::TOPIC, Some(&msg.topic));
        self.push(field::PAYLOAD, 0, &[&msg.payload]);
        self.text(field::CONTENT_TYPE, msg.content_type.as_deref());
        self.pairs(field::USER_PROPERTY, &msg.user_properties);
    }
}

/// True when `hook` may read `field` (the plan's contract B).
pub(super) fn readable(hook: Hook, field: i32) -> bool {
    use Hook::*;
    match field {
        field::CONFIG_ENTRY | field::NOW_MS => true,
        field::PAYLOAD => hook != Authorize && hook != Init,
        field::CONTENT_FORMAT => matches!(hook, Authenticate | Route | Uplink),
        field::METHOD..=field::MAX_AGE | field::PEER | field::PSK_IDENTITY..=field::CERT_FINGERPRINT => {
            matches!(hook, Authenticate | Route)
        }
        field::CLIENT_ID | field::USERNAME | field::ATTRIBUTE => matches!(hook, Route | Authorize | Uplink | Downlink),
        field::ACCESS => hook == Authorize,
        field::TOPIC => matches!(hook, Authorize | Uplink | Downlink),
        field::CONTENT_TYPE | field::USER_PROPERTY => hook == Downlink,
        _ => false,
    }
}

/// True for the fields `get_i64` reads and `set_i64` writes.
pub(super) fn numeric(field: i32) -> bool {
    matches!(
        field,
        field::METHOD
            | field::MESSAGE_TYPE
            | field::CONTENT_FORMAT
            | field::ACCEPT
            | field::OBSERVE
            | field::MAX_AGE
            | field::ACCESS
            | field::NOW_MS
            | field::OUT_QOS
            | field::OUT_RETAIN
            | field::OUT_EXPIRY
            | field::OUT_CODE
            | field::OUT_CONTENT_FORMAT
    )
}

/// True when `hook` may write the output `field`.
pub(super) fn writable(hook: Hook, field: i32) -> bool {
    use field::*;
    match hook {
        Hook::Init => field == OUT_REASON,
        Hook::Authenticate => {
            matches!(field, OUT_CLIENT_ID | OUT_USERNAME | OUT_ATTRIBUTE | OUT_TOKEN | OUT_CODE | OUT_REASON)
        }
        Hook::Route => matches!(
            field,
            OUT_TOPIC
                | OUT_QOS
                | OUT_RETAIN
                | OUT_EXPIRY
                | OUT_USER_PROPERTY
                | OUT_CODE
                | OUT_REASON
                | OUT_PAYLOAD
                | OUT_CONTENT_FORMAT
        ),
        Hook::Authorize => false,
        Hook::Uplink | Hook::Downlink => matches!(field, OUT_PAYLOAD | OUT_CONTENT_FORMAT | OUT_CODE | OUT_REASON),
    }
}
