//! Observe: a registration subscribes the gateway to the filter (once per filter, however many
//! devices observe it; see [`super::registry`]), answers 2.05 with the Observe option, and
//! sends what arrived meanwhile; MQTT messages then become notifications
//! ([`Gateway::dispatch`]); filters nobody observes any more are unsubscribed a little later
//! ([`Gateway::unsubscribe_idle`]).
//!
//! # Ordering the broker calls
//!
//! The broker must see each filter's SUBSCRIBE and UNSUBSCRIBE in the order the gateway
//! decided them, or an idle filter's late UNSUBSCRIBE could undo a new observer's SUBSCRIBE.
//! That ordering is per filter ([`FilterOps`]): registrations of different filters go to the
//! broker at once, so a thousand devices registering together wait one round trip each, not
//! a thousand in a row (a single lock for all filters did that: BENCHMARKS.md, "Before and
//! after the core redesign", has the figures with the broker 10 ms away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sluice_sdk::{Access, Code, Downlink, Reject, content_format};
use tracing::warn;

use super::pubsub::value_response;
use super::{Call, Failure, Gateway, Observer, Relation, Value, reply};
use crate::coap::{Notification, Response};
use crate::config::NotifyType;
use crate::mqtt::{Incoming, PublishError};
use crate::rules::Chain;
use crate::telemetry::DropReason;

/// A filter whose last observer left is unsubscribed after this long.
const IDLE_UNSUBSCRIBE: Duration = Duration::from_secs(30);

/// One lock per filter with a subscribe or unsubscribe in progress (or recently).
#[derive(Default)]
pub(super) struct FilterOps(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl FilterOps {
    /// The lock that orders `filter`'s broker calls.
    fn lock_for(&self, filter: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lock) = locks.get(filter).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(filter.to_string(), Arc::downgrade(&lock));
        // Forget the locks nobody holds, each time the map doubles: amortised O(1).
        if locks.len() >= 1024 && locks.len().is_power_of_two() {
            locks.retain(|_, lock| lock.strong_count() > 0);
        }
        lock
    }
}

impl Call<'_> {
    /// Registers an observer of `filter`: subscribes, answers 2.05 with Observe (carrying
    /// `value` for PubSub observes), then sends what arrived meanwhile.
    pub(super) async fn observe(
        &self,
        filter: &str,
        qos: Option<u8>,
        value: Option<Option<Value>>,
    ) -> Result<(), Failure> {
        if self.req.observe != Some(0) {
            return Err(Failure::Rejected(Reject::new(Code::BAD_REQUEST, "Observe=0 is required to subscribe")));
        }
        self.check_topic(Access::Subscribe, filter)?;
        let gateway = self.gateway;
        let confirmable = self.confirmable();
        let qos = qos.unwrap_or_else(|| gateway.settings.subscribe_qos.for_request(confirmable));
        let (shared, pending) = {
            let mut state = gateway.state();
            (state.registry.acquire(filter), state.registry.begin(filter))
        };
        // A PubSub observe already has the value; a plain one wants the retained messages.
        if let Err(failure) = gateway.subscribe(filter, qos, value.is_none()).await {
            let mut state = gateway.state();
            state.registry.establish(pending, None);
            state.registry.release(filter, Instant::now());
            return Err(failure);
        }
        let now = Instant::now();
        let response = match value.flatten() {
            Some(v) => Response { observe: true, ..value_response(&v, now) },
            None => Response { observe: true, ..reply(Code::CONTENT) },
        };
        let relation =
            self.link.respond_observe(self.id, response).await.map(|id| Relation { link: self.link.id(), id });
        let principal = Arc::new(self.who.clone());
        let observer = Observer {
            filter: shared,
            principal,
            confirmable,
            link: self.link.clone(),
            since: super::registry::uptime(),
        };
        let (buffered, relation) = {
            let mut state = gateway.state();
            let (buffered, established) = state.registry.establish(pending, relation.map(|r| (r, observer.clone())));
            let relation = relation.filter(|_| established);
            if relation.is_none() {
                state.registry.release(filter, now);
            } else {
                state.clients.observer_added(&self.who.client_id);
            }
            (buffered, relation)
        };
        if let Some(relation) = relation {
            for msg in buffered {
                gateway.notify(self.chain, relation, &observer, &msg);
            }
        }
        Ok(())
    }
}

impl Gateway {
    /// Makes sure the broker has our subscription to `filter` (again, when `always`: that
    /// makes it send the retained messages).
    pub(super) async fn subscribe(&self, filter: &str, qos: u8, always: bool) -> Result<(), Failure> {
        let lock = self.filter_ops.lock_for(filter);
        let _ordered = lock.lock().await;
        if !always && !self.state().registry.needs_subscribe(filter, qos) {
            return Ok(());
        }
        match tokio::time::timeout(self.settings.publish_timeout, self.mqtt.subscribe(filter, qos)).await {
            Ok(Ok(())) => {
                self.state().registry.mark_subscribed(filter, qos);
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::Subscribe(e)),
            Err(_) => Err(self.broker_failure(PublishError::TimedOut)),
        }
    }

    /// Unsubscribes the filters idle for long enough, each under its own lock (a registration
    /// that came meanwhile keeps its filter).
    pub(super) async fn unsubscribe_idle(&self) {
        let idle = self.state().registry.idle(Instant::now(), IDLE_UNSUBSCRIBE);
        for filter in idle {
            let lock = self.filter_ops.lock_for(&filter);
            let _ordered = lock.lock().await;
            if !self.state().registry.take_if_idle(&filter, Instant::now(), IDLE_UNSUBSCRIBE) {
                continue;
            }
            if let Err(e) = self.mqtt.unsubscribe(&filter).await {
                warn!(%filter, error = ?e, "Could not unsubscribe an idle filter.");
            }
        }
    }

    /// An MQTT message arrived: update values and notify observers.
    pub fn dispatch(&self, msg: Incoming) {
        if self.is_session_topic(&msg.topic) {
            return self.revocation_arrived(&msg);
        }
        let targets = {
            let mut state = self.state();
            let now = Instant::now();
            let changed = msg.retain && state.values.changes(&msg, now);
            state.values.update(&msg, now);
            state.registry.deliver(&msg, changed)
        };
        if targets.is_empty() {
            return;
        }
        let chain = self.chain.load_full();
        for (relation, observer) in targets {
            self.notify(&chain, relation, &observer, &msg);
        }
    }

    /// Sends `msg` (through the downlink rules) to one observer.
    fn notify(&self, chain: &Chain, relation: Relation, observer: &Observer, msg: &Incoming) {
        let down = Downlink {
            topic: msg.topic.clone(),
            payload: msg.payload.to_vec(),
            content_type: msg.content_type.clone(),
            user_properties: msg.user_properties.clone(),
        };
        let Some((down, format)) = chain.downlink(down, &observer.principal) else {
            self.metrics.dropped(DropReason::DownlinkRule);
            return;
        };
        let confirmable = match self.settings.notify_type {
            NotifyType::Same => observer.confirmable,
            NotifyType::Con => true,
            NotifyType::Non => false,
            NotifyType::Qos => msg.qos >= 1,
        };
        let content_format = format.or_else(|| down.content_type.as_deref().and_then(content_format::from_mime));
        let notification = Notification { content_format, max_age: msg.expiry, payload: down.payload, confirmable };
        self.metrics.notification(confirmable);
        observer.link.notify(relation.id, notification);
    }
}
