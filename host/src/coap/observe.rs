//! Observe relations (RFC 7641): registration, notifications with a 24-bit sequence, one CON
//! in flight per observer with a bounded queue behind it, and removal on RST or timeout.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::MessageType;
use tracing::debug;

use super::block::Body;
use super::exchange::Owner;
use super::message::{self, code, opt};
use super::pending::Pending;
use super::{Endpoint, Event, GoneReason, Notification, ObserverId};

/// Observe sequence numbers are 24 bits (RFC 7641 §4.4).
const SEQUENCE_MASK: u32 = 0x00ff_ffff;
/// Message-IDs of NON notifications remembered per observer, to match an RST.
const RECENT_NON: usize = 8;

/// One relation. A gateway may hold a million of them, so it is kept small: the key strings
/// live once, boxed to their length, and the token inline (the parser refuses tokens over 8
/// bytes, RFC 7252 §3); [`Observers`] boxes each relation so that its maps' spare buckets
/// cost a pointer, not a relation.
#[derive(Debug)]
pub(crate) struct Observer {
    peer: SocketAddr,
    /// Uri-Path and Uri-Query: where later Block2 requests come. Its first `path_len` bytes,
    /// Uri-Path joined with "/", are with the peer the key of the relation.
    uri: Box<str>,
    path_len: usize,
    token: Token,
    sequence: u32,
    /// Message-ID of the CON notification waiting for its ACK.
    inflight: Option<u16>,
    /// NON notifications since the last CON (or the registration).
    non_since_con: u32,
    /// When the last CON notification (or the registration's answer) went.
    last_con: Instant,
    /// Allocated at the first notification: an idle relation does not pay for it.
    traffic: Option<Box<Traffic>>,
    /// The device showed it receives at its address (it was verified when it registered or
    /// when a notification went, or it acknowledged a CON of this relation). An unverified
    /// relation's registration answer went CON (`Owner::Registration`): its notifications
    /// wait behind it until it is acknowledged, and the relation ends if it is not, so a
    /// registration forged in a victim's name gets it at most the answer and its
    /// retransmissions (paid from the amplification budget).
    verified: bool,
}

/// What a relation's notifications leave behind.
#[derive(Debug, Default)]
struct Traffic {
    /// CON notifications waiting for the one in flight.
    queue: VecDeque<Notification>,
    /// Message-IDs of the last NON notifications, to match an RST.
    recent_non: VecDeque<u16>,
}

impl Observer {
    fn path(&self) -> &str {
        self.uri.get(..self.path_len).unwrap_or(&self.uri)
    }
}

/// A token of at most 8 bytes, inline.
#[derive(Debug, Clone, Copy)]
struct Token {
    bytes: [u8; 8],
    len: u8,
}

impl Token {
    fn new(token: &[u8]) -> Token {
        let mut bytes = [0; 8];
        let len = token.len().min(8);
        bytes[..len].copy_from_slice(&token[..len]);
        Token { bytes, len: len as u8 }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// All relations, by id, by (peer, path) and by the Message-IDs of recent NON notifications.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    by_id: HashMap<ObserverId, Box<Observer>>,
    by_key: HashMap<(SocketAddr, Box<str>), ObserverId>,
    by_non_mid: HashMap<(SocketAddr, u16), ObserverId>,
    /// Relations per peer, for `max_observers_per_peer`.
    per_peer: HashMap<SocketAddr, usize>,
    /// Relations whose device is not verified yet (see [`Observer::verified`]).
    unverified: usize,
    next_id: u64,
}

impl Observers {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The relation of a peer on a path.
    pub(crate) fn find(&self, peer: SocketAddr, path: &str) -> Option<ObserverId> {
        self.by_key.get(&(peer, Box::from(path))).copied()
    }

    /// Relations `peer` holds.
    pub(crate) fn of_peer(&self, peer: SocketAddr) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// The relation a NON notification with this Message-ID was sent for.
    pub(crate) fn by_non_mid(&self, peer: SocketAddr, mid: u16) -> Option<ObserverId> {
        self.by_non_mid.get(&(peer, mid)).copied()
    }

    /// Relations whose device is not verified yet.
    pub(crate) fn unverified(&self) -> usize {
        self.unverified
    }

    /// Marks a relation's device as verified.
    fn verify(&mut self, id: ObserverId) {
        if let Some(observer) = self.by_id.get_mut(&id)
            && !observer.verified
        {
            observer.verified = true;
            self.unverified = self.unverified.saturating_sub(1);
        }
    }

    fn insert(&mut self, observer: Observer) -> ObserverId {
        self.next_id += 1;
        if !observer.verified {
            self.unverified += 1;
        }
        let id = ObserverId(self.next_id);
        self.by_key.insert((observer.peer, Box::from(observer.path())), id);
        *self.per_peer.entry(observer.peer).or_default() += 1;
        self.by_id.insert(id, Box::new(observer));
        id
    }

    fn remove(&mut self, id: ObserverId) -> Option<Box<Observer>> {
        let observer = self.by_id.remove(&id)?;
        if !observer.verified {
            self.unverified = self.unverified.saturating_sub(1);
        }
        if let Some(n) = self.per_peer.get_mut(&observer.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&observer.peer);
            }
        }
        let key = (observer.peer, Box::from(observer.path()));
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        for mid in observer.traffic.iter().flat_map(|t| &t.recent_non) {
            if self.by_non_mid.get(&(observer.peer, *mid)) == Some(&id) {
                self.by_non_mid.remove(&(observer.peer, *mid));
            }
        }
        Some(observer)
    }

    fn remember_non(&mut self, id: ObserverId, mid: u16) {
        let Some(observer) = self.by_id.get_mut(&id) else { return };
        let recent = &mut observer.traffic.get_or_insert_default().recent_non;
        recent.push_back(mid);
        self.by_non_mid.insert((observer.peer, mid), id);
        if recent.len() > RECENT_NON
            && let Some(old) = recent.pop_front()
            && self.by_non_mid.get(&(observer.peer, old)) == Some(&id)
        {
            self.by_non_mid.remove(&(observer.peer, old));
        }
    }
}

impl Endpoint {
    /// Sends a notification to an observer; false if the observer no longer exists.
    ///
    /// A CON notification waits in the observer's queue while another is in flight (the
    /// oldest queued one is dropped when the queue is full); a NON goes at once.
    ///
    /// A NON goes as CON every `con_notification_every` notifications and when the last CON
    /// is `con_notification_interval` old (RFC 7641 §4.5): a device that went away without an
    /// RST is so noticed when that CON times out, and its relation ends.
    pub fn notify(&mut self, id: ObserverId, mut notification: Notification, now: Instant) -> bool {
        let (limit, every, interval) =
            (self.config.observe_queue, self.config.con_notification_every, self.config.con_notification_interval);
        let Some(observer) = self.observers.by_id.get_mut(&id) else {
            return false;
        };
        if !observer.verified && !self.check.unverified(observer.peer, now) {
            self.observers.verify(id);
        }
        let Some(observer) = self.observers.by_id.get_mut(&id) else { return false };
        if !notification.confirmable
            && ((every > 0 && observer.non_since_con + 1 >= every)
                || now.saturating_duration_since(observer.last_con) >= interval
                || !observer.verified)
        {
            // An unverified device's notifications go CON: its ACK verifies its address.
            notification.confirmable = true;
        }
        let waiting = observer.traffic.as_ref().is_some_and(|t| !t.queue.is_empty());
        if notification.confirmable && (observer.inflight.is_some() || waiting) {
            let queue = &mut observer.traffic.get_or_insert_default().queue;
            queue.push_back(notification);
            while queue.len() > limit {
                queue.pop_front();
                self.stats.notifications_dropped += 1;
                debug!(observer = id.0, "Dropped a queued notification.");
            }
            return true;
        }
        self.send_notification(id, notification, now);
        true
    }

    /// Ends an observation from the gateway side; no event is produced.
    pub fn cancel_observer(&mut self, id: ObserverId) {
        self.drop_observer(id, None);
    }

    /// Ends an observation and tells the device: a last NON notification with `code` (an
    /// error code, no Observe option) and `diagnostic` as its payload, which ends the relation
    /// on the client side too (RFC 7641 §3.2). No [`Event::ObserverGone`] follows.
    pub fn end_observer(&mut self, id: ObserverId, code: u8, diagnostic: &str) {
        let Some(observer) = self.observers.by_id.get(&id) else { return };
        let (peer, token) = (observer.peer, observer.token.as_slice().to_vec());
        let mid = self.next_mid();
        let mut packet = message::packet(MessageType::NonConfirmable, code, mid, &token);
        packet.payload = diagnostic.as_bytes().to_vec();
        if let Some(bytes) = message::encode(&packet) {
            self.transmit(peer, bytes);
        }
        self.drop_observer(id, None);
    }

    /// Observe relations now.
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    fn send_notification(&mut self, id: ObserverId, notification: Notification, now: Instant) {
        let Some(observer) = self.observers.by_id.get_mut(&id) else { return };
        observer.sequence = (observer.sequence + 1) & SEQUENCE_MASK;
        if notification.confirmable {
            observer.non_since_con = 0;
            observer.last_con = now;
        } else {
            observer.non_since_con = observer.non_since_con.saturating_add(1);
        }
        let (peer, uri) = (observer.peer, observer.uri.clone());
        let mut packet = message::packet(MessageType::NonConfirmable, code::CONTENT, 0, observer.token.as_slice());
        message::add_uint(&mut packet, opt::OBSERVE, observer.sequence);
        let body = Body {
            content_format: notification.content_format,
            max_age: notification.max_age,
            payload: notification.payload,
        };
        self.attach_body(&mut packet, peer, &uri, None, body, now);
        self.stats.notifications_sent += 1;
        if notification.confirmable {
            let mid = self.send_con(peer, packet, Owner::Notification(id), now);
            if let Some(observer) = self.observers.by_id.get_mut(&id) {
                observer.inflight = mid;
            }
        } else {
            let mid = self.next_mid();
            packet.header.message_id = mid;
            if let Some(bytes) = message::encode(&packet) {
                self.transmit(peer, bytes);
                self.observers.remember_non(id, mid);
            }
        }
    }

    /// The answer that registered `id` went as a CON with Message-ID `mid`.
    pub(super) fn registration_in_flight(&mut self, id: ObserverId, mid: u16) {
        if let Some(observer) = self.observers.by_id.get_mut(&id) {
            observer.inflight = Some(mid);
        }
    }

    /// The ACK of a CON notification (or registration answer) arrived: the next queued one
    /// may go.
    pub(super) fn notification_acked(&mut self, id: ObserverId, now: Instant) {
        let Some(observer) = self.observers.by_id.get_mut(&id) else { return };
        observer.inflight = None;
        // An ACK of a CON sent with a random Message-ID verified the peer (see `on_ack`).
        if !self.check.unverified(observer.peer, now) {
            self.observers.verify(id);
        }
        self.send_next_queued(id, now);
    }

    fn send_next_queued(&mut self, id: ObserverId, now: Instant) {
        let Some(observer) = self.observers.by_id.get_mut(&id) else { return };
        if observer.inflight.is_some() {
            return;
        }
        if let Some(next) = observer.traffic.as_mut().and_then(|t| t.queue.pop_front()) {
            self.send_notification(id, next, now);
        }
    }

    /// Registers the relation a successful response to `request` asks for, replacing the
    /// peer's relation on the same path. Returns its id and first sequence number, or `None`
    /// when `max_observers` is reached.
    pub(super) fn register_observer(&mut self, request: &Pending, now: Instant) -> Option<(ObserverId, u32)> {
        let old = self.observers.find(request.peer, &request.path_key);
        if old.is_none()
            && (self.observers.len() >= self.config.max_observers
                || self.observers.of_peer(request.peer) >= self.config.max_observers_per_peer)
        {
            self.stats.observer_limit += 1;
            debug!(peer = %request.peer, "Observer limit reached; answering without Observe.");
            return None;
        }
        // Continue the old sequence so a client keeping its token sees fresh values.
        let sequence = old.and_then(|id| self.observers.by_id.get(&id)).map_or(0, |o| (o.sequence + 1) & SEQUENCE_MASK);
        if let Some(old) = old {
            self.drop_observer(old, Some(GoneReason::Replaced));
        }
        let id = self.observers.insert(Observer {
            peer: request.peer,
            uri: Box::from(request.uri_key.as_str()),
            path_len: request.path_key.len(),
            token: Token::new(&request.token),
            sequence,
            inflight: None,
            non_since_con: 0,
            last_con: now,
            traffic: None,
            verified: !self.check.unverified(request.peer, now),
        });
        self.stats.observers = self.observers.len() as u64;
        debug!(peer = %request.peer, observer = id.0, path = %request.path_key, "Observer registered.");
        Some((id, sequence))
    }

    /// Removes a relation and its CON in flight; with a reason, tells the app.
    pub(super) fn drop_observer(&mut self, id: ObserverId, reason: Option<GoneReason>) {
        let Some(observer) = self.observers.remove(id) else { return };
        if let Some(mid) = observer.inflight {
            self.outbox.remove(&(observer.peer, mid));
        }
        self.stats.observers = self.observers.len() as u64;
        debug!(peer = %observer.peer, observer = id.0, ?reason, "Observer removed.");
        if let Some(reason) = reason {
            self.events.push_back(Event::ObserverGone { id, reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::testing::*;
    use crate::coap::{EndpointConfig, Response};

    fn note(payload: &str, confirmable: bool) -> Notification {
        Notification { payload: payload.into(), confirmable, ..Default::default() }
    }

    #[test]
    fn registration_answer_carries_observe_and_notifications_count_up() {
        let mut h = Harness::new();
        let id = h.register(1, &[0xab], "ps/temp");
        assert_eq!(h.ep.observer_count(), 1);
        assert_eq!(h.ep.stats().observers, 1);
        let n = Notification { content_format: Some(50), max_age: Some(30), ..note("1", false) };
        assert!(h.ep.notify(id, n, h.now));
        assert!(h.ep.notify(id, note("2", false), h.now));
        let out = h.out();
        assert_eq!(out.len(), 2);
        assert_eq!(out.iter().map(|p| uint(p, opt::OBSERVE)).collect::<Vec<_>>(), [Some(1), Some(2)]);
        assert!(out.iter().all(|p| p.get_token() == [0xab]));
        assert!(out.iter().all(|p| p.header.get_type() == MessageType::NonConfirmable));
        assert_ne!(out[0].header.message_id, out[1].header.message_id);
        assert_eq!(uint(&out[0], opt::CONTENT_FORMAT), Some(50));
        assert_eq!(uint(&out[0], opt::MAX_AGE), Some(30));
        assert_eq!(u8::from(out[0].header.code), code::CONTENT);
        assert_eq!(h.ep.stats().notifications_sent, 2);
    }

    #[test]
    fn a_relation_stays_small_enough_for_a_million() {
        // The relation is most of what an idle observing device costs (RELIABILITY.md gives the
        // measured bytes per device at a million); a field added here shows up there.
        assert!(std::mem::size_of::<Observer>() <= 112, "{} bytes", std::mem::size_of::<Observer>());
    }

    #[test]
    fn sequence_wraps_at_24_bits() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        h.ep.observers.by_id.get_mut(&id).unwrap().sequence = 0x00ff_ffff;
        h.ep.notify(id, note("a", false), h.now);
        assert_eq!(uint(&h.one(), opt::OBSERVE), Some(0));
    }

    #[test]
    fn con_notifications_wait_for_the_ack_of_the_one_in_flight() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        for p in ["1", "2", "3"] {
            assert!(h.ep.notify(id, note(p, true), h.now));
        }
        let first = h.one();
        assert_eq!(first.header.get_type(), MessageType::Confirmable);
        assert_eq!(first.payload, b"1");
        h.send_bytes(&ack(first.header.message_id));
        let second = h.one();
        assert_eq!(second.payload, b"2");
        h.send_bytes(&ack(second.header.message_id));
        assert_eq!(h.one().payload, b"3");
    }

    #[test]
    fn full_notification_queue_drops_the_oldest() {
        let mut h = Harness::with(EndpointConfig { observe_queue: 2, ..unguarded() });
        let id = h.register(1, &[1], "x");
        for p in ["1", "2", "3", "4"] {
            h.ep.notify(id, note(p, true), h.now);
        }
        assert_eq!(h.ep.stats().notifications_dropped, 1);
        let mut sent = Vec::new();
        while let [p] = h.out().as_slice() {
            sent.push(String::from_utf8_lossy(&p.payload).into_owned());
            h.send_bytes(&ack(p.header.message_id));
        }
        assert_eq!(sent, ["1", "3", "4"]);
    }

    #[test]
    fn rst_to_a_con_notification_removes_the_observer() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        h.ep.notify(id, note("1", true), h.now);
        h.ep.notify(id, note("2", true), h.now);
        let mid = h.one().header.message_id;
        h.send_bytes(&rst(mid));
        assert_eq!(h.events(), [Event::ObserverGone { id, reason: GoneReason::Reset }]);
        assert!(h.out().is_empty(), "the queued notification is dropped");
        assert!(!h.ep.notify(id, note("3", true), h.now));
        assert_eq!(h.ep.observer_count(), 0);
    }

    #[test]
    fn rst_to_a_recent_non_notification_removes_the_observer() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        h.ep.notify(id, note("1", false), h.now);
        let mid = h.one().header.message_id;
        h.ep.notify(id, note("2", false), h.now);
        h.transmits();
        h.send_bytes(&rst(mid));
        assert_eq!(h.events(), [Event::ObserverGone { id, reason: GoneReason::Reset }]);
        assert_eq!(h.ep.stats().resets_received, 1);
    }

    #[test]
    fn unacknowledged_con_notification_times_out_and_removes_the_observer() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        h.ep.notify(id, note("1", true), h.now);
        h.transmits();
        let end = h.now + secs(100);
        let sent = h.run_until(end);
        assert_eq!(sent.len(), 4, "four retransmissions");
        assert!(sent.iter().all(|(_, p)| p.payload == b"1" && uint(p, opt::OBSERVE) == Some(1)));
        assert_eq!(h.events(), [Event::ObserverGone { id, reason: GoneReason::Timeout }]);
        assert_eq!(h.ep.observer_count(), 0);
    }

    /// Every third NON goes CON; one whose ACK never comes ends the relation of a device that
    /// went away without a word.
    #[test]
    fn every_nth_non_notification_goes_con_and_finds_a_device_gone() {
        let mut h = Harness::with(EndpointConfig { con_notification_every: 3, ..unguarded() });
        let id = h.register(1, &[1], "x");
        let mut kinds = Vec::new();
        for p in ["1", "2", "3", "4", "5"] {
            h.ep.notify(id, note(p, false), h.now);
            let sent = h.one();
            kinds.push(sent.header.get_type());
            if sent.header.get_type() == MessageType::Confirmable {
                h.send_bytes(&ack(sent.header.message_id));
            }
        }
        use MessageType::{Confirmable as Con, NonConfirmable as Non};
        assert_eq!(kinds, [Non, Non, Con, Non, Non]);
        h.ep.notify(id, note("6", false), h.now);
        assert_eq!(h.one().header.get_type(), Con);
        h.advance(secs(100));
        assert_eq!(h.events(), [Event::ObserverGone { id, reason: GoneReason::Timeout }]);
    }

    #[test]
    fn a_non_notification_goes_con_when_the_last_con_is_a_day_old() {
        let mut h = Harness::with(EndpointConfig { con_notification_every: 0, ..unguarded() });
        let id = h.register(1, &[1], "x");
        h.ep.notify(id, note("1", false), h.now);
        assert_eq!(h.one().header.get_type(), MessageType::NonConfirmable);
        h.now += secs(86_400);
        h.ep.notify(id, note("2", false), h.now);
        let con = h.one();
        assert_eq!(con.header.get_type(), MessageType::Confirmable);
        h.send_bytes(&ack(con.header.message_id));
        h.ep.notify(id, note("3", false), h.now);
        assert_eq!(h.one().header.get_type(), MessageType::NonConfirmable, "the day starts again");
    }

    #[test]
    fn re_registration_with_a_new_token_replaces_the_relation() {
        let mut h = Harness::new();
        let old = h.register(1, &[1], "x");
        h.ep.notify(old, note("a", false), h.now);
        h.transmits();
        let new = h.register(2, &[2], "x");
        assert_ne!(old, new);
        assert_eq!(h.events(), [Event::ObserverGone { id: old, reason: GoneReason::Replaced }]);
        assert_eq!(h.ep.observer_count(), 1);
        assert!(!h.ep.notify(old, note("b", false), h.now));
        h.ep.notify(new, note("c", false), h.now);
        let n = h.one();
        assert_eq!(n.get_token(), [2]);
        assert_eq!(uint(&n, opt::OBSERVE), Some(3), "the sequence goes on");
    }

    #[test]
    fn observe_1_deregisters_and_still_reaches_the_app() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        let mut get = con_get(2, &[1], "x");
        message::add_uint(&mut get, opt::OBSERVE, 1);
        h.send(&get);
        let events = h.events();
        assert_eq!(events[0], Event::ObserverGone { id, reason: GoneReason::Deregistered });
        assert!(matches!(&events[1], Event::Request(r) if r.observe == Some(1)));
        assert_eq!(h.ep.observer_count(), 0);
    }

    #[test]
    fn re_registration_the_app_refuses_deregisters() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        let mut get = con_get(2, &[1], "x");
        message::add_uint(&mut get, opt::OBSERVE, 0);
        h.send(&get);
        let request = h.request();
        h.ep.respond(request.id, Response { code: 0x83, ..Default::default() }, h.now);
        assert_eq!(uint(&h.one(), opt::OBSERVE), None);
        assert_eq!(h.events(), [Event::ObserverGone { id, reason: GoneReason::Deregistered }]);
    }

    #[test]
    fn registration_beyond_max_observers_gets_a_plain_response() {
        let mut h = Harness::with(EndpointConfig { max_observers: 1, ..unguarded() });
        h.register(1, &[1], "x");
        let mut get = con_get(2, &[2], "y");
        message::add_uint(&mut get, opt::OBSERVE, 0);
        h.send(&get);
        let request = h.request();
        assert!(request.is_observe_registration());
        assert_eq!(h.ep.respond(request.id, Response { observe: true, ..Default::default() }, h.now), None);
        let reply = h.one();
        assert_eq!(u8::from(reply.header.code), code::CONTENT);
        assert_eq!(uint(&reply, opt::OBSERVE), None);
    }

    #[test]
    fn registration_beyond_max_observers_per_peer_gets_a_plain_response() {
        let mut h = Harness::with(EndpointConfig { max_observers_per_peer: 2, ..unguarded() });
        h.register(1, &[1], "a");
        h.register(2, &[2], "b");
        h.send(&{
            let mut p = con_get(3, &[3], "c");
            message::add_uint(&mut p, opt::OBSERVE, 0);
            p
        });
        let request = h.request();
        assert_eq!(h.ep.respond(request.id, Response { observe: true, ..Default::default() }, h.now), None);
        assert_eq!(uint(&h.one(), opt::OBSERVE), None);
        assert_eq!(h.ep.stats().observer_limit, 1);
        h.register(4, &[1], "a");
        assert_eq!(h.ep.observer_count(), 2, "re-registering a held path is no new relation");
    }

    #[test]
    fn observe_flag_on_a_plain_get_registers_nothing() {
        let mut h = Harness::new();
        h.send(&con_get(1, &[1], "x"));
        let request = h.request();
        assert_eq!(h.ep.respond(request.id, Response { observe: true, ..Default::default() }, h.now), None);
        assert_eq!(uint(&h.one(), opt::OBSERVE), None);
    }

    #[test]
    fn cancelled_observer_is_removed_without_an_event() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "x");
        h.ep.notify(id, note("1", true), h.now);
        h.transmits();
        h.ep.cancel_observer(id);
        assert!(h.events().is_empty());
        assert!(h.run_until(h.now + secs(100)).is_empty(), "no retransmission");
        assert!(!h.ep.notify(id, note("2", true), h.now));
    }
}
