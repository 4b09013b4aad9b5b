//! PubSub topic values.
//!
//! A topic's value lives in the broker as a retained MQTT v5 message whose Message Expiry
//! Interval is the value's Max-Age, so that gateways sharing a broker agree and a gateway
//! restart loses nothing. To answer reads without a broker round trip, the gateway keeps the
//! topics it has been asked about subscribed and caches their values: a topic is *loaded* by
//! subscribing to it (the broker then sends the retained value), and every later message on it
//! updates the cache, as in EMQX 4.x. An empty payload clears the value. The cache holds at
//! most `values.max_topics` topics; the least recently used is dropped (and its subscription
//! released) first.
//!
//! Brokers that send retained messages together with the SUBACK (mosquitto, EMQX, HiveMQ)
//! answer a first read exactly. The embedded rumqttd schedules retained messages
//! asynchronously, so with it a value retained by another client may become visible a moment
//! after the first read of that topic. rumqttd also shortens a retained value's remaining expiry
//! each time it is read (it subtracts the total age on every read), so with the embedded
//! broker a value read often expires early; mosquitto and EMQX count correctly.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::mqtt::Incoming;

/// A topic's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The message payload.
    pub payload: Bytes,
    /// The MQTT v5 content type.
    pub content_type: Option<String>,
    /// When it expires (its Message Expiry Interval from when the gateway received it).
    pub expires_at: Option<Instant>,
}

impl Value {
    /// A value received at `now` with an expiry interval.
    pub fn new(payload: Bytes, content_type: Option<String>, expiry: Option<u32>, now: Instant) -> Value {
        Value { payload, content_type, expires_at: expiry.map(|s| now + Duration::from_secs(u64::from(s))) }
    }

    /// Seconds left, rounded up; `None` if it never expires.
    pub fn remaining(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

struct Entry {
    value: Option<Value>,
    loaded: bool,
    waiters: Vec<oneshot::Sender<()>>,
    last_used: Instant,
    /// The MQTT session (reconnect count) it was loaded in.
    session: u64,
    /// While reloaded after a reconnect: the payload it had before (empty: none), against
    /// which the retained message of the new subscription is compared.
    before_reload: Option<Bytes>,
}

/// What a lookup found.
pub enum Lookup {
    /// The topic is loaded: its live value, if any.
    Ready(Option<Value>),
    /// Another request is loading it: wait, then look again.
    Wait(oneshot::Receiver<()>),
    /// The caller must load it: subscribe, then call [`Values::loaded`] (or [`Values::failed`]).
    Load,
    /// Loaded in an earlier MQTT session: a value deleted while the gateway was disconnected
    /// would never be reported, so the caller loads it again (subscribe with the subscription
    /// it already holds, then [`Values::loaded`] or [`Values::failed`]).
    Reload,
}

/// The cache.
pub struct Values {
    entries: HashMap<String, Entry>,
    max: usize,
}

impl Values {
    /// An empty cache of at most `max` topics.
    pub fn new(max: usize) -> Values {
        Values { entries: HashMap::new(), max }
    }

    /// Looks `topic` up; `session` is the MQTT client's reconnect count.
    pub fn lookup(&mut self, topic: &str, now: Instant, session: u64) -> Lookup {
        match self.entries.get_mut(topic) {
            Some(e) if e.loaded && e.session != session => {
                e.loaded = false;
                e.session = session;
                // The retained message that comes with the new SUBACK sets it again.
                let before = e.value.take().filter(|v| v.live(now)).map(|v| v.payload);
                e.before_reload = Some(before.unwrap_or_default());
                e.last_used = now;
                Lookup::Reload
            }
            Some(e) if e.loaded => {
                e.last_used = now;
                Lookup::Ready(e.value.clone().filter(|v| v.live(now)))
            }
            Some(e) => {
                let (tx, rx) = oneshot::channel();
                e.waiters.push(tx);
                Lookup::Wait(rx)
            }
            None => {
                let entry = Entry {
                    value: None,
                    loaded: false,
                    waiters: Vec::new(),
                    last_used: now,
                    session,
                    before_reload: None,
                };
                self.entries.insert(topic.to_string(), entry);
                Lookup::Load
            }
        }
    }

    /// The subscription of `topic` is in place: it is loaded. Returns the topics evicted to
    /// stay within the bound (their subscriptions are to be released).
    pub fn loaded(&mut self, topic: &str) -> Vec<String> {
        if let Some(e) = self.entries.get_mut(topic) {
            e.loaded = true;
            e.before_reload = None;
            for w in e.waiters.drain(..) {
                let _ = w.send(());
            }
        }
        self.evict(topic)
    }

    /// Loading failed: forget the topic (waiters retry).
    pub fn failed(&mut self, topic: &str) {
        self.entries.remove(topic);
    }

    /// True if `msg` carries another value than the one cached for its loaded topic (a retained
    /// message that a restored subscription brought after a reconnect: the value changed
    /// while the gateway was disconnected, and its observers have not heard of it).
    pub fn changes(&self, msg: &Incoming, now: Instant) -> bool {
        let Some(e) = self.entries.get(&msg.topic) else { return false };
        if let Some(before) = &e.before_reload {
            return *before != msg.payload;
        }
        if !e.loaded {
            return false;
        }
        let cached = e.value.as_ref().filter(|v| v.live(now)).map(|v| &v.payload);
        cached != (!msg.payload.is_empty()).then_some(&msg.payload)
    }

    /// A message arrived: it becomes the value of its topic if that topic is cached.
    pub fn update(&mut self, msg: &Incoming, now: Instant) {
        if let Some(e) = self.entries.get_mut(&msg.topic) {
            e.value = (!msg.payload.is_empty())
                .then(|| Value::new(msg.payload.clone(), msg.content_type.clone(), msg.expiry, now));
        }
    }

    /// The gateway itself set (or, with `None`, cleared) a topic's value.
    pub fn set(&mut self, topic: &str, value: Option<Value>) {
        if let Some(e) = self.entries.get_mut(topic) {
            e.value = value;
        }
    }

    fn evict(&mut self, keep: &str) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.entries.len() > self.max {
            let oldest = self
                .entries
                .iter()
                .filter(|(t, e)| e.loaded && t.as_str() != keep)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(t, _)| t.clone());
            let Some(topic) = oldest else { break };
            self.entries.remove(&topic);
            evicted.push(topic);
        }
        evicted
    }

    /// Topics cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8], expiry: Option<u32>) -> Incoming {
        Incoming {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: 1,
            retain: true,
            expiry,
            content_type: Some("application/json".into()),
            user_properties: Vec::new(),
            subscriptions: Vec::new(),
        }
    }

    #[test]
    fn a_topic_is_loaded_once_and_then_read_from_the_cache() {
        let mut v = Values::new(10);
        let now = Instant::now();
        assert!(matches!(v.lookup("t", now, 0), Lookup::Load));
        assert!(matches!(v.lookup("t", now, 0), Lookup::Wait(_)));
        v.update(&msg("t", b"21", Some(60)), now);
        assert!(v.loaded("t").is_empty());
        let Lookup::Ready(Some(value)) = v.lookup("t", now, 0) else { panic!("expected a value") };
        assert_eq!(&value.payload[..], b"21");
        assert_eq!(value.remaining(now + Duration::from_millis(500)), Some(60));
    }

    #[test]
    fn expired_and_cleared_values_read_as_none() {
        let mut v = Values::new(10);
        let now = Instant::now();
        let _ = v.lookup("t", now, 0);
        v.update(&msg("t", b"x", Some(1)), now);
        v.loaded("t");
        assert!(matches!(v.lookup("t", now + Duration::from_secs(2), 0), Lookup::Ready(None)));
        v.update(&msg("t", b"y", None), now);
        assert!(matches!(v.lookup("t", now, 0), Lookup::Ready(Some(_))));
        v.update(&msg("t", b"", None), now);
        assert!(matches!(v.lookup("t", now, 0), Lookup::Ready(None)));
    }

    #[test]
    fn the_least_recently_used_topic_is_evicted() {
        let mut v = Values::new(2);
        let t0 = Instant::now();
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            let _ = v.lookup(t, now, 0);
            let evicted = v.loaded(t);
            if *t == "c" {
                assert_eq!(evicted, vec!["a".to_string()]);
            }
        }
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn messages_on_uncached_topics_are_ignored() {
        let mut v = Values::new(2);
        v.update(&msg("t", b"x", None), Instant::now());
        assert!(v.is_empty());
    }

    #[test]
    fn a_value_loaded_before_a_reconnect_is_loaded_again() {
        let mut v = Values::new(10);
        let now = Instant::now();
        assert!(matches!(v.lookup("t", now, 0), Lookup::Load));
        v.update(&msg("t", b"old", None), now);
        v.loaded("t");
        assert!(matches!(v.lookup("t", now, 0), Lookup::Ready(Some(_))));
        assert!(matches!(v.lookup("t", now, 1), Lookup::Reload));
        v.loaded("t"); // no retained message came with the new SUBACK: deleted meanwhile
        assert!(matches!(v.lookup("t", now, 1), Lookup::Ready(None)));
    }
}
