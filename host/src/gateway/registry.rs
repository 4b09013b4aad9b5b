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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_sdk::Principal;
use sluice_sdk::topic;

use crate::coap::ObserverId;
use crate::mqtt::Incoming;

/// Messages buffered for one pending registration, at most.
const PENDING_BUFFER: usize = 100;

/// An established Observe relation.
#[derive(Debug, Clone)]
pub struct Observer {
    /// The MQTT filter it follows.
    pub filter: String,
    /// Who the device is (for downlink rules).
    pub principal: Arc<Principal>,
    /// Whether the Observe request was Confirmable (for `notify_type: same`).
    pub confirmable: bool,
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

/// Observers by filter, and subscription reference counts.
#[derive(Default)]
pub struct Registry {
    observers: HashMap<ObserverId, Observer>,
    exact: HashMap<String, Vec<ObserverId>>,
    wildcard: HashMap<String, Vec<ObserverId>>,
    pending: HashMap<PendingId, Pending>,
    next_pending: u64,
    subs: HashMap<String, SubRef>,
}

impl Registry {
    /// Takes a reference on `filter`'s MQTT subscription.
    pub fn acquire(&mut self, filter: &str) {
        let sub = self.subs.entry(filter.to_string()).or_default();
        sub.count += 1;
        sub.idle_since = None;
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

    /// Removes and returns the filters idle for at least `after` (to unsubscribe).
    pub fn take_idle(&mut self, now: Instant, after: Duration) -> Vec<String> {
        let idle: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.count == 0 && s.idle_since.is_some_and(|t| now.duration_since(t) >= after))
            .map(|(f, _)| f.clone())
            .collect();
        let mut subscribed = Vec::with_capacity(idle.len());
        for filter in idle {
            if let Some(sub) = self.subs.remove(&filter)
                && sub.subscribed_qos.is_some()
            {
                subscribed.push(filter);
            }
        }
        subscribed
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
    pub fn establish(&mut self, pending: PendingId, observer: Option<(ObserverId, Observer)>) -> Vec<Incoming> {
        let buffered = self.pending.remove(&pending).map(|p| p.buffer).unwrap_or_default();
        if let Some((id, observer)) = observer {
            let index = if is_wildcard(&observer.filter) { &mut self.wildcard } else { &mut self.exact };
            index.entry(observer.filter.clone()).or_default().push(id);
            self.observers.insert(id, observer);
        }
        buffered
    }

    /// Removes a relation; returns it so that its filter can be released.
    pub fn remove(&mut self, id: ObserverId) -> Option<Observer> {
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

    /// The observers a message goes to; buffers it for matching pending registrations.
    /// Retained messages (sent because a subscription was made) go to pending ones only,
    /// unless `changed`: they change a cached value (see `Values::changes`).
    ///
    /// When the broker names the subscriptions a copy was sent for (`msg.subscriptions`), the
    /// copy goes to the observers of those filters only: with overlapping filters (`#` and
    /// `a/+`) the broker sends one copy per filter, and each observer must get one.
    pub fn deliver(&mut self, msg: &Incoming, changed: bool) -> Vec<(ObserverId, Observer)> {
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
        let ids: Vec<ObserverId> = if named {
            let (exact, wildcard) = (&self.exact, &self.wildcard);
            msg.subscriptions
                .iter()
                .filter_map(|f| exact.get(f).or_else(|| wildcard.get(f)))
                .flatten()
                .copied()
                .collect()
        } else {
            let exact = self.exact.get(&msg.topic).into_iter().flatten();
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
        Observer { filter: filter.into(), principal: Arc::new(Principal::new("d")), confirmable: false }
    }

    #[test]
    fn live_messages_reach_exact_and_wildcard_observers() {
        let mut r = Registry::default();
        let p1 = r.begin("a/b");
        r.establish(p1, Some((ObserverId(1), observer("a/b"))));
        let p2 = r.begin("a/#");
        r.establish(p2, Some((ObserverId(2), observer("a/#"))));
        let mut ids: Vec<_> = r.deliver(&msg("a/b", false), false).into_iter().map(|(id, _)| id).collect();
        ids.sort();
        assert_eq!(ids, vec![ObserverId(1), ObserverId(2)]);
        assert!(r.deliver(&msg("c", false), false).is_empty());
    }

    #[test]
    fn retained_messages_go_only_to_pending_registrations() {
        let mut r = Registry::default();
        let p1 = r.begin("a/b");
        r.establish(p1, Some((ObserverId(1), observer("a/b"))));
        let p2 = r.begin("a/b");
        assert!(r.deliver(&msg("a/b", true), false).is_empty());
        let buffered = r.establish(p2, Some((ObserverId(2), observer("a/b"))));
        assert_eq!(buffered.len(), 1);
        assert!(buffered[0].retain);
    }

    #[test]
    fn removed_observers_receive_nothing() {
        let mut r = Registry::default();
        let p = r.begin("a/+");
        r.establish(p, Some((ObserverId(7), observer("a/+"))));
        assert_eq!(r.remove(ObserverId(7)).unwrap().filter, "a/+");
        assert!(r.deliver(&msg("a/b", false), false).is_empty());
        assert!(r.remove(ObserverId(7)).is_none());
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
        assert!(r.take_idle(t0 + Duration::from_secs(1), Duration::from_secs(10)).is_empty());
        r.acquire("a");
        r.release("a", t0 + Duration::from_secs(5));
        assert_eq!(r.take_idle(t0 + Duration::from_secs(20), Duration::from_secs(10)), vec!["a".to_string()]);
        assert_eq!(r.subscription_count(), 0);
    }
}
