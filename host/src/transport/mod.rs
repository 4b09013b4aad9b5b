//! Datagram transports: drivers that own a socket and a [`crate::coap::Endpoint`], feed it
//! datagrams and time, and send what it produces.
//!
//! - [`udp`]: CoAP over plain UDP.
//! - [`dtls`]: CoAP over DTLS 1.2 (coaps), PSK and X.509 on one port; it carries each peer's
//!   proven identity with its requests.
//!
//! Both drivers speak the same [`udp::Handle`] commands. Each has its own endpoint, so their
//! request and observer ids are separate namespaces: the DTLS driver sets [`DTLS_TAG`] in every
//! id it hands out, and the gateway sends each command to the transport its id came from.

mod core;
pub mod dtls;
mod mmsg;
pub mod udp;

use crate::coap::{ObserverId, RequestId};

/// The bit set in the request and observer ids of the DTLS transport.
pub const DTLS_TAG: u64 = 1 << 63;

/// Whether a request came over DTLS.
pub fn request_is_dtls(id: RequestId) -> bool {
    id.0 & DTLS_TAG != 0
}

/// Whether an observer was registered over DTLS.
pub fn observer_is_dtls(id: ObserverId) -> bool {
    id.0 & DTLS_TAG != 0
}
