//! The subscription set and the subscribe calls waiting on it (sans-IO, part of the state).
//!
//! A filter enters the set when `subscribe()` is called and leaves it on `unsubscribe()` or when
//! the broker refuses it the first time it is asked. Every session starts by subscribing the
//! whole set again, at most [`RESTORE_WINDOW`] SUBSCRIBEs awaiting their SUBACK at a time, so
//! that a set larger than a session's 65,535 packet ids goes out whole, beside the publishes.
//! A `subscribe()` call resolves after its SUBACK and then a PINGREQ → PINGRESP round trip (the
//! barrier); if the connection drops first, it waits for the next session's SUBACK instead.
//!
//! A filter the broker took before and refuses when the set is restored stays in the set and
//! is asked again after 1 s, 2 s, 4 s … (at most [`RETRY_MAX`]) until taken: such a refusal is
//! the broker's passing trouble (a NATS cluster refuses subscriptions while it elects new
//! JetStream leaders after a node died), and dropping the filter would leave its observers
//! without notifications for good while the gateway looked healthy.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, RetainForwardRule, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::{QoS, has_wildcards, matches};
use tokio::sync::oneshot;
use tracing::warn;

use super::client::SubscribeError;
use super::state::write;
use super::wire::Wire;

/// Resolves a `subscribe()` or `unsubscribe()` call.
pub(crate) type Waiter = oneshot::Sender<Result<(), SubscribeError>>;

#[derive(Debug)]
enum Request {
    Subscribe { filter: String, waiters: Vec<Waiter> },
    Unsubscribe { waiter: Waiter },
}

/// Subscribe calls whose SUBACK arrived, waiting for the PINGRESP to ping number `ping`.
#[derive(Debug)]
pub(crate) struct Barrier {
    ping: u64,
    filter: String,
    waiters: Vec<Waiter>,
}

/// A filter of the set.
#[derive(Debug, Clone, Copy)]
struct Entry {
    qos: QoS,
    /// The broker took it at least once (a later refusal is retried, not final).
    taken: bool,
}

/// The subscription set; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// Filters are shared `Arc<str>` between `set`, `ids` and `filters`: with a million
    /// devices each on its own topic, three copies of each would add up.
    set: BTreeMap<Arc<str>, Entry>,
    /// SUBSCRIBE / UNSUBSCRIBE sent on this session, by packet id.
    requests: HashMap<u16, Request>,
    /// Filters of the set still to be sent on this session, in order: the restored set, and
    /// refused filters whose retry is due. One unsubscribed meanwhile is skipped.
    pending: VecDeque<Arc<str>>,
    /// Refused filters the broker took before: when to ask again.
    retries: Vec<(Instant, Arc<str>)>,
    /// How many times in a row this session's broker refused each of them.
    refusals: HashMap<Arc<str>, u32>,
    /// Subscribe calls waiting for the next session.
    parked: HashMap<String, Vec<Waiter>>,
    barriers: VecDeque<Barrier>,
    /// The Subscription Identifier of each filter in the set, and the reverse; sent when the
    /// broker supports them, so that a message names the subscriptions it was sent for.
    ids: HashMap<Arc<str>, usize>,
    filters: HashMap<usize, Arc<str>>,
    last_id: usize,
    /// The broker of this session accepts Subscription Identifiers.
    identifiers: bool,
    /// The MQTT version of this session.
    wire: Wire,
    /// The filters of `set` with a wildcard (`+`, `#`): a topic matches at most one filter
    /// without one (itself), so counting the filters a topic matches looks at these only.
    wildcards: BTreeSet<Arc<str>>,
}

/// At most this many SUBSCRIBEs of a restore await their SUBACK at once.
pub(crate) const RESTORE_WINDOW: usize = 1024;

/// The longest wait before asking again for a filter the broker refused after taking it.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(30);

/// The largest Subscription Identifier (a variable byte integer, MQTT v5 §3.8.2.1.2).
const MAX_SUBSCRIPTION_ID: usize = 268_435_455;

impl Subscriptions {
    /// The filters in the set and their QoS.
    #[cfg(test)]
    pub(crate) fn filters(&self) -> impl Iterator<Item = (&str, QoS)> {
        self.set.iter().map(|(f, e)| (&**f, e.qos))
    }

    /// Whether SUBSCRIBE packets of this session carry Subscription Identifiers (the broker's
    /// CONNACK says whether it supports them; absent means yes).
    pub(crate) fn use_identifiers(&mut self, available: bool) {
        self.identifiers = available;
    }

    /// Whether this session's broker names the subscriptions a message was sent for.
    pub(crate) fn names_subscriptions(&self) -> bool {
        self.identifiers
    }

    /// How many filters of the set `topic` matches.
    pub(crate) fn matching(&self, topic: &str) -> usize {
        let exact = usize::from(self.set.contains_key(topic));
        exact + self.wildcards.iter().filter(|f| matches(topic, f)).count()
    }

    /// Records the MQTT version of the session that starts.
    pub(crate) fn set_wire(&mut self, wire: Wire) {
        self.wire = wire;
    }

    /// The filters that Subscription Identifiers `ids` stand for (unknown ones are skipped).
    pub(crate) fn filters_of(&self, ids: &[usize]) -> Vec<String> {
        ids.iter().filter_map(|id| self.filters.get(id).map(|f| f.to_string())).collect()
    }

    /// The identifier of `filter`, given one if it has none.
    fn id_of(&mut self, filter: &Arc<str>) -> usize {
        if let Some(&id) = self.ids.get(filter) {
            return id;
        }
        loop {
            self.last_id = self.last_id % MAX_SUBSCRIPTION_ID + 1;
            if !self.filters.contains_key(&self.last_id) {
                break;
            }
        }
        self.ids.insert(filter.clone(), self.last_id);
        self.filters.insert(self.last_id, filter.clone());
        self.last_id
    }

    fn forget_id(&mut self, filter: &str) {
        if let Some(id) = self.ids.remove(filter) {
            self.filters.remove(&id);
        }
    }

    /// True if a SUBSCRIBE or UNSUBSCRIBE with this packet id awaits its ack.
    pub(crate) fn in_use(&self, pkid: u16) -> bool {
        self.requests.contains_key(&pkid)
    }

    /// Adds `filter` to the set and sends SUBSCRIBE with `pkid`, or parks the call until the
    /// next session if there is none (`pkid` is None).
    pub(crate) fn subscribe(
        &mut self,
        filter: String,
        qos: QoS,
        waiter: Waiter,
        pkid: Option<u16>,
        out: &mut BytesMut,
    ) {
        let shared =
            self.set.get_key_value(filter.as_str()).map_or_else(|| Arc::from(filter.as_str()), |(k, _)| k.clone());
        if has_wildcards(&shared) {
            self.wildcards.insert(shared.clone());
        }
        let taken = self.set.get(&shared).is_some_and(|e| e.taken);
        self.set.insert(shared.clone(), Entry { qos, taken });
        let id = self.id_of(&shared);
        match pkid {
            Some(pkid) => {
                write(self.wire, out, &subscribe_packet(pkid, &filter, qos, self.identifiers.then_some(id)));
                let waiters = vec![waiter];
                self.requests.insert(pkid, Request::Subscribe { filter, waiters });
            }
            None => self.parked.entry(filter).or_default().push(waiter),
        }
    }

    /// Removes `filter` from the set and sends UNSUBSCRIBE with `pkid`; without a session
    /// there is nothing to undo at the broker, so the call resolves at once.
    pub(crate) fn unsubscribe(&mut self, filter: String, waiter: Waiter, pkid: Option<u16>, out: &mut BytesMut) {
        self.set.remove(filter.as_str());
        self.wildcards.remove(filter.as_str());
        self.refusals.remove(filter.as_str());
        self.forget_id(&filter);
        for w in self.parked.remove(&filter).into_iter().flatten() {
            let _ = w.send(Ok(()));
        }
        match pkid {
            Some(pkid) => {
                let packet = Unsubscribe { pkid, filters: vec![filter], properties: None };
                write(self.wire, out, &Packet::Unsubscribe(packet));
                self.requests.insert(pkid, Request::Unsubscribe { waiter });
            }
            None => {
                let _ = waiter.send(Ok(()));
            }
        }
    }

    /// Starts a session: every filter of the set is to be sent again ([`Self::send_pending`]),
    /// each carrying the calls parked for it.
    pub(crate) fn restore(&mut self) {
        self.pending = self.set.keys().cloned().collect();
        // Calls parked for filters unsubscribed meanwhile have nothing left to wait for.
        let set = &self.set;
        self.parked.retain(|filter, waiters| {
            let keep = set.contains_key(filter.as_str());
            if !keep {
                waiters.drain(..).for_each(|w| drop(w.send(Ok(()))));
            }
            keep
        });
    }

    /// Sends SUBSCRIBEs for pending filters while fewer than [`RESTORE_WINDOW`] requests await
    /// their ack and `alloc` finds a packet id.
    pub(crate) fn send_pending(&mut self, out: &mut BytesMut, mut alloc: impl FnMut(&Self) -> Option<u16>) {
        while self.requests.len() < RESTORE_WINDOW {
            let Some(filter) = self.pending.front().cloned() else { break };
            let Some(entry) = self.set.get(&filter).copied() else {
                self.pending.pop_front(); // unsubscribed meanwhile
                continue;
            };
            let Some(pkid) = alloc(self) else { break };
            self.pending.pop_front();
            let id = self.ids.get(&filter).copied().filter(|_| self.identifiers);
            write(self.wire, out, &subscribe_packet(pkid, &filter, entry.qos, id));
            let waiters = self.parked.remove(&*filter).unwrap_or_default();
            self.requests.insert(pkid, Request::Subscribe { filter: filter.to_string(), waiters });
        }
    }

    /// When the next refused filter is to be asked for again.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.retries.iter().map(|(due, _)| *due).min()
    }

    /// Makes the retries due at `now` pending.
    pub(crate) fn retry_due(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retries).into_iter().partition(|(at, _)| *at <= now);
        self.retries = later;
        self.pending.extend(due.into_iter().map(|(_, f)| f));
    }

    /// Handles a SUBACK; returns the calls to resolve after a barrier ping, if any.
    pub(crate) fn on_suback(&mut self, ack: SubAck, now: Instant) -> Option<Barrier> {
        let Some(Request::Subscribe { filter, waiters }) = self.requests.remove(&ack.pkid) else {
            warn!(pkid = ack.pkid, "Ignored a SUBACK for an unknown packet id.");
            return None;
        };
        let code = ack.return_codes.first();
        if let Some(SubscribeReasonCode::Success(_)) = code {
            if let Some(entry) = self.set.get_mut(filter.as_str()) {
                entry.taken = true;
            }
            self.refusals.remove(filter.as_str());
            return (!waiters.is_empty()).then_some(Barrier { ping: 0, filter, waiters });
        }
        let reason = match ack.properties.and_then(|p| p.reason_string) {
            Some(text) => format!("{code:?}: {text}"),
            None => format!("{code:?}"),
        };
        if let Some((shared, entry)) = self.set.get_key_value(filter.as_str())
            && entry.taken
        {
            let shared = shared.clone();
            let refused = self.refusals.entry(shared.clone()).or_insert(0);
            *refused += 1;
            let delay = RETRY_MAX.min(Duration::from_secs(1 << (*refused - 1).min(5)));
            warn!(%filter, %reason, retry_in = ?delay, "The broker refused a subscription it had taken before; asking again.");
            self.retries.push((now + delay, shared));
            if !waiters.is_empty() {
                self.parked.entry(filter).or_default().extend(waiters);
            }
            return None;
        }
        warn!(%filter, %reason, "Broker rejected a subscription.");
        self.set.remove(filter.as_str());
        self.wildcards.remove(filter.as_str());
        self.forget_id(&filter);
        for w in waiters {
            let _ = w.send(Err(SubscribeError::Rejected(reason.clone())));
        }
        None
    }

    /// Resolves `barrier` once ping number `ping` is answered.
    pub(crate) fn await_ping(&mut self, mut barrier: Barrier, ping: u64) {
        barrier.ping = ping;
        self.barriers.push_back(barrier);
    }

    /// Ping number `answered` got its PINGRESP.
    pub(crate) fn on_pingresp(&mut self, answered: u64) {
        while self.barriers.front().is_some_and(|b| b.ping <= answered) {
            for w in self.barriers.pop_front().into_iter().flat_map(|b| b.waiters) {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Handles an UNSUBACK.
    pub(crate) fn on_unsuback(&mut self, ack: UnsubAck) {
        let Some(Request::Unsubscribe { waiter }) = self.requests.remove(&ack.pkid) else {
            warn!(pkid = ack.pkid, "Ignored an UNSUBACK for an unknown packet id.");
            return;
        };
        let result = match ack.reasons.first() {
            None | Some(UnsubAckReason::Success | UnsubAckReason::NoSubscriptionExisted) => Ok(()),
            Some(code) => Err(SubscribeError::Rejected(format!("{code:?}"))),
        };
        let _ = waiter.send(result);
    }

    /// Ends a session: pending subscribe calls wait for the next one.
    pub(crate) fn on_disconnect(&mut self) {
        // The next session restores the whole set anyway.
        self.pending.clear();
        self.retries.clear();
        self.refusals.clear();
        let barriers = self.barriers.drain(..).map(|b| (b.filter, b.waiters));
        let requests: Vec<Request> = self.requests.drain().map(|(_, r)| r).collect();
        let mut waiting: Vec<(String, Vec<Waiter>)> = barriers.collect();
        for request in requests {
            match request {
                Request::Subscribe { filter, waiters } => waiting.push((filter, waiters)),
                Request::Unsubscribe { waiter } => {
                    let _ = waiter.send(Ok(())); // clean start: nothing left to undo
                }
            }
        }
        for (filter, waiters) in waiting {
            if self.set.contains_key(filter.as_str()) {
                self.parked.entry(filter).or_default().extend(waiters);
            } else {
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
        }
    }

    /// Resolves every pending call with `Closed`.
    pub(crate) fn close(&mut self) {
        let closed = || Err(SubscribeError::Closed);
        for request in self.requests.drain().map(|(_, r)| r) {
            match request {
                Request::Subscribe { waiters, .. } => {
                    waiters.into_iter().for_each(|w| drop(w.send(closed())));
                }
                Request::Unsubscribe { waiter } => drop(waiter.send(closed())),
            }
        }
        for w in self.barriers.drain(..).flat_map(|b| b.waiters) {
            let _ = w.send(closed());
        }
        for w in self.parked.drain().flat_map(|(_, w)| w) {
            let _ = w.send(closed());
        }
        self.pending.clear();
        self.retries.clear();
    }
}

fn subscribe_packet(pkid: u16, filter: &str, qos: QoS, id: Option<usize>) -> Packet {
    let filter = Filter {
        path: filter.to_owned(),
        qos,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    };
    let properties = id.map(|id| SubscribeProperties { id: Some(id), user_properties: Vec::new() });
    Packet::Subscribe(Subscribe { pkid, filters: vec![filter], properties })
}
