//! Test helpers: packet builders and an endpoint driven on an explicit clock.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{MessageType, Packet};

use super::message::{self, opt};
use super::{Endpoint, EndpointConfig, Event, IncomingRequest, Transmit};

pub(crate) fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

/// A request packet with Uri-Path segments from "a/b".
pub(crate) fn request(kind: MessageType, code: u8, mid: u16, token: &[u8], path: &str) -> Packet {
    let mut p = message::packet(kind, code, mid, token);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        message::add(&mut p, opt::URI_PATH, segment.as_bytes().to_vec());
    }
    p
}

pub(crate) fn con_get(mid: u16, token: &[u8], path: &str) -> Packet {
    request(MessageType::Confirmable, 0x01, mid, token, path)
}

pub(crate) fn encode(p: &Packet) -> Vec<u8> {
    message::encode(p).unwrap()
}

pub(crate) fn decode(bytes: &[u8]) -> Packet {
    message::decode(bytes).unwrap()
}

pub(crate) fn uint(p: &Packet, number: u16) -> Option<u32> {
    p.get_first_option(number.into()).and_then(|v| message::decode_uint(v, 4))
}

pub(crate) fn block(p: &Packet, number: u16) -> Option<message::Block> {
    p.get_first_option(number.into()).map(|v| message::Block::decode(v).unwrap())
}

/// The config of an endpoint without its abuse limits (per-peer rate, Echo checks, observers
/// per peer): the message layer alone, which most tests exercise. The limits' own tests turn
/// each on.
pub(crate) fn unguarded() -> EndpointConfig {
    EndpointConfig {
        peer_rate: 0,
        amplification_factor: 0,
        max_observers_per_peer: usize::MAX,
        ..EndpointConfig::default()
    }
}

/// Echo checks as RFC 9175 §2.4 has them: no budget, every larger answer and every
/// registration from an unverified peer challenged.
pub(crate) fn strict() -> EndpointConfig {
    EndpointConfig { amplification_factor: 3, amplification_budget: 0, ..unguarded() }
}

/// Echo checks with an amplification budget of `bytes` per second (endpoint and prefix).
pub(crate) fn budgeted(bytes: u32) -> EndpointConfig {
    EndpointConfig {
        amplification_factor: 3,
        amplification_budget: bytes,
        amplification_budget_per_prefix: bytes,
        ..unguarded()
    }
}

/// An endpoint, a clock and the peer it talks to.
pub(crate) struct Harness {
    pub ep: Endpoint,
    pub now: Instant,
    pub peer: SocketAddr,
}

impl Harness {
    pub(crate) fn new() -> Self {
        Self::with(unguarded())
    }

    pub(crate) fn with(config: EndpointConfig) -> Self {
        let now = Instant::now();
        Harness { ep: Endpoint::new(config, now), now, peer: peer() }
    }

    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) {
        self.ep.handle_datagram(self.peer, bytes, self.now);
    }

    pub(crate) fn send(&mut self, p: &Packet) {
        self.send_bytes(&encode(p));
    }

    pub(crate) fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.ep.poll_transmit()).collect()
    }

    /// Everything sent, decoded.
    pub(crate) fn out(&mut self) -> Vec<Packet> {
        self.transmits().iter().map(|t| decode(&t.bytes)).collect()
    }

    /// The one message sent.
    pub(crate) fn one(&mut self) -> Packet {
        let mut out = self.out();
        assert_eq!(out.len(), 1, "expected one message, got {out:?}");
        out.remove(0)
    }

    pub(crate) fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ep.poll_event()).collect()
    }

    /// The one event, a request.
    pub(crate) fn request(&mut self) -> IncomingRequest {
        match self.events().as_slice() {
            [Event::Request(r)] => r.clone(),
            other => panic!("expected one request, got {other:?}"),
        }
    }

    /// Moves the clock forward by `d`, firing every timer on the way at its own time.
    pub(crate) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.ep.poll_timeout().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.ep.handle_timeout(self.now);
        }
        self.now = end;
        self.ep.handle_timeout(end);
    }
}

impl Harness {
    /// Fires timers up to `end` and returns what was sent, with the time it was sent.
    pub(crate) fn run_until(&mut self, end: Instant) -> Vec<(Instant, Packet)> {
        let mut sent = Vec::new();
        while let Some(at) = self.ep.poll_timeout().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.ep.handle_timeout(self.now);
            let now = self.now;
            sent.extend(self.out().into_iter().map(|p| (now, p)));
        }
        self.now = end;
        sent
    }

    /// A CON GET Observe=0 answered with `observe: true`; returns the relation.
    pub(crate) fn register(&mut self, mid: u16, token: &[u8], path: &str) -> super::ObserverId {
        let mut get = con_get(mid, token, path);
        message::add_uint(&mut get, opt::OBSERVE, 0);
        self.send(&get);
        let request = self.request();
        let response = super::Response { observe: true, ..Default::default() };
        let id = self.ep.respond(request.id, response, self.now).unwrap();
        let reply = self.one();
        assert!(uint(&reply, opt::OBSERVE).is_some());
        id
    }
}

pub(crate) fn ack(mid: u16) -> Vec<u8> {
    message::empty(MessageType::Acknowledgement, mid)
}

pub(crate) fn rst(mid: u16) -> Vec<u8> {
    message::empty(MessageType::Reset, mid)
}

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
