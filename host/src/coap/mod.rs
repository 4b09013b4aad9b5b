//! CoAP message layer (sans-IO): an RFC 7252 server endpoint with Observe (RFC 7641) and
//! block-wise transfers (RFC 7959), over coap-lite's wire format.
//!
//! [`Endpoint`] holds all protocol state and does no I/O: a driver (see
//! [`crate::transport::udp`]) feeds it datagrams and the time, and sends what it returns.
//!
//! - `message`: decoding, option checks, builders.
//! - `exchange`: Message-ID deduplication and CON retransmission.
//! - `request` / `response`: requests in, answers out (piggybacked or separate);
//!   `pending`: the requests with the app and the empty ACKs due for slow ones.
//! - `observe`: Observe relations and notifications.
//! - `block`: Block1 reassembly, Block2 slicing and its cache.
//! - `guard`: abuse limits: per-peer request rate (charged by handling time) and RFC 9175
//!   Echo checks against amplification towards forged source addresses.

mod api;
mod block;
mod config;
mod endpoint;
mod exchange;
mod guard;
mod message;
mod observe;
mod pending;
mod request;
mod response;
#[cfg(test)]
mod testing;

pub use api::{Event, GoneReason, IncomingRequest, Notification, ObserverId, RequestId, Response, Transmit};
pub use config::{EndpointConfig, Stats};
pub use endpoint::Endpoint;
#[cfg(any(test, feature = "fuzzing"))]
pub use endpoint::Footprint;
pub use message::DecodeError;
