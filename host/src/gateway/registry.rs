//! Who receives what: the gateway's Observe relations by MQTT filter, and the reference counts
//! of the gateway's own MQTT subscriptions.
//!
//! The gateway holds one MQTT connection for all devices. Each filter is subscribed once, however
//! many devices observe it (and however many PubSub values are cached under it); the last
//! release marks it idle, and the janitor unsubscribes idle filters a little later, so that a
//! device that re-registers at once does not cost two round trips to the broker.
//!
//! A registration in progress is a *pending* observer: it collects the messages that arrive
//! while the gateway subscribes (including the retained ones the broker sends because of that
//! subscription) and hands them over when the device's relation exists. Established observers
//! receive only live messages; retained messages are sent to a connection only when one of its
//! subscriptions is (re)made, so they belong to whoever is pending.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_sdk::Principal;
use sluice_sdk::topic;

use crate::coap::ObserverId;
use crate::mqtt::Incoming;
use crate::transport::{Link, LinkId};

/// Seconds since the gateway's first call of this: the clock of [`Observer::since`].
pub fn uptime() -> u32 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u32::try_from(START.get_or_init(Instant::now).elapsed().as_secs()).unwrap_or(u32::MAX)
}

/// Messages buffered for one pending registration, at most.
const PENDING_BUFFER: usize = 100;

/// Names an Observe relation: observer ids are per transport driver, so with its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Relation {
    /// The driver the device observes through.
    pub link: LinkId,
    /// The relation in that driver's endpoint.
    pub id: ObserverId,
}

/// An established Observe relation.
#[derive(Debug, Clone)]
pub struct Observer {
    /// The MQTT filter it follows (shared with the registry's indexes: one copy per filter).
    pub filter: Arc<str>,
    /// Who the device is (for downlink rules).
    pub principal: Arc<Principal>,
    /// Whether the Observe request was Confirmable (for `notify_type: same`).
    pub confirmable: bool,
    /// The way to the device's transport, for notifications.
    pub link: Link,
    /// When the relation was established (seconds on [`uptime`]'s clock: 4 bytes, not 16).
    pub since: u32,
}

/// A registration waiting for its MQTT subscription and its CoAP relation.
struct Pending {
    filter: String,
    buffer: Vec<Incoming>,
}

/// A key for a pending registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingId(u64);

#[derive(Debug, Default)]
struct SubRef {
    count: usize,
    subscribed_qos: Option<u8>,
    idle_since: Option<Instant>,
}

impl SubRef {
    fn is_idle(&self, now: Instant, after: Duration) -> bool {
        self.count == 0 && self.idle_since.is_some_and(|t| now.duration_since(t) >= after)
    }
}

/// Observers by filter, and subscription reference counts.
///
/// A filter's text is kept once, as an `Arc<str>` shared by its subscription entry, its index
/// entry and its observers: with a million devices each on its own topic, copies add up.
#[derive(Default)]
pub struct Registry {
    observers: HashMap<Relation, Observer>,
    exact: HashMap<Arc<str>, Vec<Relation>>,
    wildcard: HashMap<Arc<str>, Vec<Relation>>,
    pending: HashMap<PendingId, Pending>,
    next_pending: u64,
    subs: HashMap<Arc<str>, SubRef>,
    /// Relations the CoAP layer ended before their registration was established here (see
    /// [`Registry::gone`]), oldest first in `gone_order`.
    gone_early: HashSet<Relation>,
    gone_order: VecDeque<Relation>,
}

/// Relations remembered as ended early, at most: ends that race a registration are a
/// handful at a time; beyond, the oldest is forgotten.
const MAX_GONE_EARLY: usize = 4096;

impl Registry {
    /// Takes a reference on `filter`'s MQTT subscription; returns the filter's shared text
    /// (for its [`Observer`]).
    pub fn acquire(&mut self, filter: &str) -> Arc<str> {
        let key = self.subs.get_key_value(filter).map_or_else(|| Arc::from(filter), |(k, _)| k.clone());
        let sub = self.subs.entry(key.clone()).or_default();
        sub.count += 1;
        sub.idle_since = None;
        key
    }

    /// Drops a reference; the filter goes idle at zero.
    pub fn release(&mut self, filter: &str, now: Instant) {
        if let Some(sub) = self.subs.get_mut(filter) {
            sub.count = sub.count.saturating_sub(1);
            if sub.count == 0 {
                sub.idle_since = Some(now);
            }
        }
    }

    /// True when `filter` must be subscribed (again) at `qos`.
    pub fn needs_subscribe(&self, filter: &str, qos: u8) -> bool {
        self.subs.get(filter).and_then(|s| s.subscribed_qos).is_none_or(|q| q < qos)
    }

    /// Records that the broker acknowledged the subscription.
    pub fn mark_subscribed(&mut self, filter: &str, qos: u8) {
        if let Some(sub) = self.subs.get_mut(filter) {
            sub.subscribed_qos = Some(sub.subscribed_qos.map_or(qos, |q| q.max(qos)));
        }
    }

    /// The filters idle for at least `after` (to unsubscribe, each by [`Self::take_if_idle`]).
    pub fn idle(&self, now: Instant, after: Duration) -> Vec<String> {
        self.subs.iter().filter(|(_, s)| s.is_idle(now, after)).map(|(f, _)| f.to_string()).collect()
    }

    /// Forgets `filter` if it is still idle for at least `after`; `true` when it was
    /// subscribed (so it must be unsubscribed now).
    pub fn take_if_idle(&mut self, filter: &str, now: Instant, after: Duration) -> bool {
        if !self.subs.get(filter).is_some_and(|s| s.is_idle(now, after)) {
            return false;
        }
        self.subs.remove(filter).is_some_and(|s| s.subscribed_qos.is_some())
    }

    /// Starts a registration for `filter`: it buffers matching messages until [`Self::establish`].
    pub fn begin(&mut self, filter: &str) -> PendingId {
        self.next_pending += 1;
        let id = PendingId(self.next_pending);
        self.pending.insert(id, Pending { filter: filter.to_string(), buffer: Vec::new() });
        id
    }

    /// Ends a registration: with `Some(observer)` the relation is established; either way the
    /// messages buffered meanwhile are returned (to be sent to the new observer, in order).
    ///
    /// A relation the CoAP layer ended already (its end overtook the registration's answer,
    /// see [`Registry::gone`]) is not established: the caller sees `false`.
    pub fn establish(&mut self, pending: PendingId, observer: Option<(Relation, Observer)>) -> (Vec<Incoming>, bool) {
        let buffered = self.pending.remove(&pending).map(|p| p.buffer).unwrap_or_default();
        let observer = observer.filter(|(id, _)| !self.gone_early.remove(id));
        let established = observer.is_some();
        if let Some((id, observer)) = observer {
            let index = if is_wildcard(&observer.filter) { &mut self.wildcard } else { &mut self.exact };
            index.entry(observer.filter.clone()).or_default().push(id);
            self.observers.insert(id, observer);
        }
        (buffered, established)
    }

    /// The CoAP layer ended `id` (RST, timeout, replacement); returns it when it was
    /// established. One not established yet is remembered, so that its registration, still
    /// on its way back from the CoAP driver, is not established after its end (a relation
    /// nobody would ever remove): a registration answered CON to an unverified address can
    /// end, or be replaced by the device's next registration, that quickly.
    pub fn gone(&mut self, id: Relation) -> Option<Observer> {
        let removed = self.remove(id);
        if removed.is_none() && self.gone_early.insert(id) {
            self.gone_order.push_back(id);
            while self.gone_order.len() > MAX_GONE_EARLY {
                if let Some(old) = self.gone_order.pop_front() {
                    self.gone_early.remove(&old);
                }
            }
        }
        removed
    }

    /// Removes a relation; returns it so that its filter can be released.
    pub fn remove(&mut self, id: Relation) -> Option<Observer> {
        let observer = self.observers.remove(&id)?;
        let index = if is_wildcard(&observer.filter) { &mut self.wildcard } else { &mut self.exact };
        if let Some(ids) = index.get_mut(&observer.filter) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                index.remove(&observer.filter);
            }
        }
        Some(observer)
    }

    /// The relations of client `client_id`: a walk over every relation (the client table
    /// counts them per client; an index here would cost every observer memory for what only
    /// an operator's look at one client needs).
    pub fn of_client(&self, client_id: &str) -> Vec<(Relation, &Observer)> {
        self.observers.iter().filter(|(_, o)| o.principal.client_id == client_id).map(|(id, o)| (*id, o)).collect()
    }

    /// The observers a message goes to; buffers it for matching pending registrations.
    /// Retained messages (sent because a subscription was made) go to pending ones only,
    /// unless `changed`: they change a cached value (see `Values::changes`).
    ///
    /// When the broker names the subscriptions a copy was sent for (`msg.subscriptions`), the
    /// copy goes to the observers of those filters only: with overlapping filters (`#` and
    /// `a/+`) the broker sends one copy per filter, and each observer must get one.
    pub fn deliver(&mut self, msg: &Incoming, changed: bool) -> Vec<(Relation, Observer)> {
        let named = !msg.subscriptions.is_empty();
        let meant_for = |filter: &str| {
            if named { msg.subscriptions.iter().any(|f| f == filter) } else { topic::matches(filter, &msg.topic) }
        };
        for pending in self.pending.values_mut() {
            if meant_for(&pending.filter) && pending.buffer.len() < PENDING_BUFFER {
                pending.buffer.push(msg.clone());
            }
        }
        if msg.retain && !changed {
            return Vec::new();
        }
        let mut out = Vec::new();
        let ids: Vec<Relation> = if named {
            let (exact, wildcard) = (&self.exact, &self.wildcard);
            msg.subscriptions
                .iter()
                .filter_map(|f| exact.get(f.as_str()).or_else(|| wildcard.get(f.as_str())))
                .flatten()
                .copied()
                .collect()
        } else {
            let exact = self.exact.get(msg.topic.as_str()).into_iter().flatten();
            let wild = self.wildcard.iter().filter(|(f, _)| topic::matches(f, &msg.topic)).flat_map(|(_, ids)| ids);
            exact.chain(wild).copied().collect()
        };
        for id in ids {
            if let Some(o) = self.observers.get(&id) {
                out.push((id, o.clone()));
            }
        }
        out
    }

    /// Established observers.
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    /// MQTT filters the gateway holds a reference on or is subscribed to.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }
}

fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, retain: bool) -> Incoming {
        Incoming {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 0,
            retain,
            expiry: None,
            content_type: None,
            user_properties: Vec::new(),
            subscriptions: Vec::new(),
        }
    }

    fn observer(filter: &str) -> Observer {
        let (link, _) = Link::channel(crate::telemetry::Transport::Udp);
        Observer {
            filter: filter.into(),
            principal: Arc::new(Principal::new("d")),
            confirmable: false,
            link,
            since: uptime(),
        }
    }

    /// Relation `n` of one driver.
    fn rel(n: u64) -> Relation {
        thread_local!(static LINK: LinkId = Link::channel(crate::telemetry::Transport::Udp).0.id());
        Relation { link: LINK.with(|l| *l), id: ObserverId(n) }
    }

    #[test]
    fn live_messages_reach_exact_and_wildcard_observers() {
        let mut r = Registry::default();
        let p1 = r.begin("a/b");
        r.establish(p1, Some((rel(1), observer("a/b"))));
        let p2 = r.begin("a/#");
        r.establish(p2, Some((rel(2), observer("a/#"))));
        let mut ids: Vec<_> = r.deliver(&msg("a/b", false), false).into_iter().map(|(id, _)| id).collect();
        ids.sort();
        assert_eq!(ids, vec![rel(1), rel(2)]);
        assert!(r.deliver(&msg("c", false), false).is_empty());
    }

    #[test]
    fn retained_messages_go_only_to_pending_registrations() {
        let mut r = Registry::default();
        let p1 = r.begin("a/b");
        r.establish(p1, Some((rel(1), observer("a/b"))));
        let p2 = r.begin("a/b");
        assert!(r.deliver(&msg("a/b", true), false).is_empty());
        let (buffered, _) = r.establish(p2, Some((rel(2), observer("a/b"))));
        assert_eq!(buffered.len(), 1);
        assert!(buffered[0].retain);
    }

    #[test]
    fn removed_observers_receive_nothing() {
        let mut r = Registry::default();
        let p = r.begin("a/+");
        r.establish(p, Some((rel(7), observer("a/+"))));
        assert_eq!(r.remove(rel(7)).map(|o| o.filter), Some("a/+".into()));
        assert!(r.deliver(&msg("a/b", false), false).is_empty());
        assert!(r.remove(rel(7)).is_none());
    }

    #[test]
    fn a_relation_that_ended_before_it_was_established_is_not_established() {
        let mut r = Registry::default();
        let p = r.begin("a/b");
        assert!(r.gone(rel(9)).is_none(), "the CoAP layer ended it first");
        let (_, established) = r.establish(p, Some((rel(9), observer("a/b"))));
        assert!(!established);
        assert!(r.deliver(&msg("a/b", false), false).is_empty());
        let p = r.begin("a/b");
        assert!(r.establish(p, Some((rel(10), observer("a/b")))).1, "others are");
        assert!(r.gone(rel(10)).is_some());
        for n in 0..2 * MAX_GONE_EARLY as u64 {
            r.gone(rel(1_000 + n));
        }
        assert_eq!((r.gone_early.len(), r.gone_order.len()), (MAX_GONE_EARLY, MAX_GONE_EARLY));
    }

    #[test]
    fn filters_are_unsubscribed_only_after_they_stay_idle() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        r.acquire("a");
        assert!(r.needs_subscribe("a", 0));
        r.mark_subscribed("a", 1);
        assert!(!r.needs_subscribe("a", 1));
        r.release("a", t0);
        let after = Duration::from_secs(10);
        assert!(r.idle(t0 + Duration::from_secs(1), after).is_empty());
        r.acquire("a");
        r.release("a", t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(20);
        assert_eq!(r.idle(later, after), vec!["a".to_string()]);
        // A registration between the listing and the unsubscribe keeps the filter.
        r.acquire("a");
        assert!(!r.take_if_idle("a", later, after));
        r.release("a", later);
        assert!(r.take_if_idle("a", later + after, after), "subscribed, so it is unsubscribed");
        assert_eq!(r.subscription_count(), 0);
    }
}
