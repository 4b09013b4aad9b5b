//! The gateway: turns complete CoAP requests into MQTT actions through the rule chain, and MQTT
//! messages into notifications for observers.
//!
//! For each request: authenticate → route → authorize → (uplink) → the action → the response.
//! Every outcome is a CoAP code; nothing is dropped silently. The side that failed picks the
//! code (see [`error`]): the device (4.xx), the broker (5.02/5.03 with a Max-Age retry hint) or
//! a rule (5.00).

mod error;
mod registry;
mod sessions;
mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sluice_sdk::{
    Access, Auth, Code, Downlink, MessageType, Method, Principal, Publish, Reject, Request, Route, Uplink,
    content_format, topic,
};
use tracing::{debug, warn};

pub use error::Failure;
pub use registry::{Observer, Registry};
pub use sessions::{SessionError, Sessions};
pub use values::{Lookup, Value, Values};

use crate::admin::{Action, DropReason, Metrics, PublishResult, Transport};
use crate::coap::{IncomingRequest, Notification, ObserverId, Response};
use crate::config::{Config, NotifyType, QosSetting};
use crate::mqtt::{self, Incoming, Message, PublishError};
use crate::rules::Chain;
use crate::transport::udp;

/// A filter whose last observer left is unsubscribed after this long.
const IDLE_UNSUBSCRIBE: Duration = Duration::from_secs(30);

/// What the gateway needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// QoS of publishes.
    pub publish_qos: QosSetting,
    /// QoS of subscriptions.
    pub subscribe_qos: QosSetting,
    /// How long to wait for the broker.
    pub publish_timeout: Duration,
    /// Max-Age of 5.03 answers.
    pub retry_after: u32,
    /// Notification message type.
    pub notify_type: NotifyType,
    /// Default expiry of PubSub values when the rule gives none.
    pub default_max_age: u32,
    /// The broker does not get MQTT v5 properties (the embedded rumqttd), so it cannot expire
    /// retained values: the gateway clears a value's retained message itself when its Max-Age
    /// has passed (checked every few seconds by [`Gateway::tidy`]).
    pub expire_values: bool,
}

impl Settings {
    /// The settings of a configuration.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            publish_qos: config.mqtt.publish_qos,
            subscribe_qos: config.mqtt.subscribe_qos,
            publish_timeout: config.mqtt.publish_timeout,
            retry_after: config.mqtt.retry_after,
            notify_type: config.coap.notify_type,
            default_max_age: 60,
            expire_values: config.mqtt.broker == "embedded",
        }
    }
}

struct State {
    registry: Registry,
    values: Values,
    sessions: Sessions,
    /// When the gateway clears each value it set (only with `Settings::expire_values`).
    expiries: HashMap<String, Instant>,
}

/// At most this many values are expired by the gateway itself; beyond it a value's retained
/// message outlives its Max-Age in the embedded broker (reads through the gateway's cache still
/// honour it).
const MAX_EXPIRIES: usize = 100_000;

/// The gateway.
pub struct Gateway {
    /// The live rule chain; hot reload swaps it. A request loads it once and keeps that version.
    chain: Arc<ArcSwap<Chain>>,
    mqtt: mqtt::Handle,
    coap: udp::Handle,
    /// The DTLS transport, when it runs; its ids carry [`crate::transport::DTLS_TAG`].
    coaps: Option<udp::Handle>,
    settings: Settings,
    state: Mutex<State>,
    /// Serialises subscribe/unsubscribe so that the broker sees them in the order decided.
    sub_ops: tokio::sync::Mutex<()>,
    /// The counters the admin API serves.
    metrics: Arc<Metrics>,
}

type Answer = Result<Response, Failure>;

impl Gateway {
    /// A gateway over a rule chain, an MQTT client and a CoAP transport.
    pub fn new(config: &Config, chain: Arc<ArcSwap<Chain>>, mqtt: mqtt::Handle, coap: udp::Handle) -> Gateway {
        Gateway {
            chain,
            mqtt,
            coap,
            coaps: None,
            settings: Settings::from_config(config),
            state: Mutex::new(State {
                registry: Registry::default(),
                values: Values::new(config.values.max_topics),
                sessions: Sessions::new(config.sessions.timeout, config.sessions.max),
                expiries: HashMap::new(),
            }),
            sub_ops: tokio::sync::Mutex::new(()),
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (shared with the transports and the admin API).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Gateway {
        self.metrics = metrics;
        self
    }

    /// Adds the DTLS transport: requests and observers whose ids carry
    /// [`crate::transport::DTLS_TAG`] are answered through it.
    pub fn with_coaps(mut self, coaps: udp::Handle) -> Gateway {
        self.coaps = Some(coaps);
        self
    }

    /// The transport a request came from.
    fn link_for_request(&self, id: crate::coap::RequestId) -> &udp::Handle {
        match &self.coaps {
            Some(coaps) if crate::transport::request_is_dtls(id) => coaps,
            _ => &self.coap,
        }
    }

    /// The transport an observer registered over.
    fn link_for_observer(&self, id: ObserverId) -> &udp::Handle {
        match &self.coaps {
            Some(coaps) if crate::transport::observer_is_dtls(id) => coaps,
            _ => &self.coap,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping would; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers one request (spawned per request by the server).
    pub async fn handle_request(self: Arc<Self>, incoming: IncomingRequest) {
        let started = Instant::now();
        let id = incoming.id;
        let peer = incoming.peer;
        let transport = if crate::transport::request_is_dtls(id) { Transport::Dtls } else { Transport::Udp };
        self.metrics.request(transport, incoming.method);
        let req = to_request(incoming);
        let chain = self.chain.load_full();
        let mut action = Action::None;
        let code = match self.answer(&chain, id, &req, &mut action).await {
            Ok(Some(response)) => {
                let code = response.code;
                self.link_for_request(id).respond(id, response);
                code
            }
            // An Observe registration, answered 2.05 (with the Observe option) by `observe`.
            Ok(None) => Code::CONTENT.0,
            Err(failure) => {
                debug!(%peer, code = %failure.code(), reason = %failure, "Request refused.");
                let response = failure.response(self.settings.retry_after);
                let code = response.code;
                self.link_for_request(id).respond(id, response);
                code
            }
        };
        self.metrics.response(transport, code, action, started.elapsed());
    }

    /// The answer to a request; `Ok(None)` when it was already given (Observe registrations).
    async fn answer(
        &self,
        chain: &Chain,
        id: crate::coap::RequestId,
        req: &Request,
        action: &mut Action,
    ) -> Result<Option<Response>, Failure> {
        if req.path.len() == 2 && req.path[0] == ".well-known" && req.path[1] == "core" {
            *action = Action::WellKnown;
            return Ok(Some(well_known_core(req)?));
        }
        let who = self.authenticate(chain, req)?;
        let route = chain.route(req, &who);
        *action = action_of(&route);
        let now = Instant::now();
        let confirmable = req.message_type == MessageType::Confirmable;
        let response = match route {
            Route::Continue => return Err(Failure::NotFound(req.path.join("/"))),
            Route::Reject(r) => return Err(Failure::Rejected(r)),
            Route::Respond { code, payload, content_format } => {
                Response { code: code.0, payload, content_format, ..Response::default() }
            }
            Route::Publish(p) => {
                self.publish(chain, &who, p, req, confirmable, false).await?;
                reply(Code::CHANGED)
            }
            Route::SetValue(p) => self.set_value(chain, &who, p, req, confirmable).await?,
            Route::Read { topic } => self.read(chain, &who, &topic).await?,
            Route::Delete { topic } => self.delete(chain, &who, &topic, confirmable).await?,
            Route::Subscribe { filter, qos } => {
                return self.observe(chain, id, &who, &filter, qos, req, None).await.map(|()| None);
            }
            Route::ObserveValue { topic, qos } => {
                check_topic(chain, &who, Access::Subscribe, &topic)?;
                let value = self.load_value(&topic).await?;
                return self.observe(chain, id, &who, &topic, qos, req, Some(value)).await.map(|()| None);
            }
            // The endpoint already ended the relation (Observe=1 on the same path).
            Route::Unsubscribe { .. } => reply(Code::CONTENT),
            Route::Connect => {
                let token = self.state().sessions.open(who, now).map_err(Failure::Session)?;
                Response {
                    code: Code::CREATED.0,
                    payload: token.into_bytes(),
                    content_format: Some(content_format::TEXT_PLAIN),
                    secret: true,
                    ..Response::default()
                }
            }
            Route::Heartbeat => reply(Code::CHANGED),
            Route::Disconnect => {
                self.state().sessions.close(&who.client_id);
                reply(Code::DELETED)
            }
        };
        Ok(Some(response))
    }

    fn authenticate(&self, chain: &Chain, req: &Request) -> Result<Principal, Failure> {
        match chain.authenticate(req) {
            Auth::Allow(p) => Ok(p),
            Auth::Continue => Ok(Principal::default()),
            Auth::Deny(r) => Err(Failure::Rejected(r)),
            Auth::Session { client_id, token } => {
                self.state().sessions.check(&client_id, &token, Instant::now()).map_err(Failure::Session)
            }
        }
    }

    /// Publishes (after authorization and the uplink rules) and waits for the broker as the
    /// QoS requires. Returns what was published, or `None` if a rule dropped it.
    async fn publish(
        &self,
        chain: &Chain,
        who: &Principal,
        p: Publish,
        req: &Request,
        confirmable: bool,
        value: bool,
    ) -> Result<Option<Message>, Failure> {
        check_topic(chain, who, Access::Publish, &p.topic)?;
        let uplink =
            Uplink { topic: p.topic.clone(), payload: req.payload.clone(), content_format: req.content_format };
        let Some(up) = chain.uplink(uplink, who).map_err(Failure::Rejected)? else {
            debug!(topic = %p.topic, "Uplink rule dropped the message.");
            self.metrics.dropped(DropReason::UplinkRule);
            return Ok(None);
        };
        let qos = p.qos.unwrap_or_else(|| self.settings.publish_qos.for_request(confirmable));
        let expiry = if value { Some(p.expiry.unwrap_or(self.settings.default_max_age)) } else { p.expiry };
        let msg = Message {
            topic: p.topic,
            payload: up.payload.into(),
            qos,
            retain: p.retain || value,
            expiry,
            content_type: up.content_format.map(content_format::to_mime),
            user_properties: p.user_properties,
            subscriptions: Vec::new(),
        };
        self.send(msg.clone(), qos).await?;
        Ok(Some(msg))
    }

    async fn send(&self, msg: Message, qos: u8) -> Result<(), Failure> {
        let result = self.send_and_wait(msg, qos).await;
        let counted = match &result {
            Ok(()) => PublishResult::Ok,
            Err(PublishError::QueueFull) => PublishResult::QueueFull,
            Err(PublishError::Rejected(_)) => PublishResult::Rejected,
            Err(PublishError::TimedOut) => PublishResult::TimedOut,
            Err(PublishError::Closed) => PublishResult::Closed,
        };
        self.metrics.publish(qos, counted);
        result.map_err(Failure::Broker)
    }

    async fn send_and_wait(&self, msg: Message, qos: u8) -> Result<(), PublishError> {
        let done = self.mqtt.publish(msg)?;
        if qos == 0 {
            // Written when the connection allows; QoS 0 promises no more.
            done.detach();
            return Ok(());
        }
        match tokio::time::timeout(self.settings.publish_timeout, done).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::TimedOut),
        }
    }

    async fn set_value(&self, chain: &Chain, who: &Principal, p: Publish, req: &Request, confirmable: bool) -> Answer {
        check_topic(chain, who, Access::Publish, &p.topic)?;
        let topic = p.topic.clone();
        let existed = self.load_value(&topic).await?.is_some();
        let Some(msg) = self.publish(chain, who, p, req, confirmable, true).await? else {
            return Ok(reply(Code::CHANGED));
        };
        let now = Instant::now();
        let expires_at =
            msg.expiry.filter(|_| !msg.payload.is_empty()).map(|s| now + Duration::from_secs(u64::from(s)));
        let value = (!msg.payload.is_empty()).then(|| Value::new(msg.payload, msg.content_type, msg.expiry, now));
        {
            let mut state = self.state();
            state.values.set(&topic, value);
            if self.settings.expire_values {
                match expires_at {
                    Some(at) if state.expiries.len() < MAX_EXPIRIES || state.expiries.contains_key(&topic) => {
                        state.expiries.insert(topic.clone(), at);
                    }
                    Some(_) => warn!(%topic, "Too many expiring values; this one is not cleared from the broker."),
                    None => {
                        state.expiries.remove(&topic);
                    }
                }
            }
        }
        if existed {
            Ok(reply(Code::CHANGED))
        } else {
            Ok(Response { code: Code::CREATED.0, location_path: req.path.clone(), ..Response::default() })
        }
    }

    async fn read(&self, chain: &Chain, who: &Principal, name: &str) -> Answer {
        check_topic(chain, who, Access::Subscribe, name)?;
        match self.load_value(name).await? {
            Some(value) => Ok(value_response(&value, Instant::now())),
            None => Err(Failure::NoValue(name.to_string())),
        }
    }

    async fn delete(&self, chain: &Chain, who: &Principal, name: &str, confirmable: bool) -> Answer {
        check_topic(chain, who, Access::Publish, name)?;
        if self.load_value(name).await?.is_none() {
            return Err(Failure::NoValue(name.to_string()));
        }
        let qos = self.settings.publish_qos.for_request(confirmable);
        let msg = Message {
            topic: name.to_string(),
            payload: bytes::Bytes::new(),
            qos,
            retain: true,
            expiry: None,
            content_type: None,
            user_properties: Vec::new(),
            subscriptions: Vec::new(),
        };
        self.send(msg, qos).await?;
        let mut state = self.state();
        state.values.set(name, None);
        state.expiries.remove(name);
        Ok(reply(Code::DELETED))
    }

    /// The value of a topic, subscribing to it first if it is not cached.
    async fn load_value(&self, name: &str) -> Result<Option<Value>, Failure> {
        let deadline = tokio::time::Instant::now() + self.settings.publish_timeout;
        loop {
            let session = self.mqtt.reconnects();
            let lookup = self.state().values.lookup(name, Instant::now(), session);
            match lookup {
                Lookup::Ready(value) => return Ok(value),
                Lookup::Wait(rx) => {
                    if tokio::time::timeout_at(deadline, rx).await.is_err() {
                        return Err(Failure::Broker(PublishError::TimedOut));
                    }
                }
                load @ (Lookup::Load | Lookup::Reload) => {
                    if matches!(load, Lookup::Load) {
                        self.state().registry.acquire(name); // a reload holds it already
                    }
                    let qos = self.settings.subscribe_qos.for_request(true).max(1);
                    match self.subscribe(name, qos, true).await {
                        Ok(()) => {
                            let mut state = self.state();
                            let evicted = state.values.loaded(name);
                            let now = Instant::now();
                            for topic in evicted {
                                state.registry.release(&topic, now);
                            }
                        }
                        Err(failure) => {
                            let mut state = self.state();
                            state.values.failed(name);
                            state.registry.release(name, Instant::now());
                            return Err(failure);
                        }
                    }
                }
            }
        }
    }

    /// Makes sure the broker has our subscription to `filter` (again, when `always`: that
    /// makes it send the retained messages).
    async fn subscribe(&self, filter: &str, qos: u8, always: bool) -> Result<(), Failure> {
        let _ops = self.sub_ops.lock().await;
        if !always && !self.state().registry.needs_subscribe(filter, qos) {
            return Ok(());
        }
        match tokio::time::timeout(self.settings.publish_timeout, self.mqtt.subscribe(filter, qos)).await {
            Ok(Ok(())) => {
                self.state().registry.mark_subscribed(filter, qos);
                Ok(())
            }
            Ok(Err(e)) => Err(Failure::Subscribe(e)),
            Err(_) => Err(Failure::Broker(PublishError::TimedOut)),
        }
    }

    /// Registers an observer of `filter`: subscribes, answers 2.05 with Observe (carrying
    /// `value` for PubSub observes), then sends what arrived meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn observe(
        &self,
        chain: &Chain,
        id: crate::coap::RequestId,
        who: &Principal,
        filter: &str,
        qos: Option<u8>,
        req: &Request,
        value: Option<Option<Value>>,
    ) -> Result<(), Failure> {
        if req.observe != Some(0) {
            return Err(Failure::Rejected(Reject::new(Code::BAD_REQUEST, "Observe=0 is required to subscribe")));
        }
        check_topic(chain, who, Access::Subscribe, filter)?;
        let confirmable = req.message_type == MessageType::Confirmable;
        let qos = qos.unwrap_or_else(|| self.settings.subscribe_qos.for_request(confirmable));
        let pending = {
            let mut state = self.state();
            state.registry.acquire(filter);
            state.registry.begin(filter)
        };
        // A PubSub observe already has the value; a plain one wants the retained messages.
        if let Err(failure) = self.subscribe(filter, qos, value.is_none()).await {
            let mut state = self.state();
            state.registry.establish(pending, None);
            state.registry.release(filter, Instant::now());
            return Err(failure);
        }
        let now = Instant::now();
        let response = match value.flatten() {
            Some(v) => Response { observe: true, ..value_response(&v, now) },
            None => Response { observe: true, ..reply(Code::CONTENT) },
        };
        let observer_id = self.link_for_request(id).respond_observe(id, response).await;
        let principal = Arc::new(who.clone());
        let observer = Observer { filter: filter.to_string(), principal, confirmable };
        let buffered = {
            let mut state = self.state();
            let buffered = state.registry.establish(pending, observer_id.map(|id| (id, observer.clone())));
            if observer_id.is_none() {
                state.registry.release(filter, now);
            }
            buffered
        };
        if let Some(observer_id) = observer_id {
            for msg in buffered {
                self.notify(chain, observer_id, &observer, &msg);
            }
        }
        Ok(())
    }

    /// An MQTT message arrived: update values and notify observers.
    pub fn dispatch(&self, msg: Incoming) {
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
        for (id, observer) in targets {
            self.notify(&chain, id, &observer, &msg);
        }
    }

    fn notify(&self, chain: &Chain, id: ObserverId, observer: &Observer, msg: &Incoming) {
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
        self.link_for_observer(id).notify(id, notification);
    }

    /// The CoAP layer ended a relation (RST, timeout, deregistration, replacement).
    pub fn observer_gone(&self, id: ObserverId) {
        let mut state = self.state();
        if let Some(observer) = state.registry.remove(id) {
            state.registry.release(&observer.filter, Instant::now());
        }
    }

    /// Periodic upkeep: unsubscribes filters nobody needs any more, expires sessions.
    pub async fn tidy(&self) {
        let _ops = self.sub_ops.lock().await;
        let idle = {
            let mut state = self.state();
            let now = Instant::now();
            state.sessions.expire(now);
            state.registry.take_idle(now, IDLE_UNSUBSCRIBE)
        };
        for filter in idle {
            if let Err(e) = self.mqtt.unsubscribe(&filter).await {
                warn!(%filter, error = ?e, "Could not unsubscribe an idle filter.");
            }
        }
        self.expire_values().await;
    }

    /// Clears the retained messages of values whose Max-Age has passed (embedded broker only;
    /// see [`Settings::expire_values`]).
    async fn expire_values(&self) {
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

    /// Established observers.
    pub fn observer_count(&self) -> usize {
        self.state().registry.observer_count()
    }
}

/// Topic validity and the rules' authorization.
fn check_topic(chain: &Chain, who: &Principal, access: Access, name: &str) -> Result<(), Failure> {
    let valid = match access {
        Access::Publish => topic::valid_topic(name),
        Access::Subscribe => topic::valid_filter(name),
    };
    if !valid {
        return Err(Failure::InvalidTopic(name.to_string()));
    }
    if !chain.authorize(who, access, name) {
        return Err(Failure::Forbidden(access, name.to_string()));
    }
    Ok(())
}

/// The `action` label of a route.
fn action_of(route: &Route) -> Action {
    match route {
        Route::Continue | Route::Reject(_) => Action::None,
        Route::Respond { .. } => Action::Respond,
        Route::Publish(_) => Action::Publish,
        Route::SetValue(_) => Action::SetValue,
        Route::Read { .. } => Action::Read,
        Route::Delete { .. } => Action::Delete,
        Route::Subscribe { .. } => Action::Subscribe,
        Route::ObserveValue { .. } => Action::ObserveValue,
        Route::Unsubscribe { .. } => Action::Unsubscribe,
        Route::Connect => Action::Connect,
        Route::Heartbeat => Action::Heartbeat,
        Route::Disconnect => Action::Disconnect,
    }
}

fn reply(code: Code) -> Response {
    Response { code: code.0, ..Response::default() }
}

fn value_response(value: &Value, now: Instant) -> Response {
    Response {
        code: Code::CONTENT.0,
        payload: value.payload.to_vec(),
        content_format: value.content_type.as_deref().and_then(content_format::from_mime),
        max_age: value.remaining(now),
        ..Response::default()
    }
}

/// RFC 6690 discovery of the resources the default rule serves.
fn well_known_core(req: &Request) -> Answer {
    if req.method != Method::Get {
        return Err(Failure::Rejected(Reject::new(Code::METHOD_NOT_ALLOWED, "use GET")));
    }
    Ok(Response {
        code: Code::CONTENT.0,
        content_format: Some(content_format::LINK_FORMAT),
        payload: b"</mqtt>;title=\"MQTT publish/subscribe\",</ps>;title=\"PubSub topic values\";rt=\"core.ps\",</mqtt/connection>;title=\"connection mode\"".to_vec(),
        ..Response::default()
    })
}

/// The rule view of a request.
fn to_request(r: IncomingRequest) -> Request {
    Request {
        method: Method::from_code(r.method).unwrap_or_default(),
        message_type: if r.confirmable { MessageType::Confirmable } else { MessageType::NonConfirmable },
        path: r.path,
        query: r.query,
        content_format: r.content_format,
        accept: r.accept,
        observe: r.observe,
        max_age: r.max_age,
        peer: r.peer.to_string(),
        identity: r.identity.map(|identity| (*identity).clone()).unwrap_or_default(),
        payload: r.payload,
    }
}
