//! Small constructors that keep the vectors readable: configs, requests and expected answers.

use crate::Entries;
use sluice_sdk::{Auth, Code, Method, Principal, Publish, Reject, Request, Route};

/// `hash_password("secret", &[0u8; 16])`.
pub const SECRET_HASH: &str =
    "sha256$00000000000000000000000000000000$36fcbdc4799378811fe3603f327fe626b629fdc63c0958cc7ee6fce2183752cb";

/// A config from literal pairs.
pub fn config(entries: &[(&'static str, &str)]) -> Entries {
    entries.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Anonymous access, no users: the zero-config start.
pub fn open() -> Entries {
    config(&[("anonymous", "true")])
}

/// No anonymous access, no users.
pub fn closed() -> Entries {
    Vec::new()
}

/// Three users: `tom` (plain password with `=`, topic lists), `ann` (hashed, no lists) and
/// `bob` (bound to client id `bob-dev`); no anonymous access.
pub fn users() -> Entries {
    config(&[
        ("users.0.username", "tom"),
        ("users.0.password", "p=q=="),
        ("users.0.publish.0", "devices/${clientid}/#"),
        ("users.0.publish.1", "public/#"),
        ("users.0.subscribe.0", "devices/${clientid}/#"),
        ("users.0.subscribe.1", "broadcast/+"),
        ("users.0.subscribe.2", "users/${username}/inbox"),
        ("users.1.username", "ann"),
        ("users.1.password_hash", SECRET_HASH),
        ("users.2.username", "bob"),
        ("users.2.password", "pw"),
        ("users.2.clientid", "bob-dev"),
    ])
}

/// [`users`] plus anonymous access limited to `public/${clientid}`, subscribing to nothing.
pub fn users_open() -> Entries {
    let mut c = users();
    c.extend(config(&[
        ("anonymous", "true"),
        ("anonymous_publish.0", "public/${clientid}"),
        ("anonymous_subscribe", "none"),
    ]));
    c
}

/// DTLS identities as client ids; `sensor-1` is a user with a publish list.
pub fn identity() -> Entries {
    config(&[
        ("clientid_from_identity", "true"),
        ("users.0.username", "sensor-1"),
        ("users.0.password_hash", SECRET_HASH),
        ("users.0.publish.0", "sensors/${username}/#"),
    ])
}

/// A request; `path` is split on `/` (use [`segments`] for a segment that holds a `/`).
pub fn req(method: Method, path: &str, query: &[&str]) -> Request {
    let path = if path.is_empty() { Vec::new() } else { path.split('/').map(String::from).collect() };
    Request { method, path, query: query.iter().map(|q| q.to_string()).collect(), ..Request::default() }
}

/// GET.
pub fn get(path: &str, query: &[&str]) -> Request {
    req(Method::Get, path, query)
}

/// PUT.
pub fn put(path: &str, query: &[&str]) -> Request {
    req(Method::Put, path, query)
}

/// POST.
pub fn post(path: &str, query: &[&str]) -> Request {
    req(Method::Post, path, query)
}

/// DELETE.
pub fn delete(path: &str, query: &[&str]) -> Request {
    req(Method::Delete, path, query)
}

/// With the Observe option.
pub fn observe(mut r: Request, value: u32) -> Request {
    r.observe = Some(value);
    r
}

/// With the Max-Age option.
pub fn max_age(mut r: Request, seconds: u32) -> Request {
    r.max_age = Some(seconds);
    r
}

/// With a DTLS PSK identity.
pub fn psk(mut r: Request, id: &str) -> Request {
    r.identity.psk_identity = Some(id.into());
    r
}

/// With a client certificate subject.
pub fn cert(mut r: Request, subject: &str) -> Request {
    r.identity.cert_subject = Some(subject.into());
    r
}

/// With explicit Uri-Path segments.
pub fn segments(mut r: Request, path: &[&str]) -> Request {
    r.path = path.iter().map(|s| s.to_string()).collect();
    r
}

/// Allowed with a client id and maybe a username, without an attribute (a DTLS identity).
pub fn allow(client_id: &str, username: Option<&str>) -> Auth {
    Auth::Allow(Principal { client_id: client_id.into(), username: username.map(Into::into), ..Principal::default() })
}

/// Allowed as a configured user whose password was checked (attribute `emqx_login: user`).
pub fn login(client_id: &str, username: &str) -> Auth {
    Auth::Allow(Principal {
        client_id: client_id.into(),
        username: Some(username.into()),
        attributes: vec![("emqx_login".into(), "user".into())],
    })
}

/// Allowed as anonymous (attribute `emqx_login: anonymous`).
pub fn anon(client_id: &str) -> Auth {
    Auth::Allow(Principal {
        client_id: client_id.into(),
        attributes: vec![("emqx_login".into(), "anonymous".into())],
        ..Principal::default()
    })
}

/// A connection-mode session check.
pub fn session(client_id: &str, token: &str) -> Auth {
    Auth::Session { client_id: client_id.into(), token: token.into() }
}

/// Refused at authentication.
pub fn deny(code: Code, reason: &str) -> Auth {
    Auth::Deny(Reject::new(code, reason))
}

/// Refused at routing.
pub fn reject(code: Code, reason: &str) -> Route {
    Route::Reject(Reject::new(code, reason))
}

/// A plain publish.
pub fn publish(topic: &str, qos: Option<u8>, retain: bool, expiry: Option<u32>) -> Route {
    Route::Publish(Publish { topic: topic.into(), qos, retain, expiry, user_properties: Vec::new() })
}

/// A PubSub value write: retained, expiring.
pub fn set_value(topic: &str, qos: Option<u8>, expiry: u32) -> Route {
    Route::SetValue(Publish {
        topic: topic.into(),
        qos,
        retain: true,
        expiry: Some(expiry),
        user_properties: Vec::new(),
    })
}

/// Subscribe.
pub fn subscribe(filter: &str, qos: Option<u8>) -> Route {
    Route::Subscribe { filter: filter.into(), qos }
}

/// Unsubscribe.
pub fn unsubscribe(filter: &str) -> Route {
    Route::Unsubscribe { filter: filter.into() }
}

/// Read a value.
pub fn read(topic: &str) -> Route {
    Route::Read { topic: topic.into() }
}

/// Observe a value.
pub fn observe_value(topic: &str, qos: Option<u8>) -> Route {
    Route::ObserveValue { topic: topic.into(), qos }
}

/// Clear a value.
pub fn clear(topic: &str) -> Route {
    Route::Delete { topic: topic.into() }
}

/// The `/.well-known/core` answer.
pub fn discovery() -> Route {
    Route::Respond {
        code: Code::CONTENT,
        payload: sluice_rule_emqx::DISCOVERY.as_bytes().to_vec(),
        content_format: Some(sluice_sdk::content_format::LINK_FORMAT),
    }
}

/// The mqtt-mode keep-alive answer.
pub fn keep_alive() -> Route {
    Route::Respond { code: Code::CONTENT, payload: Vec::new(), content_format: None }
}
