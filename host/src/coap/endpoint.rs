//! The sans-IO CoAP server endpoint: datagrams and `Instant`s in, datagrams and events out.
//!
//! The driver feeds [`Endpoint::handle_datagram`] and [`Endpoint::handle_timeout`] (at
//! [`Endpoint::poll_timeout`]), and after each call drains [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`]. The app answers requests with [`Endpoint::respond`] and feeds
//! observers with [`Endpoint::notify`]. Requests are handled in `request.rs`, answers in
//! `response.rs`, Observe in `observe.rs`, block-wise transfers in `block.rs`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageType, Packet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use super::block::Blocks;
use super::exchange::{Dedup, Due, Outbox, Owner};
use super::guard::{Budget, PeerCheck, RateLimiter, Screen};
use super::message::{self, code, opt};
use super::observe::Observers;
use super::pending::Unanswered;
use super::{EndpointConfig, Event, GoneReason, Stats, Transmit};

/// How much state an endpoint holds, for the fuzzer's checks that it stays within its limits.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    /// Block-wise bodies held (uploads and cached answers).
    pub block_transfers: usize,
    /// The largest of them, in bytes.
    pub largest_block_body: usize,
    /// Entries of the block-wise recency queue.
    pub block_touches: usize,
    /// Observe relations.
    pub observers: usize,
    /// Peers remembered as verified.
    pub verified_peers: usize,
    /// Requests with the app.
    pub unanswered: usize,
}

/// What a 4.01 Echo challenge says, longest first: the longest that keeps the message within
/// the amplification allowance goes (a client that does not repeat the request by itself
/// shows it to its user).
pub(super) const CHALLENGE_DIAGNOSTICS: [&str; 2] =
    ["Echo required: repeat the request with this Echo (RFC 9175)", "repeat with this Echo (RFC 9175)"];

/// Puts the longest of [`CHALLENGE_DIAGNOSTICS`] that fits `allowance` bytes into a 4.01.
pub(super) fn explain_challenge(reply: &mut Packet, allowance: usize) {
    for text in CHALLENGE_DIAGNOSTICS {
        reply.payload = text.as_bytes().to_vec();
        if message::encode(reply).is_some_and(|bytes| bytes.len() <= allowance) {
            return;
        }
    }
    reply.payload.clear();
}

/// A CoAP server endpoint (RFC 7252, RFC 7641 Observe, RFC 7959 block-wise), without I/O.
#[derive(Debug)]
pub struct Endpoint {
    pub(super) config: EndpointConfig,
    pub(super) stats: Stats,
    pub(super) dedup: Dedup,
    pub(super) outbox: Outbox,
    pub(super) requests: Unanswered,
    pub(super) observers: Observers,
    pub(super) blocks: Blocks,
    pub(super) events: VecDeque<Event>,
    pub(super) next_etag: u32,
    pub(super) check: PeerCheck,
    /// Size of the datagram being handled (see [`Pending::request_len`](super::pending::Pending)).
    pub(super) datagram_len: usize,
    rate: RateLimiter,
    transmits: VecDeque<Transmit>,
    next_mid: u16,
    rng: StdRng,
}

impl Endpoint {
    /// Creates an endpoint whose clock starts at `now`; out-of-range config values are brought
    /// into range (the `coap:` section is checked before, by `sluice check` and `run`).
    pub fn new(config: EndpointConfig, now: Instant) -> Self {
        let config = config.normalized();
        let mut rng = StdRng::from_rng(&mut rand::rng());
        Endpoint {
            rate: RateLimiter::new(config.peer_rate, config.peer_burst, now),
            check: PeerCheck::new(
                config.amplification_factor,
                Budget::new(config.amplification_budget, config.amplification_budget_per_prefix, now),
                config.max_verified_peers,
                config.verified_for,
                now,
            ),
            datagram_len: 0,
            dedup: Dedup::new(config.exchange_lifetime, config.non_lifetime, config.max_dedup_entries),
            blocks: Blocks::new(config.exchange_lifetime, config.max_block_transfers, config.max_block_memory),
            outbox: Outbox::default(),
            requests: Unanswered::default(),
            observers: Observers::default(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: Stats::default(),
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
                if !self.rate.admit(peer, now) {
                    self.rate_limited(peer, header, &packet);
                    return;
                }
                self.datagram_len = bytes.len();
                if self.screen(peer, c, &packet, now) == Screen::Challenge {
                    self.challenge(peer, header, packet.get_token(), now);
                    return;
                }
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

    /// Answers a request beyond `peer_rate`: 5.03 with Max-Age 1 for a CON (no larger than the
    /// request, and not remembered), nothing for a NON.
    fn rate_limited(&mut self, peer: SocketAddr, header: message::Header, packet: &Packet) {
        self.stats.rate_limited += 1;
        debug!(%peer, mid = header.mid, "Request over the peer's rate limit.");
        if header.kind == MessageType::Confirmable {
            let mut reply = message::packet(
                MessageType::Acknowledgement,
                code::SERVICE_UNAVAILABLE,
                header.mid,
                packet.get_token(),
            );
            message::add_uint(&mut reply, opt::MAX_AGE, 1);
            if let Some(bytes) = message::encode(&reply) {
                self.transmit(peer, bytes);
            }
        }
    }

    /// Screens a request with the return-routability check: its Echo value, if any, may
    /// verify the peer; an Observe registration from a peer still unverified is to be
    /// challenged, since its answers are unbounded.
    fn screen(&mut self, peer: SocketAddr, code: u8, packet: &Packet, now: Instant) -> Screen {
        let echo = packet.get_option(CoapOption::from(opt::ECHO)).and_then(|v| v.front());
        let registers = code == code::GET
            && packet
                .get_option(CoapOption::Observe)
                .and_then(|v| v.front())
                .is_some_and(|v| message::decode_uint(v, 3) == Some(0));
        let screen = self.check.screen(peer, echo.map(Vec::as_slice), registers, now);
        // Relations with unverified devices live until their CON answer is acknowledged or
        // times out; forged ones may fill at most a tenth of `max_observers`, after which
        // unverified registrations are challenged as when the budget is spent.
        if screen == Screen::Pass
            && registers
            && self.check.unverified(peer, now)
            && self.observers.unverified() >= (self.config.max_observers / 10).max(1)
        {
            return Screen::Challenge;
        }
        if screen == Screen::Verified {
            self.stats.peers_verified += 1;
            debug!(%peer, "Peer verified by its Echo value.");
        }
        screen
    }

    /// Answers 4.01 with an Echo value (RFC 9175 §2.4): the client repeats the request with
    /// it, which proves that it receives at its address. Nothing is remembered.
    fn challenge(&mut self, peer: SocketAddr, header: message::Header, token: &[u8], now: Instant) {
        self.stats.echo_challenges += 1;
        debug!(%peer, mid = header.mid, "Asked an unverified peer to repeat its request with an Echo value.");
        let kind = if header.kind == MessageType::Confirmable {
            MessageType::Acknowledgement
        } else {
            MessageType::NonConfirmable
        };
        let mid = if kind == MessageType::Acknowledgement { header.mid } else { self.next_mid() };
        let mut reply = message::packet(kind, code::UNAUTHORIZED, mid, token);
        message::add(&mut reply, opt::ECHO, self.check.echo(peer, now));
        if let Some(allowance) = self.check.allowance(peer, self.datagram_len, now) {
            explain_challenge(&mut reply, allowance);
        }
        if let Some(bytes) = message::encode(&reply) {
            // Even the challenge must not amplify (a request of a few bytes): such a request
            // goes unanswered.
            if self.check.allows(peer, self.datagram_len, bytes.len(), now) {
                self.transmit(peer, bytes);
            } else {
                debug!(%peer, mid = header.mid, "Request too small to challenge; dropped.");
            }
        }
    }

    fn on_ack(&mut self, peer: SocketAddr, mid: u16, now: Instant) {
        let owner = self.outbox.remove(&(peer, mid));
        if owner.is_none() {
            self.check.stray_ack(peer, now);
            debug!(%peer, mid, "Ignored an ACK that matches nothing.");
            return;
        }
        // A CON to an unverified peer carries a random Message-ID: its ACK proves the address.
        if self.check.acknowledged(peer, now) {
            self.stats.peers_verified += 1;
            debug!(%peer, "Peer verified by acknowledging a CON.");
        }
        match owner {
            Some(Owner::Notification(id) | Owner::Registration(id)) => self.notification_acked(id, now),
            Some(Owner::Response) => debug!(%peer, mid, "Separate response acknowledged."),
            None => {}
        }
    }

    fn on_reset(&mut self, peer: SocketAddr, mid: u16) {
        let observer = match self.outbox.remove(&(peer, mid)) {
            Some(Owner::Notification(id) | Owner::Registration(id)) => Some(id),
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
            self.requests.next_deadline(),
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
        while let Some((peer, mid)) = self.requests.poll_ack(now) {
            let ack = message::empty(MessageType::Acknowledgement, mid);
            self.dedup.remember_reply(&(peer, mid), ack.clone(), false);
            self.stats.separate_acks += 1;
            debug!(%peer, mid, "Sent an empty ACK; the response will follow separately.");
            self.transmit(peer, ack);
        }
        while let Some(due) = self.outbox.poll_due(now, self.config.max_retransmit) {
            match due {
                Due::Retransmit { peer, bytes } => {
                    if !self.check.afford(peer, bytes.len(), now) {
                        // Out of amplification budget: this retransmission is skipped as if
                        // lost; the next one, or the timeout, follows as usual.
                        self.stats.retransmissions_skipped += 1;
                        continue;
                    }
                    self.stats.retransmissions += 1;
                    self.transmit(peer, bytes);
                }
                Due::GaveUp { peer, mid, owner } => {
                    self.stats.transmit_timeouts += 1;
                    debug!(%peer, mid, "Gave up on an unacknowledged CON.");
                    if let Owner::Notification(id) | Owner::Registration(id) = owner {
                        self.drop_observer(id, Some(GoneReason::Timeout));
                    }
                }
            }
        }
        let requests = &mut self.requests;
        self.dedup.expire(now, |id| {
            if requests.forget(id) {
                debug!(request = id.0, "Forgot a request the app never answered.");
            }
        });
        self.blocks.expire(now);
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        Stats { budget_bytes: self.check.paid(), ..self.stats.clone() }
    }

    /// Charges `peer` for a request that took `spent` to handle, up to `now` (see
    /// `coap.peer_rate`).
    pub fn charge(&mut self, peer: SocketAddr, spent: Duration, now: Instant) {
        self.rate.charge(peer, spent, now);
    }

    /// The state held now.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn footprint(&self) -> Footprint {
        let (largest_block_body, block_touches) = self.blocks.footprint();
        Footprint {
            block_transfers: self.blocks.len(),
            largest_block_body,
            block_touches,
            observers: self.observers.len(),
            verified_peers: self.check.verified_count(),
            unanswered: self.requests.len(),
        }
    }

    /// Observe relations `peer` holds.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn observers_of(&self, peer: SocketAddr) -> usize {
        self.observers.of_peer(peer)
    }

    /// Whether answers to `peer` are unbounded (the checks are off, or it returned an Echo).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn is_verified(&self, peer: SocketAddr, now: Instant) -> bool {
        self.check.allowance(peer, 0, now).is_none()
    }

    /// Counts a datagram the transport could not send.
    pub fn record_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    pub(super) fn transmit(&mut self, peer: SocketAddr, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { peer, bytes });
    }

    pub(super) fn send_reset(&mut self, peer: SocketAddr, mid: u16) {
        self.stats.resets_sent += 1;
        self.transmit(peer, message::empty(MessageType::Reset, mid));
    }

    pub(super) fn next_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// Sends `packet` as a CON with a fresh Message-ID and retransmits it until ACK or RST.
    pub(super) fn send_con(&mut self, peer: SocketAddr, mut packet: Packet, owner: Owner, now: Instant) -> Option<u16> {
        let mid = if self.check.unverified(peer, now) {
            // Its ACK will verify the peer, so a forger must not predict it: a random
            // Message-ID, none in flight to that peer.
            loop {
                let mid: u16 = self.rng.random();
                if !self.outbox.contains(&(peer, mid)) {
                    break mid;
                }
            }
        } else {
            self.next_mid()
        };
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
    use crate::coap::{Notification, Response, message::opt};

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
        let mut h = Harness::with(EndpointConfig { max_dedup_entries: 2, ..unguarded() });
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
        let config = EndpointConfig { ack_random_factor: 1.0, ..unguarded() };
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
    fn a_peer_over_its_rate_gets_5_03_for_a_con_and_nothing_for_a_non() {
        let mut h = Harness::with(EndpointConfig { peer_rate: 1, peer_burst: 2, ..unguarded() });
        for mid in 1..=2 {
            h.send(&con_get(mid, &[9], "x"));
        }
        assert_eq!(h.events().len(), 2);
        h.transmits();
        h.send(&con_get(3, &[9], "x"));
        assert!(h.events().is_empty());
        let reply = h.one();
        assert_eq!(reply.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(reply.header.message_id, 3);
        assert_eq!(u8::from(reply.header.code), code::SERVICE_UNAVAILABLE);
        assert_eq!(uint(&reply, opt::MAX_AGE), Some(1));
        assert_eq!(reply.get_token(), [9]);
        h.send(&request(MessageType::NonConfirmable, 0x02, 4, &[], "x"));
        assert!(h.events().is_empty() && h.transmits().is_empty());
        assert_eq!(h.ep.stats().rate_limited, 2);
        h.advance(secs(1));
        h.send(&con_get(5, &[9], "x"));
        assert_eq!(h.events().len(), 1, "the bucket refills");
    }

    fn echo_of(reply: &Packet) -> Vec<u8> {
        reply.get_option(CoapOption::from(opt::ECHO)).and_then(|v| v.front()).cloned().expect("an Echo option")
    }

    #[test]
    fn an_unverified_observer_is_asked_for_an_echo_and_registers_with_it() {
        let mut h = Harness::with(strict());
        let mut get = con_get(1, &[7], "ps/t");
        message::add_uint(&mut get, opt::OBSERVE, 0);
        h.send(&get);
        assert!(h.events().is_empty(), "the app does no work for an unverified registration");
        let reply = h.one();
        assert_eq!(u8::from(reply.header.code), code::UNAUTHORIZED);
        assert_eq!(reply.header.get_type(), MessageType::Acknowledgement);
        let echo = echo_of(&reply);
        let mut again = con_get(2, &[7], "ps/t");
        message::add_uint(&mut again, opt::OBSERVE, 0);
        message::add(&mut again, opt::ECHO, echo);
        h.send(&again);
        let request = h.request();
        let response = Response { observe: true, payload: b"22.5".to_vec(), ..Default::default() };
        assert!(h.ep.respond(request.id, response, h.now).is_some());
        assert_eq!(h.one().payload, b"22.5");
        assert_eq!((h.ep.stats().echo_challenges, h.ep.stats().peers_verified), (1, 1));
        // Verified now: a later registration and a large answer need no Echo.
        let mut other = con_get(3, &[8], "ps/u");
        message::add_uint(&mut other, opt::OBSERVE, 0);
        h.send(&other);
        assert_eq!(h.events().len(), 1);
    }

    #[test]
    fn a_challenge_says_what_to_do_within_the_allowance() {
        let mut h = Harness::with(strict());
        let mut get = con_get(1, &[1, 2, 3, 4], "ps/coap/test");
        message::add(&mut get, opt::URI_QUERY, b"clientid=client1".to_vec());
        message::add_uint(&mut get, opt::OBSERVE, 0);
        let len = encode(&get).len();
        h.send(&get);
        let reply = h.one();
        assert_eq!(u8::from(reply.header.code), code::UNAUTHORIZED);
        assert!(encode(&reply).len() <= 3 * len);
        assert_eq!(String::from_utf8(reply.payload.clone()).unwrap(), CHALLENGE_DIAGNOSTICS[0]);
        // The endpoint's own diagnostics stay within 64 bytes (what the fuzzer holds it to:
        // a payload over the block size is a diagnostic or a bug).
        assert!(CHALLENGE_DIAGNOSTICS.iter().all(|d| d.len() <= 64));
        let mut tiny = con_get(2, &[], "t");
        message::add_uint(&mut tiny, opt::OBSERVE, 0);
        h.send(&tiny);
        let reply = h.one();
        assert!(encode(&reply).len() <= 3 * encode(&tiny).len(), "a tiny request gets no text");
        assert!(reply.payload.is_empty());
    }

    #[test]
    fn a_large_answer_to_an_unverified_peer_becomes_an_echo_challenge() {
        let mut h = Harness::with(strict());
        let get = con_get(1, &[7], "ps/t");
        let len = encode(&get).len();
        h.send(&get);
        let request = h.request();
        let small = Response { payload: vec![b'a'; len], ..Default::default() };
        h.ep.respond(request.id, small, h.now);
        assert_eq!(u8::from(h.one().header.code), code::CONTENT, "within 3× of the request");
        h.send(&con_get(2, &[7], "ps/t"));
        let request = h.request();
        let large = Response { payload: vec![b'a'; 3 * len], ..Default::default() };
        h.ep.respond(request.id, large, h.now);
        let reply = h.one();
        assert_eq!(u8::from(reply.header.code), code::UNAUTHORIZED);
        assert!(encode(&reply).len() <= 3 * len);
        let mut again = con_get(3, &[7], "ps/t");
        message::add(&mut again, opt::ECHO, echo_of(&reply));
        h.send(&again);
        let request = h.request();
        h.ep.respond(request.id, Response { payload: vec![b'a'; 3 * len], ..Default::default() }, h.now);
        assert_eq!(h.one().payload.len(), 3 * len);
    }

    #[test]
    fn a_forged_echo_verifies_nothing() {
        let mut h = Harness::with(strict());
        let mut get = con_get(1, &[7], "ps/t");
        message::add_uint(&mut get, opt::OBSERVE, 0);
        message::add(&mut get, opt::ECHO, vec![0; 12]);
        h.send(&get);
        assert!(h.events().is_empty());
        assert_eq!(u8::from(h.one().header.code), code::UNAUTHORIZED);
        assert_eq!(h.ep.stats().peers_verified, 0);
    }

    fn observe_get(mid: u16, token: &[u8], path: &str) -> Packet {
        let mut get = con_get(mid, token, path);
        message::add_uint(&mut get, opt::OBSERVE, 0);
        get
    }

    #[test]
    fn an_unverified_device_registers_without_echo_and_its_ack_verifies_it() {
        let mut h = Harness::with(budgeted(64 << 10));
        h.send(&observe_get(1, &[7], "ps/t"));
        let request = h.request();
        let response = Response { observe: true, payload: b"22.5".to_vec(), ..Default::default() };
        let id = h.ep.respond(request.id, response, h.now).expect("registered without a challenge");
        let out = h.out();
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].header.get_type(), u8::from(out[0].header.code)), (MessageType::Acknowledgement, 0));
        let answer = &out[1];
        assert_eq!(answer.header.get_type(), MessageType::Confirmable, "a CON, whose ACK proves the address");
        assert_eq!((answer.payload.as_slice(), answer.get_token()), (&b"22.5"[..], &[7][..]));
        assert!(uint(answer, opt::OBSERVE).is_some());
        assert!(!h.ep.is_verified(h.peer, h.now));
        h.send_bytes(&ack(answer.header.message_id));
        assert!(h.ep.is_verified(h.peer, h.now));
        assert_eq!((h.ep.stats().echo_challenges, h.ep.stats().peers_verified), (0, 1));
        let note = Notification { payload: b"23".to_vec(), confirmable: false, ..Default::default() };
        h.ep.notify(id, note, h.now);
        assert_eq!(h.one().header.get_type(), MessageType::NonConfirmable, "verified: notifications as asked");
    }

    #[test]
    fn a_registration_forged_in_a_victims_name_ends_when_its_answer_goes_unacknowledged() {
        let mut h = Harness::with(budgeted(64 << 10));
        h.send(&observe_get(1, &[7], "ps/t"));
        let request = h.request();
        let response = Response { observe: true, payload: b"22.5".to_vec(), ..Default::default() };
        let id = h.ep.respond(request.id, response, h.now).unwrap();
        let mids: Vec<u16> = h.out().iter().map(|p| p.header.message_id).collect();
        assert_eq!(h.ep.observer_count(), 1);
        h.send_bytes(&ack(mids[1].wrapping_add(1)));
        h.advance(secs(200));
        let out = h.out();
        assert_eq!(out.len(), 4, "the answer's retransmissions, then nothing: {out:?}");
        assert_eq!(h.ep.observer_count(), 0);
        assert!(
            h.events()
                .iter()
                .any(|e| matches!(e, Event::ObserverGone { id: gone, reason: GoneReason::Timeout } if *gone == id))
        );
        assert!(!h.ep.is_verified(h.peer, h.now), "the guessed ACK verified nothing");
    }

    #[test]
    fn a_reset_to_the_registration_answer_ends_the_relation() {
        let mut h = Harness::with(budgeted(64 << 10));
        h.send(&observe_get(1, &[7], "ps/t"));
        let request = h.request();
        h.ep.respond(request.id, Response { observe: true, ..Default::default() }, h.now).unwrap();
        let answer = h.out().pop().unwrap();
        h.send_bytes(&rst(answer.header.message_id));
        assert_eq!(h.ep.observer_count(), 0);
    }

    #[test]
    fn unverified_relations_fill_at_most_a_tenth_of_max_observers() {
        let mut h = Harness::with(EndpointConfig { max_observers: 30, ..budgeted(64 << 10) });
        let mut registered = 0;
        for port in 1..=10u16 {
            h.peer = SocketAddr::from(([192, 0, 2, 9], port));
            h.send(&observe_get(port, &[7], "ps/t"));
            match h.events().as_slice() {
                [Event::Request(r)] => {
                    h.ep.respond(r.id, Response { observe: true, ..Default::default() }, h.now).unwrap();
                    registered += 1;
                }
                [] => assert_eq!(u8::from(h.out().pop().unwrap().header.code), code::UNAUTHORIZED),
                other => panic!("{other:?}"),
            }
            h.out();
        }
        assert_eq!(registered, 3, "30 / 10 unverified relations at once");
        assert_eq!(h.ep.observer_count(), 3);
    }

    #[test]
    fn larger_answers_are_paid_from_the_budget_then_challenged() {
        let mut h = Harness::with(budgeted(3_000));
        let mut answered = 0;
        for mid in 1..=5u16 {
            h.send(&con_get(mid, &[7], "ps/t"));
            let request = h.request();
            h.ep.respond(request.id, Response { payload: vec![b'a'; 1_000], ..Default::default() }, h.now);
            let reply = h.one();
            match u8::from(reply.header.code) {
                code::CONTENT => answered += 1,
                code::UNAUTHORIZED => assert!(reply.get_option(CoapOption::from(opt::ECHO)).is_some()),
                other => panic!("{other}"),
            }
        }
        assert_eq!(answered, 3, "3,000 bytes a second pay for three answers of about 1,000 beyond 3×");
        assert!(h.ep.stats().budget_bytes > 2_500);
        h.advance(secs(1));
        h.send(&con_get(9, &[7], "ps/t"));
        let request = h.request();
        h.ep.respond(request.id, Response { payload: vec![b'a'; 1_000], ..Default::default() }, h.now);
        assert_eq!(u8::from(h.one().header.code), code::CONTENT, "the budget refills");
    }

    #[test]
    fn an_unverified_relations_notifications_wait_for_its_registration_ack() {
        let mut h = Harness::with(budgeted(64 << 10));
        h.send(&observe_get(1, &[7], "ps/t"));
        let request = h.request();
        let id = h.ep.respond(request.id, Response { observe: true, ..Default::default() }, h.now).unwrap();
        let answer = h.out().pop().unwrap();
        let note = |n: u8| Notification { payload: vec![n; 600], confirmable: false, ..Default::default() };
        h.ep.notify(id, note(1), h.now);
        h.ep.notify(id, note(2), h.now);
        assert!(h.out().is_empty(), "nothing more before the address is verified");
        h.send_bytes(&ack(answer.header.message_id));
        let first = h.one();
        assert_eq!(first.payload, vec![1; 600], "verified: the first waiting one goes");
        h.send_bytes(&ack(first.header.message_id));
        let second = h.one();
        assert_eq!(second.payload, vec![2; 600], "one CON at a time, as queued");
        h.send_bytes(&ack(second.header.message_id));
        h.advance(EndpointConfig::default().verified_for + secs(1));
        assert!(!h.ep.is_verified(h.peer, h.now), "the address's verification expired");
        h.ep.notify(id, note(3), h.now);
        assert_eq!(h.one().header.get_type(), MessageType::NonConfirmable, "the relation stays verified");
    }

    #[test]
    fn a_forged_relation_gets_its_victim_no_notifications() {
        let mut h = Harness::with(budgeted(64 << 10));
        h.send(&observe_get(1, &[7], "ps/t"));
        let request = h.request();
        let id = h.ep.respond(request.id, Response { observe: true, ..Default::default() }, h.now).unwrap();
        h.out();
        for n in 0..5u8 {
            h.ep.notify(id, Notification { payload: vec![n; 900], ..Default::default() }, h.now);
        }
        let sent = h.run_until(h.now + secs(200));
        assert!(sent.iter().all(|(_, p)| p.payload.is_empty()), "only the answer's retransmissions: {sent:?}");
        assert_eq!(h.ep.observer_count(), 0);
    }

    #[test]
    fn request_never_answered_is_forgotten_with_its_message_id() {
        let mut h = Harness::new();
        h.send(&con_get(1, &[], "x"));
        let request = h.request();
        h.advance(secs(300));
        assert_eq!(h.ep.unanswered(), 0);
        assert_eq!(h.ep.poll_timeout(), None);
        assert_eq!(h.ep.respond(request.id, Response::default(), h.now), None);
        assert_eq!(h.out().len(), 1, "only the empty ACK at 1 s");
    }
}
