//! The vectors themselves: one function per table of DESIGN §3, then authentication and
//! authorization.

use sluice_sdk::{Access, Auth, Authz, Code, Method, Request, Route};

use crate::support::*;
use crate::{Case, Entries};

const MISSING_C: &str = "missing client id: add ?c=<client id> to the URL";
const MISSING_CLIENTID: &str = "missing client id: add clientid=<id> to the query";
const MISSING_TOKEN: &str = "missing token: add token=<the token POST /mqtt/connection returned>";
const BAD_CREDENTIALS: &str = "bad username or password";
const ANONYMOUS_OFF: &str = "anonymous access is off: add u=<username>&p=<password> to the URL";
const ANONYMOUS_OFF_LONG: &str = "anonymous access is off: add username=<username>&password=<password> to the query";
const WRONG_CLIENT_ID: &str = "this user may not use this client id: check c= or the user's clientid";
const MQTT_405: &str = "use PUT to publish in mqtt mode; POST publishes in ps mode";
const PS_405: &str = "use PUT or POST to publish, GET to read or observe, DELETE to clear in ps mode";
const CONNECTION_405: &str = "use POST to connect, PUT for a heartbeat and DELETE to disconnect on /mqtt/connection";
const BAD_QOS: &str = "bad qos: use q=0, q=1 or q=2";
const BAD_RETAIN: &str = "bad retain: use r=true or r=false";
const BAD_EXPIRY: &str = "bad expiry: use expiry=<seconds>, a whole number";
const BAD_OBSERVE: &str = "bad Observe: use 0 to observe and 1 to stop";
const PS_WILDCARD: &str = "wildcards are not allowed in ps mode; observe a filter with /mqtt/{filter}";

/// A case with no authorization checks.
fn case(name: &'static str, config: Entries, request: Request, auth: Auth, route: Route) -> Case {
    Case { name, config, request, auth, route, authorize: Vec::new() }
}

impl Case {
    /// Adds `authorize` expectations.
    fn authorize(mut self, checks: &[(Access, &'static str, Authz)]) -> Case {
        self.authorize.extend_from_slice(checks);
        self
    }
}

/// Every vector.
pub fn vectors() -> Vec<Case> {
    [mqtt_mode(), ps_mode(), connection_mode(), authentication(), authorization()].into_iter().flatten().collect()
}

/// DESIGN §3, MQTT mode.
#[rustfmt::skip] // one line per case: the vectors read as a table
fn mqtt_mode() -> Vec<Case> {
    let d = anon("d");
    vec![
        case("put publishes to the path after mqtt", open(), put("mqtt/a/b", &["c=d"]), d.clone(), publish("a/b", None, false, None)),
        case("long clientid name is an alias of c", open(), put("mqtt/a", &["clientid=d"]), d.clone(), publish("a", None, false, None)),
        case("short q r expiry override the publish", open(), put("mqtt/a", &["c=d", "q=1", "r=true", "expiry=30"]), d.clone(), publish("a", Some(1), true, Some(30))),
        case("long qos retain names override the publish", open(), put("mqtt/a", &["c=d", "qos=2", "retain=1"]), d.clone(), publish("a", Some(2), true, None)),
        case("retain zero means not retained", open(), put("mqtt/a", &["c=d", "retain=0", "q=0"]), d.clone(), publish("a", Some(0), false, None)),
        case("qos above two is a bad request", open(), put("mqtt/a", &["c=d", "q=3"]), d.clone(), reject(Code::BAD_REQUEST, BAD_QOS)),
        case("retain must be a boolean", open(), put("mqtt/a", &["c=d", "r=maybe"]), d.clone(), reject(Code::BAD_REQUEST, BAD_RETAIN)),
        case("expiry must be whole seconds", open(), put("mqtt/a", &["c=d", "expiry=-1"]), d.clone(), reject(Code::BAD_REQUEST, BAD_EXPIRY)),
        case("put without a topic is a bad request", open(), put("mqtt", &["c=d"]), d.clone(), reject(Code::BAD_REQUEST, "missing topic: PUT /mqtt/{topic}")),
        case("put to a wildcard topic is a bad request", open(), put("mqtt/a/+", &["c=d"]), d.clone(), reject(Code::BAD_REQUEST, "bad topic: a publish topic has no + or #; use GET with Observe to subscribe")),
        case("a percent encoded slash joins like a segment", open(), segments(put("", &["c=d"]), &["mqtt", "a/b", "c"]), d.clone(), publish("a/b/c", None, false, None)),
        case("observe zero subscribes with a plus wildcard", open(), observe(get("mqtt/a/+/c", &["c=d"]), 0), d.clone(), subscribe("a/+/c", None)),
        case("observe zero subscribes with a hash wildcard and qos", open(), observe(get("mqtt/a/#", &["c=d", "q=1"]), 0), d.clone(), subscribe("a/#", Some(1))),
        case("observe one unsubscribes", open(), observe(get("mqtt/a/#", &["c=d"]), 1), d.clone(), unsubscribe("a/#")),
        case("observe two is a bad option in mqtt mode", open(), observe(get("mqtt/a", &["c=d"]), 2), d.clone(), reject(Code::BAD_OPTION, BAD_OBSERVE)),
        case("get without observe is a keep alive", open(), get("mqtt/a", &["c=d"]), d.clone(), keep_alive()),
        case("keep alive needs no topic", open(), get("mqtt", &["c=d"]), d.clone(), keep_alive()),
        case("observe without a topic is a bad request", open(), observe(get("mqtt", &["c=d"]), 0), d.clone(), reject(Code::BAD_REQUEST, "missing topic: GET /mqtt/{topic filter} with Observe")),
        case("observe of a malformed filter is a bad request", open(), observe(get("mqtt/a/#/b", &["c=d"]), 0), d.clone(), reject(Code::BAD_REQUEST, "bad topic filter: + and # must fill a whole level, # only at the end")),
        case("post in mqtt mode is not allowed", open(), post("mqtt/a", &["c=d"]), d.clone(), reject(Code::METHOD_NOT_ALLOWED, MQTT_405)),
        case("delete in mqtt mode is not allowed", open(), delete("mqtt/a", &["c=d"]), d, reject(Code::METHOD_NOT_ALLOWED, MQTT_405)),
    ]
}

/// DESIGN §3, PubSub mode.
#[rustfmt::skip] // one line per case: the vectors read as a table
fn ps_mode() -> Vec<Case> {
    let d = anon("d");
    let mut max300 = open();
    max300.extend(config(&[("default_max_age", "300")]));
    vec![
        case("ps put sets the value for the default max age", open(), put("ps/room/temp", &["c=d"]), d.clone(), set_value("room/temp", None, 60)),
        case("ps post sets the value like put", open(), post("ps/room/temp", &["c=d"]), d.clone(), set_value("room/temp", None, 60)),
        case("ps value lives for the request max age", open(), max_age(put("ps/t", &["c=d"]), 30), d.clone(), set_value("t", None, 30)),
        case("ps expiry query beats the max age option", open(), max_age(put("ps/t", &["c=d", "expiry=10"]), 30), d.clone(), set_value("t", None, 10)),
        case("ps default max age comes from the config", max300, put("ps/t", &["c=d"]), d.clone(), set_value("t", None, 300)),
        case("ps qos and retain true override", open(), post("ps/t", &["c=d", "qos=1", "retain=true"]), d.clone(), set_value("t", Some(1), 60)),
        case("ps retain false is a plain publish", open(), post("ps/t", &["c=d", "r=false", "expiry=5"]), d.clone(), publish("t", None, false, Some(5))),
        case("ps get reads the value", open(), get("ps/room/temp", &["c=d"]), d.clone(), read("room/temp")),
        case("ps observe zero observes the value", open(), observe(get("ps/t", &["c=d"]), 0), d.clone(), observe_value("t", None)),
        case("ps observe zero takes a qos", open(), observe(get("ps/t", &["c=d", "q=2"]), 0), d.clone(), observe_value("t", Some(2))),
        case("ps observe one unsubscribes", open(), observe(get("ps/t", &["c=d"]), 1), d.clone(), unsubscribe("t")),
        case("ps observe two is a bad option", open(), observe(get("ps/t", &["c=d"]), 2), d.clone(), reject(Code::BAD_OPTION, BAD_OBSERVE)),
        case("ps delete clears the value", open(), delete("ps/room/temp", &["c=d"]), d.clone(), clear("room/temp")),
        case("ps without a topic is a bad request", open(), put("ps", &["c=d"]), d.clone(), reject(Code::BAD_REQUEST, "missing topic: use /ps/{topic}")),
        case("ps refuses a plus wildcard", open(), observe(get("ps/a/+", &["c=d"]), 0), d.clone(), reject(Code::BAD_REQUEST, PS_WILDCARD)),
        case("ps refuses a hash wildcard", open(), put("ps/a/#", &["c=d"]), d.clone(), reject(Code::BAD_REQUEST, PS_WILDCARD)),
        case("ps refuses a wildcard inside a segment", open(), get("ps/a+b", &["c=d"]), d.clone(), reject(Code::BAD_REQUEST, PS_WILDCARD)),
        case("ps bad qos is a bad request", open(), put("ps/t", &["c=d", "q=9"]), d.clone(), reject(Code::BAD_REQUEST, BAD_QOS)),
        case("ps fetch is not allowed", open(), req(Method::Fetch, "ps/t", &["c=d"]), d, reject(Code::METHOD_NOT_ALLOWED, PS_405)),
    ]
}

/// DESIGN §3, EMQX 5 connection mode.
#[rustfmt::skip] // one line per case: the vectors read as a table
fn connection_mode() -> Vec<Case> {
    let long_names = ["clientid=d", "username=tom", "password=p=q=="];
    vec![
        case("connection post logs in with long names", users(), post("mqtt/connection", &long_names), login("d", "tom"), Route::Connect),
        case("connection post logs in with short names", users(), post("mqtt/connection", &["c=d", "u=tom", "p=p=q=="]), login("d", "tom"), Route::Connect),
        case("connection post ignores a token", users(), post("mqtt/connection", &["c=d", "u=tom", "p=p=q==", "token=1"]), login("d", "tom"), Route::Connect),
        case("connection post needs a client id", users(), post("mqtt/connection", &["username=tom", "password=p=q=="]), deny(Code::BAD_REQUEST, MISSING_CLIENTID), Route::Connect),
        case("connection post with a wrong password is unauthorized", users(), post("mqtt/connection", &["clientid=d", "username=tom", "password=nope"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), Route::Connect),
        case("connection post without credentials names the long keys", closed(), post("mqtt/connection", &["clientid=d"]), deny(Code::UNAUTHORIZED, ANONYMOUS_OFF_LONG), Route::Connect),
        case("connection post is anonymous when allowed", open(), post("mqtt/connection", &["clientid=d"]), anon("d"), Route::Connect),
        case("connection put is a heartbeat on the session", users(), put("mqtt/connection", &["clientid=d", "token=123"]), session("d", "123"), Route::Heartbeat),
        case("connection delete closes the session", users(), delete("mqtt/connection", &["c=d", "t=123"]), session("d", "123"), Route::Disconnect),
        case("connection put needs a token", users(), put("mqtt/connection", &["clientid=d"]), deny(Code::BAD_REQUEST, MISSING_TOKEN), Route::Heartbeat),
        case("connection put needs a client id", users(), put("mqtt/connection", &["token=123"]), deny(Code::BAD_REQUEST, MISSING_CLIENTID), Route::Heartbeat),
        case("connection get is not allowed", open(), get("mqtt/connection", &["clientid=d"]), anon("d"), reject(Code::METHOD_NOT_ALLOWED, CONNECTION_405)),
        case("a token on a publish checks the session", closed(), put("mqtt/a", &["clientid=d", "token=9"]), session("d", "9"), publish("a", None, false, None)),
        case("a token on a ps observe checks the session", closed(), observe(get("ps/t", &["c=d", "t=9"]), 0), session("d", "9"), observe_value("t", None)),
        case("a token without a client id is a bad request", closed(), put("mqtt/a", &["token=9"]), deny(Code::BAD_REQUEST, MISSING_CLIENTID), publish("a", None, false, None)),
    ]
}

/// Who the device is: client id, users, anonymous, DTLS identity.
#[rustfmt::skip] // one line per case: the vectors read as a table
fn authentication() -> Vec<Case> {
    let tom = login("d", "tom");
    let ps = |q: &[&str]| put("ps/t", q);
    let t = set_value("t", None, 60);
    vec![
        case("a missing client id names the fix", open(), ps(&[]), deny(Code::BAD_REQUEST, MISSING_C), t.clone()),
        case("an empty client id counts as missing", open(), ps(&["c="]), deny(Code::BAD_REQUEST, MISSING_C), t.clone()),
        case("anonymous off refuses a device without a username", closed(), ps(&["c=d"]), deny(Code::UNAUTHORIZED, ANONYMOUS_OFF), t.clone()),
        case("a user with the right password is let in", users(), ps(&["c=d", "u=tom", "p=p=q=="]), tom.clone(), t.clone()),
        case("long username and password names work", users(), ps(&["clientid=d", "username=tom", "password=p=q=="]), tom.clone(), t.clone()),
        case("a password keeps its equals signs", users(), ps(&["c=d", "u=tom", "p=p=q"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), t.clone()),
        case("a wrong password is unauthorized", users(), ps(&["c=d", "u=tom", "p=wrong"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), t.clone()),
        case("a missing password is unauthorized", users(), ps(&["c=d", "u=tom"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), t.clone()),
        case("a hashed password verifies", users(), ps(&["c=d", "u=ann", "p=secret"]), login("d", "ann"), t.clone()),
        case("a hashed password refuses a wrong one", users(), ps(&["c=d", "u=ann", "p=Secret"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), t.clone()),
        case("an unknown user is unauthorized without anonymous", users(), ps(&["c=d", "u=eve", "p=x"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), t.clone()),
        case("an unknown user is anonymous with anonymous on", users_open(), ps(&["c=d", "u=eve", "p=x"]), anon("d"), t.clone()),
        case("a known user with a wrong password stays unauthorized with anonymous on", users_open(), ps(&["c=d", "u=tom", "p=x"]), deny(Code::UNAUTHORIZED, BAD_CREDENTIALS), t.clone()),
        case("no username is anonymous with anonymous on", users_open(), ps(&["c=d"]), anon("d"), t.clone()),
        case("a password without a username is anonymous", users_open(), ps(&["c=d", "p=x"]), anon("d"), t.clone()),
        case("a clientid bound user connects with its client id", users(), ps(&["c=bob-dev", "u=bob", "p=pw"]), login("bob-dev", "bob"), t.clone()),
        case("a clientid bound user is refused another client id", users(), ps(&["c=other", "u=bob", "p=pw"]), deny(Code::UNAUTHORIZED, WRONG_CLIENT_ID), t.clone()),
        case("a psk identity is client id and username", identity(), psk(ps(&[]), "sensor-1"), allow("sensor-1", Some("sensor-1")), t.clone()),
        case("a certificate subject is client id and username", identity(), cert(ps(&[]), "gw-7"), allow("gw-7", Some("gw-7")), t.clone()),
        case("an identity overrides query credentials", identity(), psk(ps(&["c=x", "u=sensor-1", "p=wrong"]), "sensor-1"), allow("sensor-1", Some("sensor-1")), t.clone()),
        case("an identity with a token checks the session as the identity", identity(), psk(put("mqtt/connection", &["c=x", "t=5"]), "sensor-1"), session("sensor-1", "5"), Route::Heartbeat),
        case("an identity is ignored unless configured", closed(), psk(ps(&[]), "sensor-1"), deny(Code::BAD_REQUEST, MISSING_C), t.clone()),
        case("other paths are left to the next rule", closed(), get("other/x", &[]), Auth::Continue, Route::Continue),
        case("well known core lists the resources, with no credentials", closed(), segments(get("", &[]), &[".well-known", "core"]), Auth::Continue, discovery()),
        case("well known core is only read", open(), segments(post("", &[]), &[".well-known", "core"]), Auth::Continue, reject(Code::METHOD_NOT_ALLOWED, "use GET for /.well-known/core")),
        case("other well-known paths are left to the next rule", open(), segments(get("", &[]), &[".well-known", "other"]), Auth::Continue, Route::Continue),
        case("an empty path is left to the next rule", open(), get("", &[]), Auth::Continue, Route::Continue),
    ]
}

/// Which topics a principal may use.
#[rustfmt::skip] // one line per case: the vectors read as a table
fn authorization() -> Vec<Case> {
    use Access::{Publish as Pub, Subscribe as Sub};
    use Authz::{Allow, Continue, Deny};
    let tom = |c: &'static str| put("mqtt/x", &[c, "u=tom", "p=p=q=="]);
    let x = publish("x", None, false, None);
    vec![
        case("a user publishes under its own client id only", users(), tom("c=dev1"), login("dev1", "tom"), x.clone())
            .authorize(&[(Pub, "devices/dev1/temp", Allow), (Pub, "devices/dev1", Allow), (Pub, "devices/dev2/temp", Deny), (Pub, "public/news", Allow), (Pub, "x", Deny)]),
        case("a user subscribes only to filters its patterns cover", users(), tom("c=dev1"), login("dev1", "tom"), x.clone())
            .authorize(&[(Sub, "devices/dev1/#", Allow), (Sub, "devices/dev1/+/temp", Allow), (Sub, "devices/+/temp", Deny), (Sub, "#", Deny), (Sub, "broadcast/+", Allow), (Sub, "broadcast/all", Allow), (Sub, "broadcast/#", Deny), (Sub, "users/tom/inbox", Allow), (Sub, "users/ann/inbox", Deny)]),
        case("a plus client id cannot widen a pattern", users(), tom("c=+"), login("+", "tom"), x.clone())
            .authorize(&[(Sub, "devices/+/temp", Deny), (Sub, "devices/+/#", Deny), (Pub, "devices/dev2/temp", Deny), (Pub, "public/ok", Allow)]),
        case("a hash client id cannot widen a pattern", users(), tom("c=#"), login("#", "tom"), x.clone())
            .authorize(&[(Sub, "devices/#", Deny), (Pub, "devices/dev2", Deny)]),
        case("a client id with a slash cannot reach another device", users(), tom("c=dev2/x"), login("dev2/x", "tom"), x.clone())
            .authorize(&[(Pub, "devices/dev2/x/temp", Deny), (Sub, "devices/dev2/x/#", Deny)]),
        case("a user without lists may do anything", users(), put("mqtt/x", &["c=d", "u=ann", "p=secret"]), login("d", "ann"), x.clone())
            .authorize(&[(Pub, "any/topic", Allow), (Sub, "#", Allow)]),
        case("anonymous devices use the anonymous lists", users_open(), put("mqtt/x", &["c=d9"]), anon("d9"), x.clone())
            .authorize(&[(Pub, "public/d9", Allow), (Pub, "public/d8", Deny), (Sub, "public/d9", Deny), (Sub, "anything", Deny)]),
        case("an unknown user let in as anonymous gets the anonymous lists", users_open(), put("mqtt/x", &["c=d9", "u=eve", "p=x"]), anon("d9"), x.clone())
            .authorize(&[(Pub, "public/d9", Allow), (Pub, "devices/d9/t", Deny)]),
        case("anonymous devices without lists may do anything", open(), put("mqtt/x", &["c=d"]), anon("d"), x.clone())
            .authorize(&[(Pub, "any/topic", Allow), (Sub, "#", Allow)]),
        case("an identity user has the lists of its username", identity(), psk(put("mqtt/x", &[]), "sensor-1"), allow("sensor-1", Some("sensor-1")), x.clone())
            .authorize(&[(Pub, "sensors/sensor-1/t", Allow), (Pub, "sensors/sensor-2/t", Deny), (Sub, "anything", Allow)]),
        case("an identity without a user entry is left to the next rule", identity(), psk(put("mqtt/x", &[]), "ghost"), allow("ghost", Some("ghost")), x)
            .authorize(&[(Pub, "sensors/ghost/t", Continue), (Sub, "#", Continue)]),
    ]
}

/// Configs `init` must refuse: name, config, the start of the error.
#[rustfmt::skip] // one line per case: the vectors read as a table
pub fn refusals() -> Vec<(&'static str, Entries, &'static str)> {
    let user = |extra: &[(&'static str, &str)]| {
        let mut c = config(&[("users.0.username", "tom")]);
        c.extend(config(extra));
        c
    };
    vec![
        ("a misspelt password key suggests password_hash", user(&[("users.0.passwd", "x")]), "users.0.passwd: unknown key; did you mean password_hash?"),
        ("a misspelt top level key suggests the right one", config(&[("anonymos", "true")]), "anonymos: unknown key; did you mean anonymous?"),
        ("both password forms are refused", user(&[("users.0.password", "x"), ("users.0.password_hash", SECRET_HASH)]), "users.0.password: give password_hash or password, not both"),
        ("a user needs a password", user(&[]), "users.0.password_hash: required"),
        ("a user needs a username", config(&[("users.0.password", "x")]), "users.0.username: required"),
        ("a malformed hash is refused", user(&[("users.0.password_hash", "md5$00$00")]), "users.0.password_hash: not a sha256$"),
        ("anonymous must be a boolean", config(&[("anonymous", "yes")]), "anonymous: expected true or false"),
        ("clientid_from_identity must be a boolean", config(&[("clientid_from_identity", "on")]), "clientid_from_identity: expected true or false"),
        ("default max age must be whole seconds", config(&[("default_max_age", "1m")]), "default_max_age: expected whole seconds"),
        ("a malformed pattern is refused", user(&[("users.0.password", "x"), ("users.0.publish.0", "a/#/b")]), "users.0.publish.0: \"a/#/b\" is not a topic filter"),
        ("an unknown placeholder is refused", config(&[("anonymous_subscribe.0", "d/${peer}")]), "anonymous_subscribe.0: \"d/${peer}\": unknown placeholder ${peer}"),
        ("a scalar pattern list other than none is refused", config(&[("anonymous_publish", "a/#")]), "anonymous_publish: expected a list of topic patterns"),
    ]
}
