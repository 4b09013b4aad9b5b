//! `route`: EMQX's URL model, `/mqtt/{topic}`, `/ps/{topic}` and `/mqtt/connection`, as actions.

use sluice_sdk::{Code, Method, Publish, Reject, Request, Route};

use crate::auth::is_connection;
use crate::config::Settings;
use crate::query;
use crate::topic::{is_valid_filter, is_valid_topic};

/// A refusal as a route.
fn reject(code: Code, reason: &str) -> Route {
    Route::Reject(Reject::new(code, reason))
}

/// Turns a query-parsing refusal into a route.
macro_rules! try_query {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return Route::Reject(r),
        }
    };
}

/// The `route` hook.
pub(crate) fn route(settings: &Settings, req: &Request) -> Route {
    match req.path.first().map(String::as_str) {
        Some("mqtt") if is_connection(req) => connection(req),
        Some("mqtt") => mqtt(req),
        Some("ps") => pubsub(settings, req),
        Some(".well-known") if req.path.len() == 2 && req.path[1] == "core" => discovery(req),
        _ => Route::Continue,
    }
}

/// The resources of this URL model in RFC 6690 link format (`/.well-known/core`). It needs no
/// credentials: `authenticate` leaves every path but `/mqtt` and `/ps` alone.
pub const DISCOVERY: &str = "</mqtt>;title=\"MQTT publish/subscribe\",</ps>;title=\"PubSub topic values\";rt=\"core.ps\",</mqtt/connection>;title=\"connection mode\"";

/// RFC 6690 discovery: GET lists [`DISCOVERY`].
fn discovery(req: &Request) -> Route {
    if req.method != Method::Get {
        return reject(Code::METHOD_NOT_ALLOWED, "use GET for /.well-known/core");
    }
    Route::Respond {
        code: Code::CONTENT,
        payload: DISCOVERY.as_bytes().to_vec(),
        content_format: Some(sluice_sdk::content_format::LINK_FORMAT),
    }
}

/// The topic: the path after the mode segment, joined with `/`.
fn topic(req: &Request) -> String {
    req.path.get(1..).unwrap_or_default().join("/")
}

/// `/mqtt/connection` (EMQX 5 connection mode).
fn connection(req: &Request) -> Route {
    match req.method {
        Method::Post => Route::Connect,
        Method::Put => Route::Heartbeat,
        Method::Delete => Route::Disconnect,
        _ => reject(
            Code::METHOD_NOT_ALLOWED,
            "use POST to connect, PUT for a heartbeat and DELETE to disconnect on /mqtt/connection",
        ),
    }
}

/// The Observe option of a GET: register, deregister, or none.
enum Observe {
    None,
    Register,
    Deregister,
}

/// Reads the Observe option; values other than 0 and 1 are 4.02.
fn observe(req: &Request) -> Result<Observe, Reject> {
    match req.observe {
        None => Ok(Observe::None),
        Some(0) => Ok(Observe::Register),
        Some(1) => Ok(Observe::Deregister),
        Some(_) => Err(Reject::new(Code::BAD_OPTION, "bad Observe: use 0 to observe and 1 to stop")),
    }
}

/// `/mqtt/{topic}` (EMQX 4 MQTT mode).
fn mqtt(req: &Request) -> Route {
    let topic = topic(req);
    match req.method {
        Method::Put => {
            if topic.is_empty() {
                return reject(Code::BAD_REQUEST, "missing topic: PUT /mqtt/{topic}");
            }
            if !is_valid_topic(&topic) {
                return reject(
                    Code::BAD_REQUEST,
                    "bad topic: a publish topic has no + or #; use GET with Observe to subscribe",
                );
            }
            Route::Publish(Publish {
                topic,
                qos: try_query!(query::qos(req)),
                retain: try_query!(query::retain(req)).unwrap_or(false),
                expiry: try_query!(query::expiry(req)),
                user_properties: Vec::new(),
            })
        }
        Method::Get => {
            let observe = try_query!(observe(req));
            if matches!(observe, Observe::None) {
                // EMQX's keep-alive: the device proves it is alive; the topic is optional.
                return Route::Respond { code: Code::CONTENT, payload: Vec::new(), content_format: None };
            }
            if topic.is_empty() {
                return reject(Code::BAD_REQUEST, "missing topic: GET /mqtt/{topic filter} with Observe");
            }
            if !is_valid_filter(&topic) {
                return reject(
                    Code::BAD_REQUEST,
                    "bad topic filter: + and # must fill a whole level, # only at the end",
                );
            }
            match observe {
                Observe::Deregister => Route::Unsubscribe { filter: topic },
                _ => Route::Subscribe { filter: topic, qos: try_query!(query::qos(req)) },
            }
        }
        _ => reject(Code::METHOD_NOT_ALLOWED, "use PUT to publish in mqtt mode; POST publishes in ps mode"),
    }
}

/// `/ps/{topic}` (EMQX 4 PubSub mode with EMQX 5's POST publish): the topic as a resource whose
/// value is its last (retained) message.
fn pubsub(settings: &Settings, req: &Request) -> Route {
    if !matches!(req.method, Method::Get | Method::Post | Method::Put | Method::Delete) {
        return reject(
            Code::METHOD_NOT_ALLOWED,
            "use PUT or POST to publish, GET to read or observe, DELETE to clear in ps mode",
        );
    }
    let topic = topic(req);
    if topic.is_empty() {
        return reject(Code::BAD_REQUEST, "missing topic: use /ps/{topic}");
    }
    if topic.contains(['+', '#']) {
        return reject(Code::BAD_REQUEST, "wildcards are not allowed in ps mode; observe a filter with /mqtt/{filter}");
    }
    if !is_valid_topic(&topic) {
        return reject(Code::BAD_REQUEST, "bad topic");
    }
    match req.method {
        Method::Put | Method::Post => {
            let qos = try_query!(query::qos(req));
            let expiry = try_query!(query::expiry(req));
            if try_query!(query::retain(req)) == Some(false) {
                // EMQX 5's `POST /ps/{t}?retain=false`: a plain publish, no value kept.
                return Route::Publish(Publish { topic, qos, retain: false, expiry, user_properties: Vec::new() });
            }
            let expiry = expiry.or(req.max_age).unwrap_or(settings.default_max_age);
            Route::SetValue(Publish { topic, qos, retain: true, expiry: Some(expiry), user_properties: Vec::new() })
        }
        Method::Delete => Route::Delete { topic },
        _ => match try_query!(observe(req)) {
            Observe::None => Route::Read { topic },
            Observe::Register => Route::ObserveValue { topic, qos: try_query!(query::qos(req)) },
            Observe::Deregister => Route::Unsubscribe { filter: topic },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &[&str]) -> Request {
        Request { method, path: path.iter().map(|s| s.to_string()).collect(), ..Request::default() }
    }

    #[test]
    fn percent_encoded_slashes_join_like_path_segments() {
        let s = Settings::default();
        let r = route(&s, &req(Method::Put, &["mqtt", "a/b", "c"]));
        assert_eq!(r, Route::Publish(Publish::to("a/b/c")));
    }

    #[test]
    fn a_trailing_empty_segment_is_an_empty_level() {
        let s = Settings::default();
        assert_eq!(route(&s, &req(Method::Put, &["mqtt", "a", ""])), Route::Publish(Publish::to("a/")));
        let empty = route(&s, &req(Method::Put, &["mqtt", ""]));
        assert!(matches!(empty, Route::Reject(r) if r.code == Code::BAD_REQUEST));
    }

    #[test]
    fn other_methods_are_not_allowed_in_either_mode() {
        let s = Settings::default();
        for path in [&["mqtt", "t"][..], &["ps", "t"], &["mqtt", "connection"]] {
            let r = route(&s, &req(Method::Fetch, path));
            assert!(matches!(r, Route::Reject(ref x) if x.code == Code::METHOD_NOT_ALLOWED), "{path:?}: {r:?}");
        }
    }

    #[test]
    fn ps_refuses_a_nul_in_the_topic() {
        let r = route(&Settings::default(), &req(Method::Get, &["ps", "a\0"]));
        assert!(matches!(r, Route::Reject(x) if x.code == Code::BAD_REQUEST));
    }
}
