//! The gateway: turns complete CoAP requests into MQTT actions through the rule chain, and MQTT
//! messages into notifications for observers.
//!
//! For each request ([`Gateway::handle_request`]): authenticate → route → authorize → (uplink)
//! → the action → the response, sent back through the [`Link`] the request came with. Each
//! action answers its own requests in a file of its own, as methods of the request's [`Call`]:
//!
//! - [`publish`]: `Route::Publish`, and the one way a message goes to the broker;
//! - [`pubsub`]: the PubSub values (`SetValue`, `Read`, `Delete`) over the value cache;
//! - [`observe`]: Observe registrations, MQTT messages to notifications, idle filters;
//! - [`connection`]: connection-mode sessions (`Connect`, `Heartbeat`, `Disconnect`).
//!
//! Every outcome is a CoAP code; nothing is dropped silently. The side that failed picks the
//! code (see [`error`]): the device (4.xx), the broker (5.02/5.03 with a Max-Age retry hint) or
//! a rule (5.00).

mod clients;
mod connection;
mod error;
mod observe;
mod operate;
mod publish;
mod pubsub;
mod registry;
mod sessions;
#[cfg(test)]
mod tests;
mod trace;
mod values;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sluice_sdk::{Access, Code, MessageType, Method, Principal, Request, Route, topic};
use tracing::{Instrument, debug, debug_span};

pub use clients::{Client, Clients, Refusal};
pub use error::Failure;
pub use operate::{ClientDetail, ClientQuery, ClientSummary, Kicked, ObserverView, Page, transport_of};
pub use registry::{Observer, Registry, Relation};
pub use sessions::{Moment, Revocation, SessionError, Sessions};
pub use trace::Tracers;
pub use values::{Lookup, Value, Values};

use crate::coap::{GoneReason, IncomingRequest, ObserverId, RequestId, Response};
use crate::config::{Config, NotifyType, QosSetting};
use crate::mqtt;
use crate::rules::Chain;
use crate::telemetry::{Action, Metrics};
use crate::transport::{Link, RequestTask, Service};

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
    /// Connection-mode tokens are signed (`sessions.secret`): revocations go through the broker.
    pub shared_sessions: bool,
    /// `sessions.topic`: the prefix of the revocation records.
    pub sessions_topic: String,
    /// `sessions.lifetime` in seconds: how long a revocation record is kept.
    pub sessions_lifetime: u32,
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
            default_max_age: config.values.default_max_age,
            shared_sessions: config.sessions.key.is_some(),
            sessions_topic: config.sessions.topic.clone(),
            sessions_lifetime: u32::try_from(config.sessions.lifetime.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

struct State {
    registry: Registry,
    values: Values,
    sessions: Sessions,
    /// When the gateway clears each value it set (only while the broker gets no Message
    /// Expiry: `mqtt::Handle::sends_properties`).
    expiries: HashMap<String, Instant>,
    /// The devices served, for `/clients`.
    clients: Clients,
}

/// The gateway.
pub struct Gateway {
    /// The live rule chain; hot reload swaps it. A request loads it once and keeps that version.
    chain: Arc<ArcSwap<Chain>>,
    mqtt: mqtt::Handle,
    settings: Settings,
    state: Mutex<State>,
    /// Orders the subscribe and unsubscribe calls of each filter (see [`observe`]).
    filter_ops: observe::FilterOps,
    /// The counters the admin API serves.
    metrics: Arc<Metrics>,
    /// Operators following a device's requests.
    tracers: Tracers,
}

/// Who answered a request: the principal (once authenticated) and the rules that decided.
struct Decided<'c> {
    /// The client id and user name of the principal, when authentication succeeded.
    who: Option<(String, String)>,
    /// The rule that decided authentication, and its verdict.
    auth: (Option<&'c str>, &'static str),
    /// The rule that decided the route, and the route (`publish sensors/t1`), when reached.
    route: Option<(Option<&'c str>, String)>,
    /// When authentication failed: the client id the request names (`clientid=`, `c=`).
    claimed: Option<String>,
}

/// One request being answered: what every action needs, passed as one value.
pub(crate) struct Call<'a> {
    gateway: &'a Gateway,
    /// The chain version this request loaded.
    chain: &'a Chain,
    /// Who the device is (authenticated).
    who: Principal,
    req: Request,
    id: RequestId,
    /// The way back to the device's transport.
    link: &'a Link,
}

type Answer = Result<Response, Failure>;

impl Gateway {
    /// A gateway over a rule chain and an MQTT client; the transports hand it requests through
    /// [`Gateway::service`].
    pub fn new(config: &Config, chain: Arc<ArcSwap<Chain>>, mqtt: mqtt::Handle) -> Gateway {
        Gateway {
            chain,
            mqtt,
            settings: Settings::from_config(config),
            state: Mutex::new(State {
                registry: Registry::default(),
                values: Values::new(config.values.max_topics),
                sessions: Sessions::from_config(&config.sessions),
                expiries: HashMap::new(),
                clients: Clients::default(),
            }),
            filter_ops: observe::FilterOps::default(),
            metrics: Arc::default(),
            tracers: Tracers::default(),
        }
    }

    /// Counts into `metrics` (shared with the transports and the admin API).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Gateway {
        self.metrics = metrics;
        self
    }

    /// The gateway as the transports' [`Service`].
    pub fn service(self: &Arc<Self>) -> Arc<dyn Service> {
        Arc::new(Serve(self.clone()))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping would; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers one request through `link`, the transport it came from.
    pub async fn handle_request(self: Arc<Self>, incoming: IncomingRequest, link: Link) {
        let started = Instant::now();
        let transport = link.transport();
        self.metrics.request(transport, incoming.method);
        let (id, peer) = (incoming.id, incoming.peer);
        let span =
            debug_span!("exchange", %peer, request = id.0, method = incoming.method, path = %incoming.path.join("/"));
        let identity = incoming.identity.clone();
        let req = to_request(incoming);
        // What the client table and a trace need of the request, kept before it moves on.
        let (method, path) = (method_name(req.method), req.path.join("/"));
        let chain = self.chain.load_full();
        let (action, outcome, decided) = self.answer(&chain, id, req, &link).instrument(span).await;
        let (code, diagnostic) = match outcome {
            Ok(Some(response)) => {
                let code = response.code;
                let diagnostic = diagnostic_of(&response);
                link.respond(id, response);
                (code, diagnostic)
            }
            // An Observe registration, answered 2.05 (with the Observe option) by `observe`.
            Ok(None) => (Code::CONTENT.0, String::new()),
            Err(failure) => {
                debug!(%peer, code = %failure.code(), reason = %failure, "Request refused.");
                let response = failure.response(self.settings.retry_after);
                let code = response.code;
                let diagnostic = diagnostic_of(&response);
                link.respond(id, response);
                (code, diagnostic)
            }
        };
        self.metrics.response(transport, code, action, started.elapsed());

        let now = Moment::now();
        let refused = code >= 0x80;
        let refusal = || Refusal {
            at_ms: now.unix_ms,
            method,
            path: path.clone(),
            code: Code(code).to_string(),
            diagnostic: diagnostic.clone(),
        };
        let client_id = decided.who.as_ref().map(|(c, _)| c.as_str()).filter(|c| !c.is_empty());
        let claimed = decided.claimed.as_deref();
        {
            let mut state = self.state();
            match (client_id, claimed) {
                (Some(client_id), _) => state.clients.record(
                    client_id,
                    clients::Seen {
                        now: now.unix_ms,
                        user: decided.who.as_ref().map_or("", |(_, u)| u.as_str()),
                        address: peer,
                        transport,
                        identity: identity.as_deref(),
                        refusal: refused.then(refusal),
                    },
                ),
                (None, Some(claimed)) if refused => state.clients.record_claimed(claimed, refusal()),
                _ => {}
            }
        }
        if self.tracers.any()
            && let Some(traced) = client_id.or(claimed)
            && self.tracers.follows(traced)
        {
            let mut decisions = vec![trace::decision("authenticate", decided.auth.0, decided.auth.1)];
            if let Some((rule, route)) = &decided.route {
                decisions.push(trace::decision("route", *rule, route));
            }
            let line = serde_json::json!({
                "at_ms": now.unix_ms,
                "peer": peer.to_string(),
                "transport": transport.label(),
                "method": method,
                "path": path,
                "code": Code(code).to_string(),
                "diagnostic": diagnostic,
                "client_id": client_id.unwrap_or_default(),
                "user": decided.who.as_ref().map_or("", |(_, u)| u.as_str()),
                "decisions": decisions,
                "mqtt": mqtt_outcome(action, code),
            });
            self.tracers.emit(traced, &line);
        }
    }

    /// The action a request asks for, its answer (`Ok(None)` when the answer was already
    /// given: Observe registrations) and who decided.
    async fn answer<'c>(
        &self,
        chain: &'c Chain,
        id: RequestId,
        req: Request,
        link: &Link,
    ) -> (Action, Result<Option<Response>, Failure>, Decided<'c>) {
        let (auth, auth_rule) = chain.authenticate_by(&req);
        let auth_verdict = match &auth {
            sluice_sdk::Auth::Allow(_) => "allow",
            sluice_sdk::Auth::Continue => "continue (anonymous)",
            sluice_sdk::Auth::Deny(_) => "deny",
            sluice_sdk::Auth::Session { .. } => "session token",
        };
        let mut decided = Decided { who: None, auth: (auth_rule, auth_verdict), route: None, claimed: None };
        let who = match self.authenticate(auth) {
            Ok(who) => who,
            Err(failure) => {
                decided.claimed = clients::claimed_client_id(&req.query).map(str::to_string);
                return (Action::None, Err(failure), decided);
            }
        };
        decided.who = Some((who.client_id.clone(), who.username.clone().unwrap_or_default()));
        let (route, route_rule) = chain.route_by(&req, &who);
        let action = action_of(&route, &req);
        if self.tracers.any() {
            decided.route = Some((route_rule, describe_route(&route)));
        }
        let call = Call { gateway: self, chain, who, req, id, link };
        (action, call.run(route).await, decided)
    }

    /// Who the device is: the rules decided, or its connection-mode session does.
    fn authenticate(&self, auth: sluice_sdk::Auth) -> Result<Principal, Failure> {
        match auth {
            sluice_sdk::Auth::Allow(p) => Ok(p),
            sluice_sdk::Auth::Continue => Ok(Principal::default()),
            sluice_sdk::Auth::Deny(r) => Err(Failure::Rejected(r)),
            sluice_sdk::Auth::Session { client_id, token } => self.check_session(&client_id, &token),
        }
    }

    /// The CoAP layer of `link` ended a relation (RST, timeout, deregistration, replacement).
    pub fn observer_gone(&self, link: &Link, id: ObserverId) {
        let mut state = self.state();
        if let Some(observer) = state.registry.gone(Relation { link: link.id(), id }) {
            state.registry.release(&observer.filter, Instant::now());
            state.clients.observer_removed(&observer.principal.client_id);
        }
    }

    /// Periodic upkeep: unsubscribes filters nobody needs any more, expires sessions and
    /// values.
    pub async fn tidy(&self) {
        self.expire_sessions();
        self.expire_clients();
        self.tracers.prune();
        self.unsubscribe_idle().await;
        self.expire_values().await;
    }

    /// Established observers.
    pub fn observer_count(&self) -> usize {
        self.state().registry.observer_count()
    }
}

impl Call<'_> {
    /// Carries out the route the rules chose.
    async fn run(self, route: Route) -> Result<Option<Response>, Failure> {
        let response = match route {
            Route::Continue => return Err(Failure::NotFound(self.req.path.join("/"))),
            Route::Reject(r) => return Err(Failure::Rejected(r)),
            Route::Respond { code, payload, content_format } => {
                Response { code: code.0, payload, content_format, ..Response::default() }
            }
            Route::Publish(p) => {
                self.publish(p, false).await?;
                reply(Code::CHANGED)
            }
            Route::SetValue(p) => self.set_value(p).await?,
            Route::Read { topic } => self.read(&topic).await?,
            Route::Delete { topic } => self.delete(&topic).await?,
            Route::Subscribe { filter, qos } => return self.observe(&filter, qos, None).await.map(|()| None),
            Route::ObserveValue { topic, qos } => {
                self.check_topic(Access::Subscribe, &topic)?;
                let value = self.gateway.load_value(&topic).await?;
                return self.observe(&topic, qos, Some(value)).await.map(|()| None);
            }
            // The endpoint already ended the relation (Observe=1 on the same path).
            Route::Unsubscribe { .. } => reply(Code::CONTENT),
            Route::Connect => self.connect().await?,
            Route::Heartbeat => reply(Code::CHANGED),
            Route::Disconnect => self.disconnect(),
        };
        Ok(Some(response))
    }

    /// Whether the request was Confirmable (QoS `auto` and `notify_type: same` follow it).
    fn confirmable(&self) -> bool {
        self.req.message_type == MessageType::Confirmable
    }

    /// Topic validity and the rules' authorization.
    fn check_topic(&self, access: Access, name: &str) -> Result<(), Failure> {
        let valid = match access {
            Access::Publish => topic::valid_topic(name),
            Access::Subscribe => topic::valid_filter(name),
        };
        if !valid {
            return Err(Failure::InvalidTopic(name.to_string()));
        }
        if self.gateway.is_session_topic(name) {
            return Err(Failure::Reserved(name.to_string()));
        }
        if !self.chain.authorize(&self.who, access, name) {
            return Err(Failure::Forbidden(access, name.to_string()));
        }
        Ok(())
    }
}

/// The gateway as the drivers see it: it runs each request on the driver's task until the
/// request first has to wait, and gives the rest back to the driver, which polls it when what
/// it waits for arrives. Most requests never wait (a QoS 0 publish, a refusal, a rule's own
/// answer); none costs a task spawn.
///
/// Polling once with a no-op waker and handing the future on is sound: the driver polls it
/// again at once with its own waker (a future pushed into its set is polled on the next turn),
/// and every future registers the current waker on each poll.
struct Serve(Arc<Gateway>);

impl Service for Serve {
    fn request(&self, request: IncomingRequest, link: &Link) -> Option<RequestTask> {
        let mut task: RequestTask = Box::pin(self.0.clone().handle_request(request, link.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        task.as_mut().poll(&mut cx).is_pending().then_some(task)
    }

    fn observer_gone(&self, link: &Link, id: ObserverId, _reason: GoneReason) {
        self.0.observer_gone(link, id);
    }

    fn batch_begin(&self) {
        self.0.mqtt.begin_batch();
    }

    fn batch_end(&self) {
        self.0.mqtt.end_batch();
    }
}

/// A response's diagnostic (the payload of an error answer), for the client table and traces.
fn diagnostic_of(response: &Response) -> String {
    if response.code < 0x80 || response.secret {
        return String::new();
    }
    String::from_utf8_lossy(&response.payload[..response.payload.len().min(256)]).into_owned()
}

/// `GET`, `PUT`…
fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Fetch => "FETCH",
        Method::Patch => "PATCH",
        Method::IPatch => "iPATCH",
    }
}

/// A route in a trace line: `publish sensors/t1 (qos 1)`.
fn describe_route(route: &Route) -> String {
    match route {
        Route::Continue => "continue".into(),
        Route::Reject(r) => format!("reject {} {}", r.code, r.reason),
        Route::Respond { code, .. } => format!("respond {code}"),
        Route::Publish(p) => format!("publish {}", p.topic),
        Route::SetValue(p) => format!("set value {}", p.topic),
        Route::Read { topic } => format!("read {topic}"),
        Route::Delete { topic } => format!("delete {topic}"),
        Route::Subscribe { filter, .. } => format!("subscribe {filter}"),
        Route::ObserveValue { topic, .. } => format!("observe value {topic}"),
        Route::Unsubscribe { .. } => "unsubscribe".into(),
        Route::Connect => "connect".into(),
        Route::Heartbeat => "heartbeat".into(),
        Route::Disconnect => "disconnect".into(),
    }
}

/// What the broker did for a request, in a trace line.
fn mqtt_outcome(action: Action, code: u8) -> Option<&'static str> {
    let ok = code < 0x80;
    Some(match action {
        Action::Publish | Action::SetValue | Action::Delete if ok => "published",
        Action::Subscribe | Action::ObserveValue if ok => "subscribed",
        Action::Publish | Action::SetValue | Action::Delete | Action::Subscribe | Action::ObserveValue
            if code == Code::SERVICE_UNAVAILABLE.0 || code == Code::BAD_GATEWAY.0 =>
        {
            "the broker did not take it (see the diagnostic)"
        }
        _ => return None,
    })
}

/// The `action` label of a route (a rule's answer to `/.well-known/core` is discovery).
fn action_of(route: &Route, req: &Request) -> Action {
    match route {
        Route::Continue | Route::Reject(_) => Action::None,
        Route::Respond { .. } if req.path.len() == 2 && req.path[0] == ".well-known" && req.path[1] == "core" => {
            Action::WellKnown
        }
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
