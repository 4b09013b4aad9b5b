//! Datagram transports: drivers that own a socket and a [`crate::coap::Endpoint`], feed it
//! datagrams and time, and send what it produces.
//!
//! - [`udp`]: CoAP over plain UDP.
//! - [`dtls`]: CoAP over DTLS 1.2 (coaps), PSK and X.509 on one port; it carries each peer's
//!   proven identity with its requests.
//!
//! Each driver is bound with the [`Service`] that answers its requests (the gateway) and hands
//! it every complete request together with its own [`Link`], the way back (see [`link`]). Each
//! driver has its own endpoint, so request and observer ids are only meaningful with their
//! link. Both drivers run the same loop ([`Serving`] says how), which also drains on shutdown.

mod core;
pub mod dtls;
pub mod link;
mod mmsg;
pub mod udp;

pub use core::Serving;
pub use link::{Command, Link, LinkId, RequestTask, Service};

#[cfg(test)]
pub(crate) mod testing;
