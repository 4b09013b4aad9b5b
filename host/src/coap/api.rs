//! The values an [`Endpoint`](super::Endpoint) exchanges with the app that drives it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::message::code;

/// Names a request delivered by [`Event::Request`] until it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Names an Observe relation (RFC 7641) from registration until it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObserverId(pub u64);

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub peer: SocketAddr,
    /// The encoded CoAP message.
    pub bytes: Vec<u8>,
}

/// A complete request: deduplicated, checked, and with its body reassembled from Block1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingRequest {
    /// Pass to [`Endpoint::respond`](super::Endpoint::respond).
    pub id: RequestId,
    /// The client.
    pub peer: SocketAddr,
    /// Whether the (last block of the) request was a CON.
    pub confirmable: bool,
    /// Code detail 1..=7: GET, POST, PUT, DELETE, FETCH, PATCH, iPATCH.
    pub method: u8,
    /// Uri-Path segments.
    pub path: Vec<String>,
    /// Uri-Query entries.
    pub query: Vec<String>,
    /// Content-Format of the payload.
    pub content_format: Option<u16>,
    /// Accept: the Content-Format the client wants back.
    pub accept: Option<u16>,
    /// Observe: 0 registers, 1 deregisters.
    pub observe: Option<u32>,
    /// Max-Age, if the client sent one.
    pub max_age: Option<u32>,
    /// The request token (0–8 bytes).
    pub token: Vec<u8>,
    /// The whole body.
    pub payload: Vec<u8>,
    /// Who the transport proved the peer to be (DTLS: the PSK identity or the client
    /// certificate); `None` over plain UDP. Set by the transport, never by the endpoint.
    pub identity: Option<Arc<sluice_sdk::Identity>>,
}

impl IncomingRequest {
    /// Whether this is a GET with Observe=0, i.e. an Observe registration.
    pub fn is_observe_registration(&self) -> bool {
        self.method == code::GET && self.observe == Some(0)
    }
}

/// Something the app must know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request; answer it with [`Endpoint::respond`](super::Endpoint::respond) exactly once.
    Request(IncomingRequest),
    /// An Observe relation ended on the client's side or at the endpoint's initiative.
    ObserverGone {
        /// The relation.
        id: ObserverId,
        /// Why it ended.
        reason: GoneReason,
    },
}

/// Why an Observe relation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoneReason {
    /// The client answered a notification with RST.
    Reset,
    /// A CON notification was not acknowledged after `max_retransmit` retransmissions.
    Timeout,
    /// The client registered again for the same resource; a new relation took its place.
    Replaced,
    /// The client sent a GET with Observe=1, or re-registered and the app did not accept it.
    Deregistered,
}

/// The app's answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Raw code byte (`class << 5 | detail`), e.g. `sluice_sdk::Code(..).0`.
    pub code: u8,
    /// Content-Format of the payload.
    pub content_format: Option<u16>,
    /// Max-Age in seconds.
    pub max_age: Option<u32>,
    /// Location-Path segments (for 2.01 Created).
    pub location_path: Vec<String>,
    /// The body; sent block-wise (Block2) when larger than a block.
    pub payload: Vec<u8>,
    /// Register an Observe relation. Only meaningful for a GET with Observe=0 answered 2.xx.
    pub observe: bool,
    /// The payload is a credential (a connection-mode token): logs show its length only.
    pub secret: bool,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            code: code::CONTENT,
            content_format: None,
            max_age: None,
            location_path: Vec::new(),
            payload: Vec::new(),
            observe: false,
            secret: false,
        }
    }
}

/// A notification for an observer (always 2.05 Content).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notification {
    /// Content-Format of the payload.
    pub content_format: Option<u16>,
    /// Max-Age in seconds.
    pub max_age: Option<u32>,
    /// The representation; the first block only goes out when larger than a block.
    pub payload: Vec<u8>,
    /// Send as CON (acknowledged, retransmitted, queued behind the one in flight) or NON.
    pub confirmable: bool,
}
