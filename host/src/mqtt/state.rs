//! Sans-IO protocol state of the MQTT client.
//!
//! [`State`] owns everything the protocol needs to remember and nothing that touches a socket:
//! the publish queue, the publishes in flight (packet id → the caller's waiter), packet-id
//! allocation, the keep-alive pings and, through [`Subscriptions`], the subscription set. The
//! driver feeds it packets and a clock and writes the bytes it serialises into `out`.
//!
//! Session state lives here, not at the broker (we connect with clean start): after a reconnect
//! QoS ≥ 1 publishes that were in flight go back to the front of the queue with DUP set, QoS 0
//! publishes that were serialised but not yet written go back too, and the subscription set is
//! subscribed again before anything else is sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Packet, PingReq, PubAck, PubAckReason, PubComp, PubRec, PubRecReason, PubRel, Publish,
};
use tracing::{debug, warn};

use super::client::{Message, PublishError};
use super::queue::{PublishResult, Queued, Shared};
use super::subscriptions::Subscriptions;
use super::wire::Wire;

/// Sessions that may end with the same publish oldest in flight before it is rejected.
const MAX_LOSSES: u8 = 3;

/// The largest packet MQTT can frame (remaining length 268 435 455 plus a 5-byte header).
const MQTT_MAX_PACKET: u32 = 268_435_460;

/// A publish serialised on the current connection, waiting for its write (QoS 0) or ack.
#[derive(Debug)]
struct Sent {
    seq: u64,
    queued: Queued,
    /// QoS 0: the byte offset on this connection where the packet ends.
    end: u64,
    /// QoS 2: PUBREC received, PUBREL sent.
    released: bool,
}

/// How long after a message its further copies are looked for (see [`Copies`]).
const COPY_WINDOW: Duration = Duration::from_secs(1);

/// The copies of a message still expected on a session whose broker does not name the
/// subscriptions a message was sent for (MQTT 3.1.1, or 5 without Subscription Identifiers).
///
/// A message that matches several of the client's filters comes once, or once per filter
/// (3.1.1 §3.3.5 allows both: mosquitto sends one, NATS one per filter). Every copy would reach
/// every matching observer, so the first copy goes to all of them and copies identical to it
/// that follow within [`COPY_WINDOW`] are acknowledged and dropped, at most one per further
/// filter. A different message from the broker while all copies are still expected shows a
/// broker that sends one: the session stops looking for copies. (An identical message
/// published again within the window, on such a broker before that is learnt, is taken for a
/// copy: the one case a message may be dropped, documented in RELIABILITY.md.)
#[derive(Debug)]
struct Copies {
    topic: bytes::Bytes,
    payload: bytes::Bytes,
    left: usize,
    matched: usize,
    until: Instant,
}

/// What the broker allowed in its CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Our maximum in flight, capped by the broker's Receive Maximum.
    pub(crate) max_inflight: u16,
    /// The broker's Maximum Packet Size.
    pub(crate) max_packet_size: u32,
    /// The broker's Maximum QoS.
    pub(crate) max_qos: u8,
    /// The broker's Retain Available.
    pub(crate) retain: bool,
    /// The broker's Server Keep Alive (seconds), which overrides ours.
    pub(crate) keep_alive: Option<u16>,
}

impl Limits {
    /// Reads the limits from a CONNACK; `max_inflight` is our own configured cap.
    pub(crate) fn from_connack(ack: &ConnAck, max_inflight: u16) -> Self {
        let props = ack.properties.as_ref();
        let receive_max = props.and_then(|p| p.receive_max).unwrap_or(u16::MAX);
        Self {
            max_inflight: max_inflight.min(receive_max).max(1),
            max_packet_size: props.and_then(|p| p.max_packet_size).unwrap_or(MQTT_MAX_PACKET).min(MQTT_MAX_PACKET),
            max_qos: props.and_then(|p| p.max_qos).unwrap_or(2),
            retain: props.and_then(|p| p.retain_available).unwrap_or(1) != 0,
            keep_alive: props.and_then(|p| p.server_keep_alive),
        }
    }
}

/// A message from the broker for the incoming channel; write `ack` once it is handed over.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// The message.
    pub(crate) message: Message,
    /// PUBACK (QoS 1) or PUBREC (QoS 2) to send after delivery.
    pub(crate) ack: Option<Packet>,
}

/// The broker broke the protocol or closed the session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    /// The broker sent DISCONNECT.
    #[error("broker sent DISCONNECT: {0}")]
    Disconnected(String),
    /// A packet a broker must not send to a client.
    #[error("unexpected {0} packet from the broker")]
    Unexpected(&'static str),
}

/// The protocol state; see the module documentation.
#[derive(Debug)]
pub(crate) struct State {
    shared: Arc<Shared>,
    capacity: usize,
    max_inflight: u16,
    /// Some while connected (after CONNACK).
    limits: Option<Limits>,
    queue: VecDeque<Queued>,
    /// QoS ≥ 1 publishes by packet id.
    inflight: HashMap<u16, Sent>,
    /// QoS 0 publishes serialised but not yet written, in order.
    unflushed: VecDeque<Sent>,
    next_pkid: u16,
    seq: u64,
    written: u64,
    subs: Subscriptions,
    /// Send times of PINGREQs still waiting for their PINGRESP.
    pings: VecDeque<Instant>,
    pings_sent: u64,
    /// Incoming QoS 2 packet ids between PUBLISH and PUBREL.
    incoming_qos2: HashSet<u16>,
    /// The MQTT version of the current (or last) connection.
    wire: Wire,
    /// Copies of the last message still expected (see [`Copies`]).
    copies: Option<Copies>,
    /// This session's broker sends one copy of a message that matches several filters.
    single_copy: bool,
    /// QoS ≥ 1 publishes in the order they were sent: (packet id, seq, when). Entries whose
    /// publish was acknowledged are dropped when they reach the front (or in a sweep), so the
    /// front is the oldest publish still waiting.
    sent_order: VecDeque<(u16, u64, Instant)>,
}

impl State {
    /// A state for at most `capacity` outstanding publishes and `max_inflight` QoS ≥ 1 in flight.
    pub(crate) fn new(shared: Arc<Shared>, capacity: usize, max_inflight: u16) -> Self {
        Self {
            shared,
            capacity,
            max_inflight,
            limits: None,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            unflushed: VecDeque::new(),
            next_pkid: 1,
            seq: 0,
            written: 0,
            subs: Subscriptions::default(),
            pings: VecDeque::new(),
            pings_sent: 0,
            incoming_qos2: HashSet::new(),
            wire: Wire::V5,
            copies: None,
            single_copy: false,
            sent_order: VecDeque::new(),
        }
    }

    /// The MQTT version of the current (or last) connection.
    pub(crate) fn wire(&self) -> Wire {
        self.wire
    }

    /// The limits of the current connection, if connected.
    pub(crate) fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// Publishes waiting in the queue (including withdrawn ones not yet dropped).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.len()
    }

    /// QoS ≥ 1 publishes waiting for their acknowledgement.
    #[cfg(test)]
    fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Appends a publish to the queue.
    pub(crate) fn enqueue(&mut self, queued: Queued) {
        self.queue.push_back(queued);
        // Withdrawn entries are only dropped when reached; while disconnected they could pile
        // up, so sweep them once they outnumber the live ones (amortised O(1)).
        if self.queue.len() >= 2 * self.capacity.max(1) {
            self.queue.retain(|q| !q.ticket.is_withdrawn());
        }
    }

    /// Starts a session: records the broker's limits and subscribes the whole set again.
    pub(crate) fn on_connack(&mut self, ack: &ConnAck, wire: Wire, out: &mut BytesMut) {
        self.wire = wire;
        self.subs.set_wire(wire);
        self.copies = None;
        self.single_copy = false;
        self.limits = Some(Limits::from_connack(ack, self.max_inflight));
        let available = ack.properties.as_ref().and_then(|p| p.subscription_identifiers_available).unwrap_or(1);
        self.subs.use_identifiers(available != 0);
        self.subs.restore();
        self.send_subscribes(out);
    }

    /// Sends the SUBSCRIBEs of the restored set (and refused filters due again) that fit.
    fn send_subscribes(&mut self, out: &mut BytesMut) {
        let Self { subs, inflight, next_pkid, .. } = self;
        subs.send_pending(out, |subs| alloc_pkid(next_pkid, inflight, Some(subs)));
    }

    /// When a refused subscription is next to be asked for again.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.subs.next_retry()
    }

    /// Asks again for the refused subscriptions due at `now`.
    pub(crate) fn retry_due(&mut self, now: Instant, out: &mut BytesMut) {
        self.subs.retry_due(now);
        self.send_subscribes(out);
    }

    /// Serialises queued publishes into `out` until it holds `high_water` bytes, the queue is
    /// empty or the in-flight window is full. Does nothing while disconnected.
    pub(crate) fn fill(&mut self, out: &mut BytesMut, high_water: usize) {
        let Some(limits) = self.limits else { return };
        self.send_subscribes(out);
        let now = Instant::now();
        // Acknowledged entries behind a publish that waits long could pile up: sweep them once
        // they outnumber the window.
        if self.sent_order.len() > 2 * usize::from(self.max_inflight).max(self.inflight.len()) {
            let inflight = &self.inflight;
            self.sent_order.retain(|(pkid, seq, _)| inflight.get(pkid).is_some_and(|s| s.seq == *seq));
        }
        while out.len() < high_water {
            let Some(front) = self.queue.front() else { break };
            let qos = front.publish.qos;
            if qos != QoS::AtMostOnce && self.inflight.len() >= usize::from(limits.max_inflight) {
                break;
            }
            let Some(mut queued) = self.queue.pop_front() else { break };
            if !queued.ticket.take() {
                continue; // withdrawn by its caller: never sent
            }
            if let Some(reason) = check(&queued.publish, &limits) {
                self.complete(queued, Err(PublishError::Rejected(reason)));
                continue;
            }
            if qos != QoS::AtMostOnce {
                let in_use = &self.subs;
                match alloc_pkid(&mut self.next_pkid, &self.inflight, Some(in_use)) {
                    Some(pkid) => queued.publish.pkid = pkid,
                    None => {
                        self.queue.push_front(queued);
                        break;
                    }
                }
            }
            if queued.publish.size() > limits.max_packet_size as usize {
                let reason = "packet too large".to_owned();
                self.complete(queued, Err(PublishError::Rejected(reason)));
                continue;
            }
            let mark = out.len();
            if let Err(e) = self.wire.write_publish(&queued.publish, out) {
                out.truncate(mark);
                self.complete(queued, Err(PublishError::Rejected(e.to_string())));
                continue;
            }
            self.seq += 1;
            // `out` holds exactly the bytes not yet written, so this is where the packet ends.
            let end = self.written + out.len() as u64;
            let sent = Sent { seq: self.seq, end, released: false, queued };
            if qos == QoS::AtMostOnce {
                self.unflushed.push_back(sent);
            } else {
                let pkid = sent.queued.publish.pkid;
                self.sent_order.push_back((pkid, sent.seq, now));
                self.inflight.insert(pkid, sent);
            }
        }
    }

    /// Records that `n` more bytes of `out` reached the socket: QoS 0 publishes now written
    /// resolve.
    pub(crate) fn on_written(&mut self, n: usize) {
        self.written += n as u64;
        while self.unflushed.front().is_some_and(|s| s.end <= self.written) {
            if let Some(sent) = self.unflushed.pop_front() {
                self.complete(sent.queued, Ok(()));
            }
        }
    }

    /// Handles one packet from the broker; replies (PUBREL, PUBCOMP, PINGREQ) go into `out`.
    pub(crate) fn handle(
        &mut self,
        packet: Packet,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<Option<Inbound>, StateError> {
        match packet {
            Packet::Publish(publish) => {
                if self.is_copy(&publish, now) {
                    if let Some(ack) = ack_of(&publish) {
                        write(self.wire, out, &ack);
                    }
                    return Ok(None);
                }
                return Ok(self.on_publish(publish, out));
            }
            Packet::PubAck(ack) => {
                let result = match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                    reason => Err(rejected(reason, ack.properties.and_then(|p| p.reason_string))),
                };
                self.acknowledge(ack.pkid, QoS::AtLeastOnce, result);
            }
            Packet::PubRec(rec) => match rec.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => {
                    if let Some(sent) = self.inflight.get_mut(&rec.pkid) {
                        sent.released = true;
                    }
                    write(self.wire, out, &Packet::PubRel(PubRel::new(rec.pkid, None)));
                }
                reason => {
                    let text = rec.properties.and_then(|p| p.reason_string);
                    self.acknowledge(rec.pkid, QoS::ExactlyOnce, Err(rejected(reason, text)));
                }
            },
            Packet::PubComp(comp) => self.acknowledge(comp.pkid, QoS::ExactlyOnce, Ok(())),
            Packet::PubRel(rel) => {
                self.incoming_qos2.remove(&rel.pkid);
                write(self.wire, out, &Packet::PubComp(PubComp::new(rel.pkid, None)));
            }
            Packet::SubAck(ack) => {
                if let Some(barrier) = self.subs.on_suback(ack, now) {
                    // Resolve the subscribe only after a PINGREQ round trip, so that retained
                    // messages sent along with the SUBACK are delivered first.
                    self.ping(now, out);
                    self.subs.await_ping(barrier, self.pings_sent);
                }
            }
            Packet::UnsubAck(ack) => self.subs.on_unsuback(ack),
            Packet::PingResp(_) => {
                if self.pings.pop_front().is_some() {
                    // PINGRESPs come in order: this answers ping number `answered`.
                    let answered = self.pings_sent - self.pings.len() as u64;
                    self.subs.on_pingresp(answered);
                }
            }
            Packet::Disconnect(d) => {
                let reason = d.properties.and_then(|p| p.reason_string);
                let text = match reason {
                    Some(r) => format!("{:?}, {r}", d.reason_code),
                    None => format!("{:?}", d.reason_code),
                };
                return Err(StateError::Disconnected(text));
            }
            Packet::ConnAck(_) => return Err(StateError::Unexpected("CONNACK")),
            Packet::Auth(_) => return Err(StateError::Unexpected("AUTH")),
            Packet::Connect(..) | Packet::Subscribe(_) | Packet::Unsubscribe(_) | Packet::PingReq(_) => {
                return Err(StateError::Unexpected("client-to-server"));
            }
        }
        Ok(None)
    }

    /// Whether `publish` is a further copy of the message before it (see [`Copies`]); else,
    /// when it matches several filters, the copies of it to expect.
    fn is_copy(&mut self, publish: &Publish, now: Instant) -> bool {
        // A retained message comes for a new subscription only: once.
        if self.subs.names_subscriptions() || self.single_copy || publish.retain {
            return false;
        }
        if let Some(copies) = &mut self.copies {
            if now <= copies.until {
                if copies.topic == publish.topic && copies.payload == publish.payload {
                    copies.left -= 1;
                    if copies.left == 0 {
                        self.copies = None;
                    }
                    return true;
                }
                if copies.left + 1 == copies.matched {
                    debug!("The broker sends one copy of a message that matches several subscriptions.");
                    self.single_copy = true;
                    self.copies = None;
                    return false;
                }
            }
            self.copies = None;
        }
        let matched = std::str::from_utf8(&publish.topic).map_or(0, |t| self.subs.matching(t));
        if matched > 1 {
            self.copies = Some(Copies {
                topic: publish.topic.clone(),
                payload: publish.payload.clone(),
                left: matched - 1,
                matched,
                until: now + COPY_WINDOW,
            });
        }
        false
    }

    fn on_publish(&mut self, publish: Publish, out: &mut BytesMut) -> Option<Inbound> {
        let pkid = publish.pkid;
        let ack = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(pkid, None))),
            QoS::ExactlyOnce => {
                let rec = Packet::PubRec(PubRec::new(pkid, None));
                if !self.incoming_qos2.insert(pkid) {
                    write(self.wire, out, &rec); // a DUP of one we already delivered
                    return None;
                }
                Some(rec)
            }
        };
        match message_from(publish, &self.subs) {
            Some(message) => Some(Inbound { message, ack }),
            None => {
                warn!(pkid, "Dropped a message with a topic that is not UTF-8.");
                if let Some(ack) = ack {
                    write(self.wire, out, &ack);
                }
                None
            }
        }
    }

    fn acknowledge(&mut self, pkid: u16, qos: QoS, result: PublishResult) {
        match self.inflight.remove(&pkid) {
            Some(sent) if sent.queued.publish.qos == qos => self.complete(sent.queued, result),
            Some(sent) => {
                debug!(pkid, "Ignored an acknowledgement of the wrong kind.");
                self.inflight.insert(pkid, sent);
            }
            None => debug!(pkid, "Ignored an acknowledgement for an unknown packet id."),
        }
    }

    /// Sends a PINGREQ (keep-alive or barrier).
    pub(crate) fn ping(&mut self, now: Instant, out: &mut BytesMut) {
        write(self.wire, out, &Packet::PingReq(PingReq));
        self.pings.push_back(now);
        self.pings_sent += 1;
    }

    /// When the oldest unanswered PINGREQ was sent.
    pub(crate) fn oldest_ping(&self) -> Option<Instant> {
        self.pings.front().copied()
    }

    /// When the oldest publish in flight will have waited `timeout` for its acknowledgement.
    pub(crate) fn stall_deadline(&mut self, timeout: Duration) -> Option<Instant> {
        if timeout.is_zero() {
            return None;
        }
        while let Some(&(pkid, seq, at)) = self.sent_order.front() {
            if self.inflight.get(&pkid).is_some_and(|s| s.seq == seq) {
                return Some(at + timeout);
            }
            self.sent_order.pop_front();
        }
        None
    }

    /// True if a PINGREQ has waited longer than `timeout` for its PINGRESP.
    pub(crate) fn ping_overdue(&self, now: Instant, timeout: Duration) -> bool {
        self.oldest_ping().is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }

    /// Subscribes `filter` (now if connected, else at the next CONNACK).
    pub(crate) fn subscribe(
        &mut self,
        filter: String,
        qos: QoS,
        waiter: super::subscriptions::Waiter,
        out: &mut BytesMut,
    ) {
        let pkid = self.limits.and_then(|_| alloc_pkid(&mut self.next_pkid, &self.inflight, Some(&self.subs)));
        self.subs.subscribe(filter, qos, waiter, pkid, out);
    }

    /// Unsubscribes `filter` and removes it from the set.
    pub(crate) fn unsubscribe(&mut self, filter: String, waiter: super::subscriptions::Waiter, out: &mut BytesMut) {
        let pkid = self.limits.and_then(|_| alloc_pkid(&mut self.next_pkid, &self.inflight, Some(&self.subs)));
        self.subs.unsubscribe(filter, waiter, pkid, out);
    }

    /// Ends a session: publishes not known to be delivered go back to the front of the queue
    /// (QoS ≥ 1 with DUP), subscribe calls wait for the next session.
    pub(crate) fn on_disconnect(&mut self) {
        self.limits = None;
        self.sent_order.clear();
        let mut resend: Vec<Sent> = self.unflushed.drain(..).collect();
        for (_, sent) in self.inflight.drain() {
            resend.push(sent);
        }
        resend.sort_by_key(|s| s.seq);
        // A broker that drops the connection over one publish (too large for a limit it did not
        // announce, say) would see it again after every reconnect. Blame the oldest publish
        // still unacknowledged; its PUBACK cannot be on the way if the broker choked on it.
        if let Some(oldest) = resend.iter_mut().find(|s| !s.released) {
            oldest.queued.losses += 1;
        }
        for sent in resend.into_iter().rev() {
            if sent.released {
                // QoS 2 past PUBREC: the broker has it; the session that would finish the
                // handshake is gone (clean start).
                self.complete(sent.queued, Ok(()));
                continue;
            }
            if sent.queued.losses >= MAX_LOSSES {
                let topic = String::from_utf8_lossy(&sent.queued.publish.topic);
                warn!(%topic, losses = MAX_LOSSES, "Gave up on a publish the broker keeps disconnecting over.");
                let reason = format!("the broker closed the connection {MAX_LOSSES} times over it");
                self.complete(sent.queued, Err(PublishError::Rejected(reason)));
                continue;
            }
            let mut queued = sent.queued;
            queued.publish.dup = queued.publish.qos != QoS::AtMostOnce;
            queued.publish.pkid = 0;
            self.queue.push_front(queued);
        }
        self.subs.on_disconnect();
        self.pings.clear();
        self.pings_sent = 0;
        self.incoming_qos2.clear();
        self.written = 0;
    }

    /// Resolves everything still pending with `Closed`.
    pub(crate) fn close(&mut self) {
        self.limits = None;
        let pending: Vec<Queued> =
            self.unflushed.drain(..).chain(self.inflight.drain().map(|(_, s)| s)).map(|s| s.queued).collect();
        for queued in pending {
            self.complete(queued, Err(PublishError::Closed));
        }
        while let Some(queued) = self.queue.pop_front() {
            if queued.ticket.take() {
                self.complete(queued, Err(PublishError::Closed));
            }
        }
        self.subs.close();
    }

    fn complete(&self, queued: Queued, result: PublishResult) {
        // Count it out first, so that a caller woken by the result sees the queue shrunk.
        self.shared.release();
        let _ = queued.tx.send(result);
    }
}

/// Why a publish cannot be sent to this broker, if it cannot: the setting that fixes it.
fn check(publish: &Publish, limits: &Limits) -> Option<String> {
    let (qos, max) = (publish.qos as u8, limits.max_qos);
    if qos > max {
        // The fix first: a device's diagnostic is cut to its size allowance.
        Some(format!("set mqtt.publish_qos: {max} (the broker's maximum QoS; this was QoS {qos})"))
    } else if publish.retain && !limits.retain {
        Some(
            "retain not supported by the broker: allow retained messages at the broker (PubSub values need them)"
                .into(),
        )
    } else {
        None
    }
}

/// The next packet id not used by a publish in flight or a pending (un)subscribe.
fn alloc_pkid(next: &mut u16, inflight: &HashMap<u16, Sent>, subs: Option<&Subscriptions>) -> Option<u16> {
    for _ in 0..u16::MAX {
        let id = *next;
        *next = id.checked_add(1).unwrap_or(1);
        if !inflight.contains_key(&id) && !subs.is_some_and(|s| s.in_use(id)) {
            return Some(id);
        }
    }
    None
}

/// Serialises a small control packet into `out`.
pub(crate) fn write(wire: Wire, out: &mut BytesMut, packet: &Packet) {
    let mark = out.len();
    if let Err(e) = wire.write(packet, out) {
        out.truncate(mark);
        warn!(error = %e, "Could not serialise an MQTT packet.");
    }
}

fn rejected(reason: impl std::fmt::Debug, text: Option<String>) -> PublishError {
    PublishError::Rejected(match text {
        Some(text) => format!("{reason:?}: {text}"),
        None => format!("{reason:?}"),
    })
}

/// The acknowledgement a PUBLISH from the broker wants, if any.
fn ack_of(publish: &Publish) -> Option<Packet> {
    match publish.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(publish.pkid, None))),
        QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(publish.pkid, None))),
    }
}

/// Converts a PUBLISH from the broker; None if its topic is not UTF-8.
fn message_from(publish: Publish, subs: &Subscriptions) -> Option<Message> {
    let topic = String::from_utf8(publish.topic.to_vec()).ok()?;
    let props = publish.properties.unwrap_or_default();
    Some(Message {
        subscriptions: subs.filters_of(&props.subscription_identifiers),
        topic,
        payload: publish.payload,
        qos: publish.qos as u8,
        retain: publish.retain,
        expiry: props.message_expiry_interval,
        content_type: props.content_type,
        user_properties: props.user_properties,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, ConnectReturnCode, PingResp, SubAck, SubscribeReasonCode};
    use std::sync::atomic::Ordering;

    use tokio::sync::oneshot;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::mqtt::SubscribeError;
    use crate::mqtt::queue::Ticket;
    use crate::mqtt::wire::no_connack_properties;

    type Receipt = oneshot::Receiver<PublishResult>;

    fn new_state(max_inflight: u16) -> (State, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        (State::new(shared.clone(), 100, max_inflight), shared)
    }

    fn publish(state: &mut State, topic: &str, qos: QoS) -> (Receipt, Arc<Ticket>) {
        assert!(state.shared.try_reserve(100));
        let (tx, rx) = oneshot::channel();
        let ticket = Arc::new(Ticket::default());
        let publish = Publish::new(topic, qos, &b"p"[..], None);
        state.enqueue(Queued { publish, tx, ticket: ticket.clone(), losses: 0 });
        (rx, ticket)
    }

    fn connack(receive_max: Option<u16>, max_packet_size: Option<u32>) -> ConnAck {
        let properties = ConnAckProperties { receive_max, max_packet_size, ..no_connack_properties() };
        ConnAck { session_present: false, code: ConnectReturnCode::Success, properties: Some(properties) }
    }

    /// Fills, "writes" everything and returns the packets written.
    fn flush(state: &mut State, out: &mut BytesMut) -> Vec<Packet> {
        state.fill(out, usize::MAX);
        state.on_written(out.len());
        let mut packets = Vec::new();
        while !out.is_empty() {
            packets.push(Packet::read(out, None).unwrap());
        }
        packets
    }

    fn connect(state: &mut State, ack: ConnAck) -> Vec<Packet> {
        let mut out = BytesMut::new();
        state.on_connack(&ack, Wire::V5, &mut out);
        flush(state, &mut out)
    }

    fn published(packets: &[Packet]) -> Vec<(String, u16, bool)> {
        let topic = |p: &Publish| String::from_utf8(p.topic.to_vec()).unwrap();
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((topic(p), p.pkid, p.dup)),
                _ => None,
            })
            .collect()
    }

    fn puback(state: &mut State, pkid: u16) {
        state.handle(Packet::PubAck(PubAck::new(pkid, None)), Instant::now(), &mut BytesMut::new()).unwrap();
    }

    #[test]
    fn publishes_queued_while_disconnected_are_sent_after_connack_and_resolve_at_their_own_puback() {
        let (mut state, shared) = new_state(10);
        let (mut a, _) = publish(&mut state, "a", QoS::AtLeastOnce);
        let (mut b, _) = publish(&mut state, "b", QoS::AtLeastOnce);
        assert!(flush(&mut state, &mut BytesMut::new()).is_empty(), "sent while disconnected");
        let sent = published(&connect(&mut state, connack(None, None)));
        assert_eq!(sent, [("a".into(), 1, false), ("b".into(), 2, false)]);
        puback(&mut state, 2);
        assert_eq!(b.try_recv(), Ok(Ok(())));
        assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(shared.outstanding.load(Ordering::Acquire), 1);
        puback(&mut state, 1);
        assert_eq!(a.try_recv(), Ok(Ok(())));
        assert_eq!(shared.outstanding.load(Ordering::Acquire), 0);
    }

    #[test]
    fn qos0_publish_resolves_only_once_all_its_bytes_are_written() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let (mut rx, _) = publish(&mut state, "a", QoS::AtMostOnce);
        let mut out = BytesMut::new();
        state.ping(Instant::now(), &mut out); // bytes ahead of it count too
        state.fill(&mut out, usize::MAX);
        state.on_written(2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        state.on_written(out.len() - 3);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        state.on_written(1);
        assert_eq!(rx.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn a_withdrawn_publish_is_never_written_and_counted_out_once() {
        let (mut state, shared) = new_state(10);
        let (_rx, ticket) = publish(&mut state, "gone", QoS::AtLeastOnce);
        let (_rx2, _) = publish(&mut state, "kept", QoS::AtLeastOnce);
        assert!(ticket.withdraw());
        shared.release(); // what Receipt::drop does
        let sent = published(&connect(&mut state, connack(None, None)));
        assert_eq!(sent, [("kept".into(), 1, false)]);
        assert_eq!(shared.outstanding.load(Ordering::Acquire), 1);
        assert_eq!(state.queued(), 0);
    }

    #[test]
    fn inflight_window_is_capped_by_the_brokers_receive_maximum() {
        let (mut state, _) = new_state(10);
        for t in ["a", "b", "c"] {
            publish(&mut state, t, QoS::AtLeastOnce);
        }
        assert_eq!(published(&connect(&mut state, connack(Some(2), None))).len(), 2);
        assert_eq!((state.inflight(), state.queued()), (2, 1));
        puback(&mut state, 1);
        let sent = published(&flush(&mut state, &mut BytesMut::new()));
        assert_eq!(sent, [("c".into(), 3, false)]);
    }

    #[test]
    fn packet_ids_wrap_and_skip_ids_still_in_flight() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        publish(&mut state, "a", QoS::AtLeastOnce); // pkid 1, never acked
        flush(&mut state, &mut BytesMut::new());
        state.next_pkid = u16::MAX;
        publish(&mut state, "b", QoS::AtLeastOnce);
        publish(&mut state, "c", QoS::AtLeastOnce);
        let ids: Vec<u16> = published(&flush(&mut state, &mut BytesMut::new())).iter().map(|p| p.1).collect();
        assert_eq!(ids, [u16::MAX, 2]);
    }

    #[test]
    fn after_a_disconnect_subscriptions_come_first_then_inflight_publishes_with_dup_then_the_queue() {
        let (mut state, _) = new_state(1);
        let (tx, _sub) = oneshot::channel();
        state.subscribe("s/#".into(), QoS::AtLeastOnce, tx, &mut BytesMut::new());
        let (mut a, _) = publish(&mut state, "a", QoS::AtLeastOnce);
        publish(&mut state, "b", QoS::AtLeastOnce);
        connect(&mut state, connack(None, None));
        state.on_disconnect();
        let packets = connect(&mut state, connack(None, None));
        assert!(matches!(&packets[0], Packet::Subscribe(s) if s.filters[0].path == "s/#"));
        // Packet ids: SUBSCRIBE 1, a 2; after the reconnect SUBSCRIBE 3, a 4, b 5.
        assert_eq!(published(&packets), [("a".into(), 4, true)]);
        puback(&mut state, 4);
        assert_eq!(a.try_recv(), Ok(Ok(())));
        assert_eq!(published(&flush(&mut state, &mut BytesMut::new())), [("b".into(), 5, false)]);
    }

    #[test]
    fn a_publish_oldest_in_flight_at_three_disconnects_is_rejected_and_the_rest_resent() {
        let (mut state, _) = new_state(10);
        let (mut poison, _) = publish(&mut state, "poison", QoS::AtLeastOnce);
        let (mut next, _) = publish(&mut state, "next", QoS::AtLeastOnce);
        for _ in 0..3 {
            assert_eq!(published(&connect(&mut state, connack(None, None))).len(), 2);
            state.on_disconnect();
        }
        let reason = "the broker closed the connection 3 times over it".to_owned();
        assert_eq!(poison.try_recv(), Ok(Err(PublishError::Rejected(reason))));
        assert_eq!(next.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(published(&connect(&mut state, connack(None, None))), [("next".into(), 7, true)]);
    }

    #[test]
    fn subscribe_resolves_after_its_suback_and_the_following_pingresp() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let (tx, mut rx) = oneshot::channel();
        let mut out = BytesMut::new();
        state.subscribe("t".into(), QoS::AtMostOnce, tx, &mut out);
        let Packet::Subscribe(sub) = flush(&mut state, &mut out).remove(0) else { panic!() };
        let ok = vec![SubscribeReasonCode::Success(QoS::AtMostOnce)];
        let ack = Packet::SubAck(SubAck { pkid: sub.pkid, return_codes: ok, properties: None });
        state.handle(ack, Instant::now(), &mut out).unwrap();
        assert!(matches!(flush(&mut state, &mut out)[..], [Packet::PingReq(_)]));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        state.handle(Packet::PingResp(PingResp), Instant::now(), &mut out).unwrap();
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(state.subs.filters().collect::<Vec<_>>(), [("t", QoS::AtMostOnce)]);
    }

    #[test]
    fn a_rejected_subscription_fails_the_call_and_leaves_the_set() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let (tx, mut rx) = oneshot::channel();
        let mut out = BytesMut::new();
        state.subscribe("secret".into(), QoS::AtMostOnce, tx, &mut out);
        let Packet::Subscribe(sub) = flush(&mut state, &mut out).remove(0) else { panic!() };
        let no = vec![SubscribeReasonCode::NotAuthorized];
        let ack = Packet::SubAck(SubAck { pkid: sub.pkid, return_codes: no, properties: None });
        state.handle(ack, Instant::now(), &mut out).unwrap();
        assert_eq!(rx.try_recv(), Ok(Err(SubscribeError::Rejected("Some(NotAuthorized)".into()))));
        assert_eq!(state.subs.filters().count(), 0);
    }

    fn suback(state: &mut State, pkid: u16, code: SubscribeReasonCode, now: Instant) {
        let ack = Packet::SubAck(SubAck { pkid, return_codes: vec![code], properties: None });
        state.handle(ack, now, &mut BytesMut::new()).unwrap();
    }

    fn subscribes(packets: &[Packet]) -> Vec<(String, u16)> {
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Subscribe(s) => Some((s.filters[0].path.clone(), s.pkid)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_filter_refused_after_a_reconnect_stays_and_is_asked_for_again_until_taken() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let (tx, _rx) = oneshot::channel();
        let mut out = BytesMut::new();
        state.subscribe("cmd/o1".into(), QoS::AtLeastOnce, tx, &mut out);
        let first = subscribes(&flush(&mut state, &mut out));
        let start = Instant::now();
        suback(&mut state, first[0].1, SubscribeReasonCode::Success(QoS::AtLeastOnce), start);
        // The broker (a NATS cluster electing leaders) refuses the restored filter twice.
        state.on_disconnect();
        let restored = subscribes(&connect(&mut state, connack(None, None)));
        assert_eq!(restored.len(), 1);
        suback(&mut state, restored[0].1, SubscribeReasonCode::Unspecified, start);
        assert_eq!(state.subs.filters().collect::<Vec<_>>(), [("cmd/o1", QoS::AtLeastOnce)]);
        assert_eq!(state.next_retry(), Some(start + Duration::from_secs(1)));
        state.retry_due(start + Duration::from_millis(500), &mut out);
        assert!(subscribes(&flush(&mut state, &mut out)).is_empty(), "asked again before its time");
        state.retry_due(start + Duration::from_secs(1), &mut out);
        let again = subscribes(&flush(&mut state, &mut out));
        assert_eq!(again.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["cmd/o1"]);
        let later = start + Duration::from_secs(1);
        suback(&mut state, again[0].1, SubscribeReasonCode::Unspecified, later);
        assert_eq!(state.next_retry(), Some(later + Duration::from_secs(2)), "backs off");
        state.retry_due(later + Duration::from_secs(2), &mut out);
        let third = subscribes(&flush(&mut state, &mut out));
        suback(&mut state, third[0].1, SubscribeReasonCode::Success(QoS::AtLeastOnce), later);
        assert_eq!(state.next_retry(), None);
        assert_eq!(state.subs.filters().count(), 1);
    }

    #[test]
    fn a_set_larger_than_the_window_is_restored_whole_as_the_acks_come_back() {
        use crate::mqtt::subscriptions::RESTORE_WINDOW;
        let (mut state, _) = new_state(10);
        let total = 2 * RESTORE_WINDOW + 10;
        for n in 0..total {
            let (tx, _rx) = oneshot::channel();
            state.subscribe(format!("d/{n}"), QoS::AtMostOnce, tx, &mut BytesMut::new());
        }
        publish(&mut state, "p", QoS::AtLeastOnce);
        let packets = connect(&mut state, connack(None, None));
        let mut sent = subscribes(&packets);
        assert_eq!(sent.len(), RESTORE_WINDOW);
        assert_eq!(published(&packets).len(), 1, "a publish does not wait for the whole restore");
        let mut seen: HashSet<String> = HashSet::new();
        while !sent.is_empty() {
            for (filter, pkid) in &sent {
                assert!(seen.insert(filter.clone()), "{filter} sent twice");
                suback(&mut state, *pkid, SubscribeReasonCode::Success(QoS::AtMostOnce), Instant::now());
            }
            sent = subscribes(&flush(&mut state, &mut BytesMut::new()));
        }
        assert_eq!(seen.len(), total);
    }

    #[test]
    fn the_stall_deadline_follows_the_oldest_publish_waiting_however_many_others_are_acknowledged() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let timeout = Duration::from_secs(30);
        assert_eq!(state.stall_deadline(timeout), None);
        let before = Instant::now();
        publish(&mut state, "stuck", QoS::AtLeastOnce);
        flush(&mut state, &mut BytesMut::new());
        let first = state.stall_deadline(timeout).unwrap();
        assert!(first >= before + timeout);
        for _ in 0..50 {
            publish(&mut state, "moving", QoS::AtLeastOnce);
            let sent = published(&flush(&mut state, &mut BytesMut::new()));
            puback(&mut state, sent[0].1);
        }
        assert_eq!(state.stall_deadline(timeout), Some(first), "acks of later publishes do not reset it");
        assert!(state.sent_order.len() <= 21, "acknowledged entries are swept: {}", state.sent_order.len());
        puback(&mut state, 1);
        assert_eq!(state.stall_deadline(timeout), None);
        assert_eq!(state.stall_deadline(Duration::ZERO), None);
    }

    #[test]
    fn a_refusal_code_in_the_puback_rejects_the_publish() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let (mut rx, _) = publish(&mut state, "a", QoS::AtLeastOnce);
        flush(&mut state, &mut BytesMut::new());
        let ack = PubAck { pkid: 1, reason: PubAckReason::NotAuthorized, properties: None };
        state.handle(Packet::PubAck(ack), Instant::now(), &mut BytesMut::new()).unwrap();
        assert_eq!(rx.try_recv(), Ok(Err(PublishError::Rejected("NotAuthorized".into()))));
    }

    #[test]
    fn a_publish_over_the_brokers_maximum_packet_size_is_rejected_without_writing() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, Some(8)));
        let (mut rx, _) = publish(&mut state, "a/long/topic", QoS::AtMostOnce);
        assert!(flush(&mut state, &mut BytesMut::new()).is_empty());
        assert_eq!(rx.try_recv(), Ok(Err(PublishError::Rejected("packet too large".into()))));
    }

    #[test]
    fn incoming_qos2_duplicates_are_delivered_once() {
        let (mut state, _) = new_state(10);
        connect(&mut state, connack(None, None));
        let mut incoming = Publish::new("t", QoS::ExactlyOnce, &b"x"[..], None);
        incoming.pkid = 7;
        let mut out = BytesMut::new();
        let first = state.handle(Packet::Publish(incoming.clone()), Instant::now(), &mut out).unwrap();
        assert!(matches!(first, Some(Inbound { ack: Some(Packet::PubRec(_)), .. })));
        incoming.dup = true;
        let again = state.handle(Packet::Publish(incoming), Instant::now(), &mut out).unwrap();
        assert!(again.is_none());
        assert!(matches!(flush(&mut state, &mut out)[..], [Packet::PubRec(_)]));
    }

    #[test]
    fn close_resolves_queued_inflight_and_subscribe_calls_as_closed() {
        let (mut state, shared) = new_state(1);
        connect(&mut state, connack(None, None));
        let (mut sent, _) = publish(&mut state, "a", QoS::AtLeastOnce);
        let (mut queued, _) = publish(&mut state, "b", QoS::AtLeastOnce);
        let mut out = BytesMut::new();
        flush(&mut state, &mut out);
        let (tx, mut sub) = oneshot::channel();
        state.subscribe("s".into(), QoS::AtMostOnce, tx, &mut out);
        state.close();
        assert_eq!(sent.try_recv(), Ok(Err(PublishError::Closed)));
        assert_eq!(queued.try_recv(), Ok(Err(PublishError::Closed)));
        assert_eq!(sub.try_recv(), Ok(Err(SubscribeError::Closed)));
        assert_eq!(shared.outstanding.load(Ordering::Acquire), 0);
    }

    /// A session without Subscription Identifiers, subscribed to `a/#` and `a/+`.
    fn overlapping() -> State {
        let (mut state, _) = new_state(10);
        let mut ack = connack(None, None);
        ack.properties.as_mut().unwrap().subscription_identifiers_available = Some(0);
        connect(&mut state, ack);
        for filter in ["a/#", "a/+"] {
            let (tx, _rx) = oneshot::channel();
            state.subscribe(filter.into(), QoS::AtLeastOnce, tx, &mut BytesMut::new());
        }
        state
    }

    /// Feeds QoS 1 publishes (packet ids from 1); returns the payloads delivered and the
    /// packet ids acknowledged at once (the dropped copies).
    fn feed(state: &mut State, messages: &[(&str, &str)]) -> (Vec<String>, Vec<u16>) {
        let (mut delivered, mut acked) = (Vec::new(), Vec::new());
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let mut p = Publish::new(*topic, QoS::AtLeastOnce, payload.as_bytes().to_vec(), None);
            p.pkid = i as u16 + 1;
            let mut out = BytesMut::new();
            if let Some(inbound) = state.handle(Packet::Publish(p), Instant::now(), &mut out).unwrap() {
                delivered.push(String::from_utf8(inbound.message.payload.to_vec()).unwrap());
            }
            while !out.is_empty() {
                if let Packet::PubAck(ack) = Packet::read(&mut out, None).unwrap() {
                    acked.push(ack.pkid);
                }
            }
        }
        (delivered, acked)
    }

    #[test]
    fn a_broker_sending_a_copy_per_matching_filter_delivers_each_message_once() {
        let mut state = overlapping();
        let (delivered, acked) =
            feed(&mut state, &[("a/b", "1"), ("a/b", "1"), ("a/b", "2"), ("a/b", "2"), ("a/b/c", "3")]);
        assert_eq!(delivered, ["1", "2", "3"]);
        assert_eq!(acked, [2, 4], "dropped copies are acknowledged");
    }

    #[test]
    fn a_broker_sending_one_copy_is_learnt_and_nothing_is_dropped() {
        let mut state = overlapping();
        let (delivered, acked) = feed(&mut state, &[("a/b", "1"), ("a/b", "2"), ("a/b", "2"), ("a/b", "3")]);
        assert_eq!(delivered, ["1", "2", "2", "3"], "the same value published twice is not a copy");
        assert!(acked.is_empty());
    }
}
