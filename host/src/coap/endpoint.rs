//! The sans-IO CoAP server endpoint: datagrams and `Instant`s in, datagrams and events out.
//!
//! The driver feeds [`Endpoint::handle_datagram`] and [`Endpoint::handle_timeout`] (at
//! [`Endpoint::poll_timeout`]), and after each call drains [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`]. The app answers requests with [`Endpoint::respond`] and feeds
//! observers with [`Endpoint::notify`]. Requests are handled in `request.rs`, answers in
//! `response.rs`, Observe in `observe.rs`, block-wise transfers in `block.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{MessageType, Packet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use super::block::Blocks;
use super::exchange::{Dedup, Due, Outbox, Owner};
use super::message::{self, Block, code};
use super::observe::Observers;
use super::{EndpointConfig, Event, GoneReason, RequestId, Stats, Transmit};

/// A request delivered to the app and not answered yet.
#[derive(Debug)]
pub(crate) struct Pending {
    pub peer: SocketAddr,
    pub mid: u16,
    pub token: Vec<u8>,
    pub confirmable: bool,
    /// An empty ACK went out already: the answer is a separate response.
    pub acked: bool,
    pub method: u8,
    pub observe: Option<u32>,
    pub path_key: String,
    pub uri_key: String,
    /// The last Block1 block of the request, echoed in the response.
    pub block1: Option<Block>,
    /// The Block2 block the client asked for.
    pub block2: Option<Block>,
    /// No-Response option value (RFC 7967).
    pub no_response: u8,
}

impl Pending {
    /// Whether the client asked not to get an answer with this code (RFC 7967 §2.1).
    pub(crate) fn suppresses(&self, code: u8) -> bool {
        let bit = match code >> 5 {
            2 => 0x02,
            4 => 0x08,
            5 => 0x10,
            _ => 0,
        };
        self.no_response & bit != 0
    }
}

/// A CoAP server endpoint (RFC 7252, RFC 7641 Observe, RFC 7959 block-wise), without I/O.
#[derive(Debug)]
pub struct Endpoint {
    pub(crate) config: EndpointConfig,
    pub(crate) stats: Stats,
    pub(crate) dedup: Dedup,
    pub(crate) outbox: Outbox,
    pub(crate) pending: HashMap<RequestId, Pending>,
    /// (when to send an empty ACK, request) for CON requests, in arrival order.
    pub(crate) separate: VecDeque<(Instant, RequestId)>,
    pub(crate) observers: Observers,
    pub(crate) blocks: Blocks,
    pub(crate) events: VecDeque<Event>,
    pub(crate) next_request: u64,
    pub(crate) next_etag: u32,
    transmits: VecDeque<Transmit>,
    next_mid: u16,
    rng: StdRng,
}

impl Endpoint {
    /// Creates an endpoint; out-of-range config values are brought into range (see
    /// [`EndpointConfig::validate`] to reject them instead).
    pub fn new(config: EndpointConfig) -> Self {
        let config = config.normalized();
        let mut rng = StdRng::from_rng(&mut rand::rng());
        Endpoint {
            dedup: Dedup::new(config.exchange_lifetime, config.non_lifetime, config.max_dedup_entries),
            blocks: Blocks::new(config.exchange_lifetime, config.max_block_transfers),
            outbox: Outbox::default(),
            pending: HashMap::new(),
            separate: VecDeque::new(),
            observers: Observers::default(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: Stats::default(),
            next_request: 0,
            next_etag: rng.random(),
            next_mid: rng.random(),
            rng,
            config,
        }
    }

    /// Handles one datagram from `peer`. Never panics; malformed input is counted and dropped
    /// (a CON whose header is readable gets an RST).
    pub fn handle_datagram(&mut self, peer: SocketAddr, bytes: &[u8], now: Instant) {
        self.stats.received += 1;
        let header = match message::peek_header(bytes) {
            Ok(header) => header,
            Err(error) => {
                self.stats.malformed += 1;
                debug!(%peer, %error, "Dropped an unreadable datagram.");
                return;
            }
        };
        let packet = match message::decode(bytes) {
            Ok(packet) => packet,
            Err(error) => {
                self.stats.malformed += 1;
                debug!(%peer, mid = header.mid, %error, "Malformed message.");
                if header.kind == MessageType::Confirmable {
                    self.send_reset(peer, header.mid);
                }
                return;
            }
        };
        match (header.kind, header.code) {
            (MessageType::Acknowledgement, _) => self.on_ack(peer, header.mid, now),
            (MessageType::Reset, code::EMPTY) => self.on_reset(peer, header.mid),
            (MessageType::Confirmable, code::EMPTY) => {
                debug!(%peer, mid = header.mid, "Answered a CoAP ping with RST.");
                self.send_reset(peer, header.mid);
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, c) if c != code::EMPTY && c >> 5 == 0 => {
                self.handle_request(peer, header, packet, now);
            }
            (kind, c) => {
                self.stats.malformed += 1;
                debug!(%peer, mid = header.mid, code = c, ?kind, "Rejected a message that is no request.");
                if kind == MessageType::Confirmable {
                    self.send_reset(peer, header.mid);
                }
            }
        }
    }

    fn on_ack(&mut self, peer: SocketAddr, mid: u16, now: Instant) {
        match self.outbox.remove(&(peer, mid)) {
            Some(Owner::Notification(id)) => self.notification_acked(id, now),
            Some(Owner::Response) => debug!(%peer, mid, "Separate response acknowledged."),
            None => debug!(%peer, mid, "Ignored an ACK that matches nothing."),
        }
    }

    fn on_reset(&mut self, peer: SocketAddr, mid: u16) {
        let observer = match self.outbox.remove(&(peer, mid)) {
            Some(Owner::Notification(id)) => Some(id),
            Some(Owner::Response) => None,
            None => match self.observers.by_non_mid(peer, mid) {
                Some(id) => Some(id),
                None => {
                    debug!(%peer, mid, "Ignored an RST that matches nothing.");
                    return;
                }
            },
        };
        self.stats.resets_received += 1;
        debug!(%peer, mid, "Peer rejected our message with RST.");
        if let Some(id) = observer {
            self.drop_observer(id, Some(GoneReason::Reset));
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should be called next (it may be early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.separate.front().map(|s| s.0),
            self.outbox.next_deadline(),
            self.dedup.next_deadline(),
            self.blocks.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`: empty ACKs for slow answers, retransmissions, and the
    /// expiry of deduplication and block-wise state.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.separate.front() {
            if at > now {
                break;
            }
            self.separate.pop_front();
            let Some(pending) = self.pending.get_mut(&id) else { continue };
            if !pending.confirmable || pending.acked {
                continue;
            }
            pending.acked = true;
            let (peer, mid) = (pending.peer, pending.mid);
            let ack = message::empty(MessageType::Acknowledgement, mid);
            if let Some(seen) = self.dedup.get_mut(&(peer, mid)) {
                seen.reply = Some(ack.clone());
            }
            self.stats.separate_acks += 1;
            debug!(%peer, mid, "Sent an empty ACK; the response will follow separately.");
            self.transmit(peer, ack);
        }
        while let Some(due) = self.outbox.poll_due(now, self.config.max_retransmit) {
            match due {
                Due::Retransmit { peer, bytes } => {
                    self.stats.retransmissions += 1;
                    self.transmit(peer, bytes);
                }
                Due::GaveUp { peer, mid, owner } => {
                    self.stats.transmit_timeouts += 1;
                    debug!(%peer, mid, "Gave up on an unacknowledged CON.");
                    if let Owner::Notification(id) = owner {
                        self.drop_observer(id, Some(GoneReason::Timeout));
                    }
                }
            }
        }
        let pending = &mut self.pending;
        self.dedup.expire(now, |seen| {
            if let Some(id) = seen.request.and_then(|id| pending.remove(&id).map(|_| id)) {
                debug!(request = id.0, "Forgot a request the app never answered.");
            }
        });
        self.blocks.expire(now);
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts a datagram the transport could not send.
    pub fn record_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    pub(crate) fn transmit(&mut self, peer: SocketAddr, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { peer, bytes });
    }

    pub(crate) fn send_reset(&mut self, peer: SocketAddr, mid: u16) {
        self.stats.resets_sent += 1;
        self.transmit(peer, message::empty(MessageType::Reset, mid));
    }

    pub(crate) fn next_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// Sends `packet` as a CON with a fresh Message-ID and retransmits it until ACK or RST.
    pub(crate) fn send_con(&mut self, peer: SocketAddr, mut packet: Packet, owner: Owner, now: Instant) -> Option<u16> {
        let mid = self.next_mid();
        packet.header.set_type(MessageType::Confirmable);
        packet.header.message_id = mid;
        let bytes = message::encode(&packet)?;
        let factor = self.rng.random_range(1.0..=self.config.ack_random_factor);
        let timeout = Duration::try_from_secs_f64(self.config.ack_timeout.as_secs_f64() * factor)
            .unwrap_or(self.config.ack_timeout)
            .max(Duration::from_millis(1));
        self.outbox.insert((peer, mid), bytes.clone(), owner, timeout, now);
        self.transmit(peer, bytes);
        Some(mid)
    }
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;
    use crate::coap::testing::*;
    use crate::coap::{Response, message::opt};

    fn rejects_silently(bytes: &[u8]) {
        let mut h = Harness::new();
        h.send_bytes(bytes);
        assert!(h.transmits().is_empty());
        assert!(h.events().is_empty());
        assert_eq!(h.ep.stats().malformed, 1);
        assert_eq!(h.ep.poll_timeout(), None, "no state kept");
    }

    fn rejects_with_rst(bytes: &[u8], mid: u16) {
        let mut h = Harness::new();
        h.send_bytes(bytes);
        assert_eq!(h.transmits()[0].bytes, rst(mid));
        assert!(h.events().is_empty());
        assert_eq!(h.ep.stats().malformed, 1);
        assert_eq!(h.ep.stats().resets_sent, 1);
    }

    #[test]
    fn truncated_header_is_dropped_silently() {
        rejects_silently(&[0x40, 0x01, 0x12]);
    }

    #[test]
    fn wrong_version_is_dropped_silently() {
        rejects_silently(&[0x80, 0x01, 0x12, 0x34]);
    }

    #[test]
    fn token_length_nine_is_dropped_silently() {
        rejects_silently(&[0x49, 0x01, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn truncated_token_is_dropped_silently() {
        rejects_silently(&[0x48, 0x01, 0x12, 0x34, 1, 2]);
    }

    #[test]
    fn option_delta_fifteen_in_a_con_gets_rst() {
        rejects_with_rst(&[0x40, 0x01, 0x12, 0x34, 0xf1, 0x00], 0x1234);
    }

    #[test]
    fn option_length_fifteen_in_a_con_gets_rst() {
        rejects_with_rst(&[0x40, 0x01, 0x12, 0x34, 0xbf, b't'], 0x1234);
    }

    #[test]
    fn truncated_option_in_a_con_gets_rst() {
        rejects_with_rst(&[0x40, 0x01, 0x12, 0x34, 0xb4, b't', b'e'], 0x1234);
    }

    #[test]
    fn payload_marker_without_payload_in_a_con_gets_rst() {
        rejects_with_rst(&[0x40, 0x02, 0x12, 0x34, 0xb1, b'x', 0xff], 0x1234);
    }

    #[test]
    fn malformed_non_is_dropped_silently() {
        rejects_silently(&[0x50, 0x01, 0x12, 0x34, 0xbf, b't']);
    }

    #[test]
    fn empty_con_ping_gets_rst() {
        let mut h = Harness::new();
        h.send_bytes(&[0x40, 0x00, 0xab, 0xcd]);
        assert_eq!(h.transmits()[0].bytes, [0x70, 0x00, 0xab, 0xcd]);
        assert_eq!(h.ep.stats().malformed, 0);
    }

    #[test]
    fn con_carrying_a_response_code_gets_rst_and_a_non_is_dropped() {
        rejects_with_rst(&[0x40, 0x45, 0x12, 0x34], 0x1234);
        rejects_with_rst(&[0x40, 0x20, 0x12, 0x34], 0x1234); // class 1 is reserved
        rejects_silently(&[0x50, 0x45, 0x12, 0x34]);
    }

    #[test]
    fn unmatched_ack_and_rst_are_ignored() {
        let mut h = Harness::new();
        h.send_bytes(&ack(5));
        h.send_bytes(&rst(6));
        assert!(h.transmits().is_empty());
        assert_eq!(h.ep.stats().malformed, 0);
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic() {
        let mut h = Harness::new();
        let mut rng = rand::rng();
        let mut valid = con_get(1, &[1, 2, 3], "a/b");
        message::add_uint(&mut valid, opt::BLOCK1, 0x1e);
        message::add_uint(&mut valid, opt::OBSERVE, 0);
        valid.payload = b"hello".to_vec();
        let valid = encode(&valid);
        for i in 0..20_000u32 {
            let mut bytes = if i % 2 == 0 {
                let mut b = vec![0u8; (i % 40) as usize];
                rng.fill_bytes(&mut b);
                b
            } else {
                valid.clone()
            };
            if let Some(byte) = bytes.get_mut((i as usize * 7) % valid.len()) {
                *byte ^= rng.random::<u8>();
            }
            bytes.truncate(bytes.len() - (i as usize % 3).min(bytes.len()));
            h.send_bytes(&bytes);
            for event in h.events() {
                if let Event::Request(r) = event {
                    h.ep.respond(r.id, Response::default(), h.now);
                }
            }
            h.transmits();
        }
    }

    #[test]
    fn duplicate_con_is_replayed_byte_identically_and_delivered_once() {
        let mut h = Harness::new();
        let get = [0x42, 0x01, 0x12, 0x34, 0xaa, 0xbb, 0xb4, b't', b'e', b's', b't'];
        h.send_bytes(&get);
        let request = h.request();
        let response = Response { payload: b"22.5".to_vec(), ..Default::default() };
        h.ep.respond(request.id, response, h.now);
        let first = h.transmits();
        assert_eq!(first.len(), 1);
        h.send_bytes(&get);
        assert_eq!(h.transmits(), first);
        assert!(h.events().is_empty());
        assert_eq!(h.ep.stats().duplicates, 1);
        assert_eq!(h.ep.stats().requests, 1);
    }

    #[test]
    fn duplicate_non_is_dropped() {
        let mut h = Harness::new();
        let get = [0x50, 0x01, 0x12, 0x34, 0xb4, b't', b'e', b's', b't'];
        h.send_bytes(&get);
        h.request();
        h.send_bytes(&get);
        assert!(h.events().is_empty());
        assert!(h.transmits().is_empty());
        assert_eq!(h.ep.stats().duplicates, 1);
    }

    #[test]
    fn duplicate_con_still_processed_gets_an_empty_ack_and_a_separate_answer() {
        let mut h = Harness::new();
        h.send(&con_get(0x1234, &[7], "slow"));
        let request = h.request();
        h.send(&con_get(0x1234, &[7], "slow"));
        assert_eq!(h.transmits()[0].bytes, ack(0x1234));
        h.ep.respond(request.id, Response::default(), h.now);
        let response = h.one();
        assert_eq!(response.header.get_type(), MessageType::Confirmable);
        assert_ne!(response.header.message_id, 0x1234);
        assert_eq!(response.get_token(), [7]);
        h.send(&con_get(0x1234, &[7], "slow"));
        assert_eq!(h.transmits()[0].bytes, ack(0x1234), "the empty ACK is replayed");
        h.advance(secs(2));
        assert!(h.out().iter().all(|p| p.header.get_type() == MessageType::Confirmable));
        assert!(h.events().is_empty());
    }

    #[test]
    fn message_id_is_new_again_after_exchange_lifetime() {
        let mut h = Harness::new();
        let get = [0x40, 0x01, 0x12, 0x34, 0xb1, b'x'];
        h.send_bytes(&get);
        let request = h.request();
        h.ep.respond(request.id, Response::default(), h.now);
        h.advance(secs(246));
        h.send_bytes(&get);
        assert!(h.events().is_empty());
        h.advance(secs(1));
        h.transmits();
        h.send_bytes(&get);
        assert_eq!(h.events().len(), 1);
    }

    #[test]
    fn full_dedup_cache_forgets_the_oldest_message() {
        let mut h = Harness::with(EndpointConfig { max_dedup_entries: 2, ..Default::default() });
        for mid in 1..=3 {
            h.send_bytes(&[0x50, 0x01, 0, mid, 0xb1, b'x']);
        }
        assert_eq!(h.events().len(), 3);
        assert_eq!(h.ep.stats().dedup_evictions, 1);
        h.send_bytes(&[0x50, 0x01, 0, 1, 0xb1, b'x']);
        assert_eq!(h.events().len(), 1, "MID 1 was forgotten");
    }

    #[test]
    fn random_factor_of_one_gives_exactly_ack_timeout() {
        let config = EndpointConfig { ack_random_factor: 1.0, ..Default::default() };
        let mut h = Harness::with(config);
        let start = h.now;
        h.send(&con_get(1, &[], "x"));
        let request = h.request();
        h.advance(secs(1));
        h.ep.respond(request.id, Response::default(), h.now);
        h.transmits();
        assert_eq!(h.ep.poll_timeout(), Some(start + secs(3)));
    }

    #[test]
    fn request_never_answered_is_forgotten_with_its_message_id() {
        let mut h = Harness::new();
        h.send(&con_get(1, &[], "x"));
        let request = h.request();
        h.advance(secs(300));
        assert!(h.ep.pending.is_empty());
        assert_eq!(h.ep.poll_timeout(), None);
        assert_eq!(h.ep.respond(request.id, Response::default(), h.now), None);
        assert_eq!(h.out().len(), 1, "only the empty ACK at 1 s");
    }
}
