//! The PubSub values (EMQX's `/ps`): `SetValue` publishes a retained message and caches it,
//! `Read` answers the cached value (subscribing first when it is not cached), `Delete` clears
//! the retained message. The cache itself is [`super::values`].

use std::time::{Duration, Instant};

use sluice_sdk::{Access, Code, Publish, content_format};
use tracing::warn;

use super::values::Lookup;
use super::{Answer, Call, Failure, Gateway, Value, reply};
use crate::coap::Response;
use crate::mqtt::{Message, PublishError};

/// At most this many values are expired by the gateway itself; beyond it a value's retained
/// message outlives its Max-Age in the embedded broker (reads through the gateway's cache still
/// honour it).
const MAX_EXPIRIES: usize = 100_000;

impl Call<'_> {
    /// Sets a value: 2.01 (with Location-Path) when the topic had none, else 2.04.
    pub(super) async fn set_value(&self, p: Publish) -> Answer {
        self.check_topic(Access::Publish, &p.topic)?;
        let gateway = self.gateway;
        let topic = p.topic.clone();
        let existed = gateway.load_value(&topic).await?.is_some();
        let Some(msg) = self.publish(p, true).await? else {
            return Ok(reply(Code::CHANGED));
        };
        gateway.store_value(&topic, msg);
        if existed {
            Ok(reply(Code::CHANGED))
        } else {
            Ok(Response { code: Code::CREATED.0, location_path: self.req.path.clone(), ..Response::default() })
        }
    }

    /// Reads a value: 2.05 with its remaining Max-Age, or 4.04.
    pub(super) async fn read(&self, name: &str) -> Answer {
        self.check_topic(Access::Subscribe, name)?;
        match self.gateway.load_value(name).await? {
            Some(value) => Ok(value_response(&value, Instant::now())),
            None => Err(Failure::NoValue(name.to_string())),
        }
    }

    /// Deletes a value (clears its retained message): 2.02, or 4.04 when there was none.
    pub(super) async fn delete(&self, name: &str) -> Answer {
        self.check_topic(Access::Publish, name)?;
        let gateway = self.gateway;
        if gateway.load_value(name).await?.is_none() {
            return Err(Failure::NoValue(name.to_string()));
        }
        let qos = gateway.settings.publish_qos.for_request(self.confirmable());
        let clear = Message { topic: name.to_string(), qos, retain: true, ..Message::default() };
        gateway.send(clear).await?;
        let mut state = gateway.state();
        state.values.set(name, None);
        state.expiries.remove(name);
        Ok(reply(Code::DELETED))
    }
}

impl Gateway {
    /// Caches what a `SetValue` published, and when the gateway expires values itself, when.
    fn store_value(&self, topic: &str, msg: Message) {
        let now = Instant::now();
        let expires_at =
            msg.expiry.filter(|_| !msg.payload.is_empty()).map(|s| now + Duration::from_secs(u64::from(s)));
        let value = (!msg.payload.is_empty()).then(|| Value::new(msg.payload, msg.content_type, msg.expiry, now));
        let mut state = self.state();
        state.values.set(topic, value);
        if !self.mqtt.sends_properties() {
            match expires_at {
                Some(at) if state.expiries.len() < MAX_EXPIRIES || state.expiries.contains_key(topic) => {
                    state.expiries.insert(topic.to_string(), at);
                }
                Some(_) => warn!(%topic, "Too many expiring values; this one is not cleared from the broker."),
                None => {
                    state.expiries.remove(topic);
                }
            }
        }
    }

    /// The value of a topic, subscribing to it first if it is not cached.
    pub(super) async fn load_value(&self, name: &str) -> Result<Option<Value>, Failure> {
        let deadline = tokio::time::Instant::now() + self.settings.publish_timeout;
        loop {
            let session = self.mqtt.reconnects();
            let lookup = self.state().values.lookup(name, Instant::now(), session);
            match lookup {
                Lookup::Ready(value) => return Ok(value),
                Lookup::Wait(rx) => {
                    if tokio::time::timeout_at(deadline, rx).await.is_err() {
                        return Err(self.broker_failure(PublishError::TimedOut));
                    }
                }
                load @ (Lookup::Load | Lookup::Reload) => {
                    if matches!(load, Lookup::Load) {
                        self.state().registry.acquire(name); // a reload holds it already
                    }
                    let qos = self.settings.subscribe_qos.for_request(true).max(1);
                    let subscribed = self.subscribe(name, qos, true).await;
                    let mut state = self.state();
                    let now = Instant::now();
                    if let Err(failure) = subscribed {
                        state.values.failed(name);
                        state.registry.release(name, now);
                        return Err(failure);
                    }
                    for evicted in state.values.loaded(name) {
                        state.registry.release(&evicted, now);
                    }
                }
            }
        }
    }

    /// Clears the retained messages of values whose Max-Age has passed (when the broker gets
    /// no Message Expiry: the embedded broker, or any broker on MQTT 3.1.1; see
    /// [`crate::mqtt::Handle::sends_properties`]).
    pub(super) async fn expire_values(&self) {
        let due: Vec<String> = {
            let mut state = self.state();
            let now = Instant::now();
            let due: Vec<String> =
                state.expiries.iter().filter(|(_, at)| **at <= now).map(|(t, _)| t.clone()).collect();
            for topic in &due {
                state.expiries.remove(topic);
                state.values.set(topic, None);
            }
            due
        };
        for topic in due {
            let clear = Message { topic, qos: 1, retain: true, ..Message::default() };
            match self.mqtt.publish(clear) {
                Ok(receipt) => receipt.detach(),
                Err(e) => warn!(error = %e, "Could not clear an expired value."),
            }
        }
    }
}

/// The 2.05 answer carrying a value, with the Max-Age it has left.
pub(super) fn value_response(value: &Value, now: Instant) -> Response {
    Response {
        code: Code::CONTENT.0,
        payload: value.payload.to_vec(),
        content_format: value.content_type.as_deref().and_then(content_format::from_mime),
        max_age: value.remaining(now),
        ..Response::default()
    }
}
