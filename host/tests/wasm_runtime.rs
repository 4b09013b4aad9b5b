//! The Wasm runtime against hand-written modules (WAT): every hook and verdict decoded to the
//! exact SDK value, every input readable where it should be, and every fault contained by its
//! fail policy or refused at load with a message that names the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice::rules::{Compiled, Engine, Limits, LoadError, WasmRule};
use sluice_sdk::abi::{self, field, hook};
use sluice_sdk::{
    Access, Auth, Authz, Code, Config, Downlink, Identity, MessageType, Method, Principal, Publish, Reject, Request,
    Route, Rule, Transform, Uplink,
};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(None).unwrap())
}

fn compile(wat: &str) -> Compiled {
    engine().compile(&wat::parse_str(wat).unwrap()).unwrap()
}

fn refusal(wat: &str) -> String {
    let err = engine().compile(&wat::parse_str(wat).unwrap()).unwrap_err();
    assert!(matches!(err, LoadError::Wasm { .. }), "{err:?}");
    err.to_string()
}

fn load_with(wat: &str, config: &Config, limits: Limits) -> Result<WasmRule, LoadError> {
    WasmRule::new(engine(), &compile(wat), "test", "1.2.3", config, limits)
}

fn load(wat: &str) -> WasmRule {
    load_with(wat, &Config::default(), Limits::default()).unwrap()
}

/// Builds a rule module: the ABI imports, a memory, the marker, `sluice_init` and the given
/// hooks, with string constants placed in data segments.
#[derive(Default)]
struct Module {
    data: Vec<String>,
    next: u32,
    funcs: Vec<String>,
    init: Option<String>,
}

impl Module {
    fn new() -> Module {
        Module { next: 64, ..Module::default() }
    }

    /// Places `bytes` in memory; returns (ptr, len).
    fn bytes(&mut self, bytes: &[u8]) -> (u32, usize) {
        let at = self.next;
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        self.data.push(format!("(data (i32.const {at}) \"{escaped}\")"));
        self.next += u32::try_from(bytes.len()).unwrap() + 1;
        (at, bytes.len())
    }

    /// An instruction that sets a byte output (and drops the status).
    fn set(&mut self, field: i32, value: &[u8]) -> String {
        let (at, len) = self.bytes(value);
        format!("(drop (call $set (i32.const {field}) (i32.const {at}) (i32.const {len})))\n")
    }

    fn hook(mut self, name: &str, body: &str) -> Module {
        self.funcs
            .push(format!("(func (export \"sluice_{name}\") (result i32) (local $p i32) (local $n i32)\n{body})"));
        self
    }

    fn init(mut self, body: &str) -> Module {
        self.init = Some(body.to_string());
        self
    }

    fn wat(&self) -> String {
        format!(
            r#"(module
  (import "sluice1" "get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "sluice1" "get_i64" (func $get_i64 (param i32 i32) (result i64)))
  (import "sluice1" "set" (func $set (param i32 i32 i32) (result i32)))
  (import "sluice1" "set_i64" (func $set_i64 (param i32 i64) (result i32)))
  (import "sluice1" "config" (func $config (param i32 i32 i32 i32) (result i32)))
  (import "sluice1" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $count (mut i32) (i32.const 0))
  {data}
  (func (export "sluice_abi_v1"))
  (func (export "sluice_init") (result i32) {init})
  {funcs})"#,
            data = self.data.join("\n  "),
            init = self.init.as_deref().unwrap_or("(i32.const 0)"),
            funcs = self.funcs.join("\n  "),
        )
    }

    fn load(&self) -> WasmRule {
        load(&self.wat())
    }
}

/// Writes a hook's outputs into a module; returns the instructions.
type Outputs = Box<dyn FnOnce(&mut Module) -> String>;

fn set_i64(field: i32, value: i64) -> String {
    format!("(drop (call $set_i64 (i32.const {field}) (i64.const {value})))\n")
}

/// A module whose `hook` sets the outputs built by `outputs` and returns `verdict`.
fn verdict(hook: &str, verdict: i32, outputs: impl FnOnce(&mut Module) -> String) -> WasmRule {
    let mut m = Module::new();
    let body = outputs(&mut m);
    m.hook(hook, &format!("{body}(i32.const {verdict})")).load()
}

fn req() -> Request {
    Request {
        method: Method::Post,
        message_type: MessageType::NonConfirmable,
        path: vec!["ps".into(), "dev/1".into()],
        query: vec!["c=dev1".into(), "flag".into()],
        content_format: Some(60),
        accept: Some(50),
        observe: Some(0),
        max_age: None,
        peer: "192.0.2.7:5683".into(),
        identity: Identity {
            psk_identity: Some("psk-id".into()),
            cert_subject: None,
            cert_sans: vec!["san0".into(), "san1".into()],
            cert_fingerprint: Some("ab12".into()),
        },
        payload: vec![0, 159, 255],
    }
}

fn who() -> Principal {
    Principal {
        client_id: "dev1".into(),
        username: Some("tom".into()),
        attributes: vec![("tenant".into(), "acme".into()), ("k".into(), "".into())],
    }
}

fn fail_route() -> Route {
    Route::Reject(Reject::new(Code::INTERNAL_SERVER_ERROR, "rule failed"))
}

// ---------------------------------------------------------------------------------------------
// Verdicts

#[test]
fn authenticate_verdicts_decode_to_the_sdk_values() {
    let r = verdict("authenticate", hook::AUTH_CONTINUE, |_| String::new());
    assert_eq!(r.authenticate(&req()), Auth::Continue);

    let r = verdict("authenticate", hook::AUTH_ALLOW, |m| {
        m.set(field::OUT_CLIENT_ID, b"dev1")
            + &m.set(field::OUT_USERNAME, b"tom")
            + &m.set(field::OUT_ATTRIBUTE, b"tenant\0acme")
            + &m.set(field::OUT_ATTRIBUTE, b"k")
    });
    assert_eq!(r.authenticate(&req()), Auth::Allow(who()));

    let r = verdict("authenticate", hook::AUTH_ALLOW, |m| m.set(field::OUT_CLIENT_ID, b"anon"));
    assert_eq!(r.authenticate(&req()), Auth::Allow(Principal::new("anon")));

    let r = verdict("authenticate", hook::AUTH_SESSION, |m| {
        m.set(field::OUT_CLIENT_ID, b"dev1") + &m.set(field::OUT_TOKEN, b"tok")
    });
    assert_eq!(r.authenticate(&req()), Auth::Session { client_id: "dev1".into(), token: "tok".into() });

    let r = verdict("authenticate", hook::AUTH_DENY, |m| m.set(field::OUT_REASON, b"who are you?"));
    assert_eq!(r.authenticate(&req()), Auth::Deny(Reject::new(Code::UNAUTHORIZED, "who are you?")));

    let r = verdict("authenticate", hook::AUTH_DENY, |_| set_i64(field::OUT_CODE, i64::from(Code::BAD_REQUEST.0)));
    assert_eq!(r.authenticate(&req()), Auth::Deny(Reject::new(Code::BAD_REQUEST, "")));

    // Allow without a client id is not a verdict: the fail policy denies.
    let r = verdict("authenticate", hook::AUTH_ALLOW, |_| String::new());
    assert_eq!(r.authenticate(&req()), Auth::Deny(Reject::new(Code::UNAUTHORIZED, "rule failed")));
    assert_eq!(r.stats().failures, 1);
}

#[test]
fn route_verdicts_decode_to_the_sdk_values() {
    let publish = |m: &mut Module| {
        m.set(field::OUT_TOPIC, b"devices/dev1/t")
            + &set_i64(field::OUT_QOS, 1)
            + &set_i64(field::OUT_RETAIN, 1)
            + &set_i64(field::OUT_EXPIRY, 60)
            + &m.set(field::OUT_USER_PROPERTY, b"a\0b")
            + &m.set(field::OUT_USER_PROPERTY, b"c\0")
    };
    let full = Publish {
        topic: "devices/dev1/t".into(),
        qos: Some(1),
        retain: true,
        expiry: Some(60),
        user_properties: vec![("a".into(), "b".into()), ("c".into(), "".into())],
    };
    let cases: Vec<(i32, Outputs, Route)> = vec![
        (hook::ROUTE_CONTINUE, Box::new(|_| String::new()), Route::Continue),
        (hook::ROUTE_PUBLISH, Box::new(publish), Route::Publish(full.clone())),
        (hook::ROUTE_PUBLISH, Box::new(|m| m.set(field::OUT_TOPIC, b"x")), Route::Publish(Publish::to("x"))),
        (hook::ROUTE_SET_VALUE, Box::new(publish), Route::SetValue(full)),
        (
            hook::ROUTE_SUBSCRIBE,
            Box::new(|m| m.set(field::OUT_TOPIC, b"a/+/#") + &set_i64(field::OUT_QOS, 2)),
            Route::Subscribe { filter: "a/+/#".into(), qos: Some(2) },
        ),
        (
            hook::ROUTE_UNSUBSCRIBE,
            Box::new(|m| m.set(field::OUT_TOPIC, b"a/#")),
            Route::Unsubscribe { filter: "a/#".into() },
        ),
        (hook::ROUTE_READ, Box::new(|m| m.set(field::OUT_TOPIC, b"v/1")), Route::Read { topic: "v/1".into() }),
        (
            hook::ROUTE_OBSERVE_VALUE,
            Box::new(|m| m.set(field::OUT_TOPIC, b"v/1")),
            Route::ObserveValue { topic: "v/1".into(), qos: None },
        ),
        (hook::ROUTE_DELETE, Box::new(|m| m.set(field::OUT_TOPIC, b"v/1")), Route::Delete { topic: "v/1".into() }),
        (hook::ROUTE_CONNECT, Box::new(|_| String::new()), Route::Connect),
        (hook::ROUTE_HEARTBEAT, Box::new(|_| String::new()), Route::Heartbeat),
        (hook::ROUTE_DISCONNECT, Box::new(|_| String::new()), Route::Disconnect),
        (
            hook::ROUTE_RESPOND,
            Box::new(|m| {
                set_i64(field::OUT_CODE, i64::from(Code::CONTENT.0))
                    + &m.set(field::OUT_PAYLOAD, b"\x00pong")
                    + &set_i64(field::OUT_CONTENT_FORMAT, 0)
            }),
            Route::Respond { code: Code::CONTENT, payload: b"\x00pong".to_vec(), content_format: Some(0) },
        ),
        (
            hook::ROUTE_RESPOND,
            Box::new(|_| set_i64(field::OUT_CODE, i64::from(Code::VALID.0))),
            Route::Respond { code: Code::VALID, payload: vec![], content_format: None },
        ),
        (
            hook::ROUTE_REJECT,
            Box::new(|m| set_i64(field::OUT_CODE, i64::from(Code::FORBIDDEN.0)) + &m.set(field::OUT_REASON, b"no")),
            Route::Reject(Reject::new(Code::FORBIDDEN, "no")),
        ),
    ];
    for (v, outputs, expected) in cases {
        let r = verdict("route", v, outputs);
        assert_eq!(r.route(&req(), &who()), expected, "verdict {v}");
        assert_eq!(r.stats().failures, 0);
    }
}

#[test]
fn authorize_verdicts_follow_the_access_input() {
    // Returns ACCESS + 1: publish → allow, subscribe → deny; no client id → continue.
    let body = "(if (i32.lt_s (call $get (i32.const 30) (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 1))
                  (then (return (i32.const 0))))
                (i32.add (i32.wrap_i64 (call $get_i64 (i32.const 40) (i32.const 0))) (i32.const 1))";
    let r = Module::new().hook("authorize", body).load();
    assert_eq!(r.authorize(&who(), Access::Publish, "t"), Authz::Allow);
    assert_eq!(r.authorize(&who(), Access::Subscribe, "t"), Authz::Deny);
    assert_eq!(r.authorize(&Principal::default(), Access::Publish, "t"), Authz::Continue);
    let r = verdict("authorize", 7, |_| String::new());
    assert_eq!(r.authorize(&who(), Access::Publish, "t"), Authz::Deny);
    assert_eq!(r.stats().failures, 1);
}

#[test]
fn transform_verdicts_decode_to_the_sdk_values() {
    let up = Uplink { topic: "t".into(), payload: b"x".to_vec(), content_format: Some(50) };
    let down = Downlink { topic: "t".into(), payload: b"x".to_vec(), content_type: None, user_properties: vec![] };
    for hook in ["uplink", "downlink"] {
        let run = |r: &WasmRule| if hook == "uplink" { r.uplink(&up, &who()) } else { r.downlink(&down, &who()) };
        assert_eq!(run(&verdict(hook, hook::TRANSFORM_CONTINUE, |_| String::new())), Transform::Continue);
        assert_eq!(run(&verdict(hook, hook::TRANSFORM_DROP, |_| String::new())), Transform::Drop);
        let r = verdict(hook, hook::TRANSFORM_REPLACE, |m| {
            m.set(field::OUT_PAYLOAD, b"{\"v\":1}") + &set_i64(field::OUT_CONTENT_FORMAT, 50)
        });
        assert_eq!(run(&r), Transform::Replace { payload: b"{\"v\":1}".to_vec(), content_format: Some(50) });
        let r = verdict(hook, hook::TRANSFORM_REPLACE, |m| m.set(field::OUT_PAYLOAD, b""));
        assert_eq!(run(&r), Transform::Replace { payload: vec![], content_format: None });
        let r = verdict(hook, hook::TRANSFORM_REJECT, |m| {
            set_i64(field::OUT_CODE, i64::from(Code::UNSUPPORTED_CONTENT_FORMAT.0))
                + &m.set(field::OUT_REASON, b"cbor only")
        });
        assert_eq!(run(&r), Transform::Reject(Reject::new(Code::UNSUPPORTED_CONTENT_FORMAT, "cbor only")));
        // Replace without a payload is not a verdict: the fail policy (uplink: 5.00, downlink: drop).
        let r = verdict(hook, hook::TRANSFORM_REPLACE, |_| String::new());
        let policy = if hook == "uplink" { sluice::rules::uplink_failed() } else { Transform::Drop };
        assert_eq!(run(&r), policy);
        assert_eq!(r.stats(), sluice::rules::RuleStats { calls: 1, failures: 1, instances: 1, ..Default::default() });
    }
}

#[test]
fn hooks_the_module_does_not_export_continue() {
    let r = Module::new().load();
    assert!(r.hooks().is_empty());
    assert_eq!(r.authenticate(&req()), Auth::Continue);
    assert_eq!(r.route(&req(), &who()), Route::Continue);
    assert_eq!(r.authorize(&who(), Access::Publish, "t"), Authz::Continue);
    assert_eq!(r.uplink(&Uplink::default(), &who()), Transform::Continue);
    assert_eq!(r.downlink(&Downlink::default(), &who()), Transform::Continue);
    assert_eq!(r.stats().calls, 0);
    let r = verdict("route", 0, |_| String::new());
    assert_eq!(r.hooks(), ["route"]);
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// One input read by a probe.
#[derive(Clone, Copy)]
enum P {
    /// `get(field, index)` with room for 1000 bytes.
    Bytes(i32, i32),
    /// `get(field, index)` with cap 0: the length only.
    Len(i32, i32),
    /// `get_i64(field, 0)`.
    Int(i32),
    /// `config(key)`.
    Config(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Bytes(Vec<u8>),
    Status(i32),
    Int(i64),
}

fn b(s: &str) -> Got {
    Got::Bytes(s.as_bytes().to_vec())
}

/// A module whose `hook` reads every probe into a buffer and answers it as its payload
/// (route: respond 2.05; uplink/downlink: replace).
fn probe(hook: &str, probes: &[P]) -> WasmRule {
    let mut m = Module::new();
    let mut body = String::from("(local.set $p (i32.const 8192))\n");
    for p in probes {
        match *p {
            P::Bytes(f, i) | P::Len(f, i) => {
                let cap = if matches!(p, P::Bytes(..)) { 1000 } else { 0 };
                body += &format!(
                    "(local.set $n (call $get (i32.const {f}) (i32.const {i}) (i32.add (local.get $p) (i32.const 4)) (i32.const {cap})))
                     (i32.store (local.get $p) (local.get $n))
                     (local.set $p (i32.add (local.get $p) (i32.const 4)))
                     (if (i32.gt_s (local.get $n) (i32.const 0)) (then (if (i32.gt_s (i32.const {cap}) (i32.const 0))
                       (then (local.set $p (i32.add (local.get $p) (local.get $n)))))))\n"
                );
            }
            P::Int(f) => {
                body += &format!(
                    "(i64.store (local.get $p) (call $get_i64 (i32.const {f}) (i32.const 0)))
                     (local.set $p (i32.add (local.get $p) (i32.const 8)))\n"
                );
            }
            P::Config(key) => {
                let (at, len) = m.bytes(key.as_bytes());
                body += &format!(
                    "(local.set $n (call $config (i32.const {at}) (i32.const {len}) (i32.add (local.get $p) (i32.const 4)) (i32.const 1000)))
                     (i32.store (local.get $p) (local.get $n))
                     (local.set $p (i32.add (local.get $p) (i32.add (i32.const 4)
                       (select (local.get $n) (i32.const 0) (i32.gt_s (local.get $n) (i32.const 0))))))\n"
                );
            }
        }
    }
    body += "(drop (call $set (i32.const 111) (i32.const 8192) (i32.sub (local.get $p) (i32.const 8192))))\n";
    let verdict = if hook == "route" {
        body += &set_i64(field::OUT_CODE, i64::from(Code::CONTENT.0));
        hook::ROUTE_RESPOND
    } else {
        hook::TRANSFORM_REPLACE
    };
    let wat = m.hook(hook, &format!("{body}(i32.const {verdict})")).wat();
    let config = Config::from_entries(vec![("a.b".into(), "c".into()), ("list.0".into(), "x".into())]);
    load_with(&wat, &config, Limits::default()).unwrap()
}

/// Splits a probe's payload back into its readings.
fn readings(payload: &[u8], probes: &[P]) -> Vec<Got> {
    let mut at = 0;
    let mut take = |n: usize| {
        let slice = payload[at..at + n].to_vec();
        at += n;
        slice
    };
    probes
        .iter()
        .map(|p| match p {
            P::Int(_) => Got::Int(i64::from_le_bytes(take(8).try_into().unwrap())),
            P::Len(..) => Got::Status(i32::from_le_bytes(take(4).try_into().unwrap())),
            P::Bytes(..) | P::Config(_) => {
                let n = i32::from_le_bytes(take(4).try_into().unwrap());
                if n < 0 { Got::Status(n) } else { Got::Bytes(take(usize::try_from(n).unwrap())) }
            }
        })
        .collect()
}

fn respond_payload(route: Route) -> Vec<u8> {
    match route {
        Route::Respond { code, payload, .. } if code == Code::CONTENT => payload,
        other => panic!("not a probe answer: {other:?}"),
    }
}

#[test]
fn route_reads_every_request_and_principal_field() {
    use field::*;
    let probes = [
        P::Int(METHOD),
        P::Int(MESSAGE_TYPE),
        P::Bytes(PATH_SEGMENT, 0),
        P::Bytes(PATH_SEGMENT, 1),
        P::Bytes(PATH_SEGMENT, 2),
        P::Bytes(QUERY, 0),
        P::Bytes(QUERY, 1),
        P::Int(CONTENT_FORMAT),
        P::Int(ACCEPT),
        P::Int(OBSERVE),
        P::Int(MAX_AGE),
        P::Bytes(PEER, 0),
        P::Bytes(PAYLOAD, 0),
        P::Bytes(PSK_IDENTITY, 0),
        P::Bytes(CERT_SUBJECT, 0),
        P::Bytes(CERT_SAN, 1),
        P::Bytes(CERT_FINGERPRINT, 0),
        P::Bytes(CLIENT_ID, 0),
        P::Bytes(USERNAME, 0),
        P::Bytes(ATTRIBUTE, 0),
        P::Bytes(ATTRIBUTE, 1),
        P::Bytes(ATTRIBUTE, 2),
        P::Bytes(CONFIG_ENTRY, 0),
        P::Bytes(CONFIG_ENTRY, 1),
        P::Bytes(CONFIG_ENTRY, 2),
        P::Config("a.b"),
        P::Config("nope"),
        P::Len(PEER, 0),
        P::Bytes(TOPIC, 0),
        P::Int(ACCESS),
        P::Bytes(PATH_SEGMENT, -1),
        P::Bytes(999, 0),
        P::Int(METHOD),
    ];
    let r = probe("route", &probes);
    let got = readings(&respond_payload(r.route(&req(), &who())), &probes);
    let expected = vec![
        Got::Int(2),
        Got::Int(1),
        b("ps"),
        b("dev/1"),
        Got::Status(abi::ABSENT),
        b("c=dev1"),
        b("flag"),
        Got::Int(60),
        Got::Int(50),
        Got::Int(0),
        Got::Int(abi::ABSENT_I64),
        b("192.0.2.7:5683"),
        Got::Bytes(vec![0, 159, 255]),
        b("psk-id"),
        Got::Status(abi::ABSENT),
        b("san1"),
        b("ab12"),
        b("dev1"),
        b("tom"),
        b("tenant\0acme"),
        b("k\0"),
        Got::Status(abi::ABSENT),
        b("a.b\0c"),
        b("list.0\0x"),
        Got::Status(abi::ABSENT),
        b("c"),
        Got::Status(abi::ABSENT),
        Got::Status(14),
        Got::Status(abi::UNAVAILABLE),
        Got::Int(abi::ABSENT_I64),
        Got::Status(abi::ABSENT),
        Got::Status(abi::UNAVAILABLE),
        Got::Int(2),
    ];
    assert_eq!(got, expected);
    // A second call sees its own request, not the first one's.
    let other = Request { path: vec!["x".into()], ..Request::default() };
    let got = readings(&respond_payload(r.route(&other, &Principal::new("d2"))), &probes);
    assert_eq!(got[2], b("x"));
    assert_eq!(got[3], Got::Status(abi::ABSENT));
    assert_eq!(got[17], b("d2"));
    assert_eq!(got[18], Got::Status(abi::ABSENT));
}

#[test]
fn payload_hooks_read_their_message_and_not_the_request() {
    use field::*;
    let probes = [
        P::Bytes(TOPIC, 0),
        P::Bytes(PAYLOAD, 0),
        P::Int(CONTENT_FORMAT),
        P::Bytes(CONTENT_TYPE, 0),
        P::Bytes(USER_PROPERTY, 0),
        P::Bytes(USER_PROPERTY, 1),
        P::Bytes(CLIENT_ID, 0),
        P::Bytes(PATH_SEGMENT, 0),
        P::Int(METHOD),
        P::Int(NOW_MS),
    ];
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let up = Uplink { topic: "up/t".into(), payload: b"raw".to_vec(), content_format: Some(60) };
    let Transform::Replace { payload, .. } = probe("uplink", &probes).uplink(&up, &who()) else { panic!() };
    let got = readings(&payload, &probes);
    let Got::Int(now) = got[9] else { panic!() };
    assert!(now >= before && now < before + 10_000, "{now} vs {before}");
    assert_eq!(
        got[..9],
        [
            b("up/t"),
            b("raw"),
            Got::Int(60),
            Got::Status(abi::UNAVAILABLE),
            Got::Status(abi::UNAVAILABLE),
            Got::Status(abi::UNAVAILABLE),
            b("dev1"),
            Got::Status(abi::UNAVAILABLE),
            Got::Int(abi::ABSENT_I64),
        ]
    );
    let down = Downlink {
        topic: "down/t".into(),
        payload: b"{}".to_vec(),
        content_type: Some("application/json".into()),
        user_properties: vec![("a".into(), "1".into())],
    };
    let Transform::Replace { payload, .. } = probe("downlink", &probes).downlink(&down, &who()) else { panic!() };
    let got = readings(&payload, &probes);
    assert_eq!(
        got[..9],
        [
            b("down/t"),
            b("{}"),
            Got::Int(abi::ABSENT_I64),
            b("application/json"),
            b("a\x001"),
            Got::Status(abi::ABSENT),
            b("dev1"),
            Got::Status(abi::UNAVAILABLE),
            Got::Int(abi::ABSENT_I64),
        ]
    );
}

#[test]
fn authenticate_reads_the_request_but_not_a_principal() {
    // Allow as the first path segment, username = the client id field (absent here).
    let body = "(local.set $n (call $get (i32.const 3) (i32.const 0) (i32.const 8192) (i32.const 100)))
                (drop (call $set (i32.const 100) (i32.const 8192) (local.get $n)))
                (local.set $n (call $get (i32.const 30) (i32.const 0) (i32.const 8192) (i32.const 100)))
                (if (i32.ne (local.get $n) (i32.const -2)) (then (return (i32.const -1))))
                (i32.const 1)";
    let r = Module::new().hook("authenticate", body).load();
    assert_eq!(r.authenticate(&req()), Auth::Allow(Principal::new("ps")));
}

#[test]
fn a_short_buffer_gets_the_full_length_and_a_prefix() {
    let body = "(local.set $n (call $get (i32.const 9) (i32.const 0) (i32.const 8192) (i32.const 4)))
                (drop (call $set (i32.const 104) (i32.const 8192) (i32.const 4)))
                (drop (call $set_i64 (i32.const 107) (i64.extend_i32_s (local.get $n))))
                (i32.const 1)";
    let r = Module::new().hook("route", body).load();
    let Route::Publish(p) = r.route(&req(), &who()) else { panic!() };
    assert_eq!((p.topic.as_str(), p.expiry), ("192.", Some(14)));
}

// ---------------------------------------------------------------------------------------------
// Faults

const FAULT: &str = include_str!("wasm/fault.wat");

fn path(first: &str) -> Request {
    Request { path: vec![first.into()], ..Request::default() }
}

fn published(route: Route) -> String {
    match route {
        Route::Publish(p) => p.topic,
        other => panic!("not a publish: {other:?}"),
    }
}

#[test]
fn a_trap_is_answered_by_the_fail_policy_and_the_next_call_works() {
    let r = load(FAULT);
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
    assert_eq!(r.route(&path("trap"), &who()), fail_route());
    // The trapped instance was replaced: its counter starts again.
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
    let up = Uplink { payload: b"trap".to_vec(), ..Uplink::default() };
    assert_eq!(r.uplink(&up, &who()), sluice::rules::uplink_failed());
    assert_eq!(r.uplink(&Uplink::default(), &who()), Transform::Continue);
    let stats = r.stats();
    assert_eq!((stats.calls, stats.traps, stats.timeouts, stats.failures), (5, 2, 0, 2));
    assert_eq!(stats.instances, 3);
}

#[test]
fn an_infinite_loop_times_out_and_the_next_call_works() {
    let limits = Limits { timeout: Duration::from_millis(20), ..Limits::default() };
    let r = load_with(FAULT, &Config::default(), limits).unwrap();
    let start = Instant::now();
    assert_eq!(r.route(&path("loop"), &who()), fail_route());
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(19) && took < Duration::from_secs(30), "{took:?}");
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
    let stats = r.stats();
    assert_eq!((stats.timeouts, stats.traps, stats.failures), (1, 0, 1));
}

#[test]
fn a_memory_bomb_is_stopped_by_the_cap() {
    let limits = Limits { memory_bytes: 4 << 20, ..Limits::default() };
    let r = load_with(FAULT, &Config::default(), limits).unwrap();
    assert_eq!(r.route(&path("memory"), &who()), fail_route());
    assert_eq!(r.stats().traps, 1);
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
}

#[test]
fn out_of_bounds_pointers_trap_into_the_fail_policy() {
    let r = load(FAULT);
    assert_eq!(r.route(&path("oob"), &who()), fail_route());
    assert_eq!(r.route(&path("OOB"), &who()), fail_route());
    assert_eq!(r.stats().traps, 2);
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
}

#[test]
fn invalid_outputs_and_verdicts_are_answered_by_the_fail_policy() {
    let r = load(FAULT);
    for first in ["wildcard", "qos3", "utf8", "huge", "negative", "x-unknown-verdict", "publish-without-topic"] {
        assert_eq!(r.route(&path(first), &who()), fail_route(), "{first}");
    }
    let stats = r.stats();
    assert_eq!((stats.failures, stats.traps, stats.timeouts), (7, 0, 0));
    // None of these harmed the instance.
    assert_eq!(stats.instances, 1);
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
    assert_eq!(r.route(&path("zzz"), &who()), Route::Continue);
}

#[test]
fn instances_are_recycled_after_n_calls() {
    let limits = Limits { recycle_after_calls: 3, ..Limits::default() };
    let r = load_with(FAULT, &Config::default(), limits).unwrap();
    let topics: Vec<String> = (0..7).map(|_| published(r.route(&path("c"), &who()))).collect();
    assert_eq!(topics, ["c1", "c2", "c3", "c1", "c2", "c3", "c1"]);
    assert_eq!(r.stats().instances, 3);
}

#[test]
fn instances_are_recycled_when_memory_grows_past_the_threshold() {
    // 2 pages at start; each "grow" call adds one: above 3 pages the instance is replaced.
    let limits = Limits { memory_recycle_bytes: 3 * 65536, ..Limits::default() };
    let r = load_with(FAULT, &Config::default(), limits).unwrap();
    let topics: Vec<String> = (0..4).map(|_| published(r.route(&path("grow"), &who()))).collect();
    assert_eq!(topics, ["c1", "c2", "c1", "c2"]);
    assert_eq!(r.stats().instances, 2);
}

#[test]
fn one_rule_serves_many_threads_with_an_instance_each() {
    let r = Arc::new(load(FAULT));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let want = format!("c{}", i % 9 + 1);
                    if i % 9 == 0 && i > 0 {
                        // Recycle by trapping, so the counter (one digit) restarts.
                        assert_eq!(r.route(&path("trap"), &who()), fail_route());
                    }
                    assert_eq!(published(r.route(&path("c"), &who())), want);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = r.stats();
    assert_eq!(stats.calls, 4 * (200 + 22));
    assert_eq!(stats.traps, 4 * 22);
    assert_eq!(stats.instances, 4 * 23);
}

// ---------------------------------------------------------------------------------------------
// Loading

#[test]
fn init_reads_the_config_and_may_refuse_with_a_reason() {
    let mut m = Module::new();
    let (key, len) = m.bytes(b"token");
    let refuse = m.set(field::OUT_REASON, b"token: missing; set config.token");
    let init = format!(
        "(if (i32.lt_s (call $config (i32.const {key}) (i32.const {len}) (i32.const 0) (i32.const 0)) (i32.const 0))
           (then {refuse} (return (i32.const 1))))
         (i32.const 0)"
    );
    let wat = m.init(&init).hook("route", "(i32.const 0)").wat();
    let err = load_with(&wat, &Config::default(), Limits::default()).unwrap_err();
    assert!(
        matches!(&err, LoadError::Config { rule, reason } if rule == "test 1.2.3" && reason == "token: missing; set config.token"),
        "{err:?}"
    );
    let config = Config::from_entries(vec![("token".into(), "t".into())]);
    let r = load_with(&wat, &config, Limits::default()).unwrap();
    assert_eq!(r.route(&req(), &who()), Route::Continue);
}

#[test]
fn an_init_that_traps_or_loops_is_refused() {
    let wat = Module::new().init("unreachable").wat();
    let err = load_with(&wat, &Config::default(), Limits::default()).unwrap_err().to_string();
    assert!(err.contains("sluice_init failed") && err.contains("unreachable"), "{err}");
    let wat = Module::new().init("(loop $l (br $l)) (i32.const 0)").wat();
    let limits = Limits { timeout: Duration::from_millis(5), ..Limits::default() };
    let err = load_with(&wat, &Config::default(), limits).unwrap_err().to_string();
    assert!(err.contains("did not finish within 5ms"), "{err}");
}

#[test]
fn assemblyscript_env_imports_link_and_abort_reports_its_message() {
    let err = load_with(include_str!("wasm/abort.wat"), &Config::default(), Limits::default()).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("the rule aborted: boom (at a.ts:7:3)"), "{err}");
}

#[test]
fn a_module_needing_more_memory_than_its_limit_is_refused() {
    let wat = FAULT.replace("(memory (export \"memory\") 2)", "(memory (export \"memory\") 300)");
    let err = load_with(&wat, &Config::default(), Limits::default()).unwrap_err().to_string();
    assert!(err.contains("limits.memory"), "{err}");
    eprintln!("{err}");
}

#[test]
fn modules_outside_the_abi_are_refused_with_the_fix() {
    let cases = [
        ("wrong_abi.wat", include_str!("wasm/wrong_abi.wat"), "built for ABI v2; this gateway speaks ABI v1"),
        ("no_marker.wat", include_str!("wasm/no_marker.wat"), "no marker export sluice_abi_v1: not a Sluice rule"),
        ("no_memory.wat", include_str!("wasm/no_memory.wat"), "no memory export named \"memory\""),
        ("no_init.wat", include_str!("wasm/no_init.wat"), "no export sluice_init"),
        (
            "bad_hook.wat",
            include_str!("wasm/bad_hook.wat"),
            "exports sluice_route as (i32) -> i32; every hook is () -> i32",
        ),
        ("wasi.wat", include_str!("wasm/wasi.wat"), "build for wasm32-unknown-unknown, not wasm32-wasip1"),
        ("env_foo.wat", include_str!("wasm/env_foo.wat"), "imports env.foo: rules may only import sluice1.*"),
        ("sluice_nope.wat", include_str!("wasm/sluice_nope.wat"), "imports sluice1.nope, which ABI v1 does not define"),
        (
            "bad_import_type.wat",
            include_str!("wasm/bad_import_type.wat"),
            "imports sluice1.get as (i32) -> i32, but ABI v1 defines (i32, i32, i32, i32) -> i32",
        ),
    ];
    for (file, wat, expected) in cases {
        let err = refusal(wat);
        assert!(err.contains(expected), "{file}: {err}");
        eprintln!("{file}: {err}");
    }
    let err = engine().compile(b"not wasm").unwrap_err().to_string();
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
}

#[test]
fn compiled_modules_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = wat::parse_str(FAULT).unwrap();
    let first = Engine::new(Some(dir.path().to_path_buf())).unwrap();
    let compiled = first.compile(&wasm).unwrap();
    assert!(!compiled.from_cache());
    let file = first.cache_path(compiled.sha256()).unwrap();
    assert!(file.is_file(), "{file:?}");
    assert_eq!(compiled.hooks(), ["route", "uplink"]);

    // A second engine (a restart) loads the code from the file.
    let second = Engine::new(Some(dir.path().to_path_buf())).unwrap();
    let cached = second.compile(&wasm).unwrap();
    assert!(cached.from_cache());
    let r = WasmRule::new(&second, &cached, "fault", "1", &Config::default(), Limits::default()).unwrap();
    assert_eq!(published(r.route(&path("c"), &who())), "c1");

    // A damaged entry is recompiled and replaced.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let third = Engine::new(Some(dir.path().to_path_buf())).unwrap();
    let recompiled = third.compile(&wasm).unwrap();
    assert!(!recompiled.from_cache());
    let r = WasmRule::new(&third, &recompiled, "fault", "1", &Config::default(), Limits::default()).unwrap();
    assert_eq!(published(r.route(&path("c"), &who())), "c1");
    assert!(Engine::new(Some(dir.path().to_path_buf())).unwrap().compile(&wasm).unwrap().from_cache());
    // No temporary files are left behind.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_rule_compiled_by_another_engine_is_refused() {
    let other = Engine::new(None).unwrap();
    let compiled = other.compile(&wat::parse_str(FAULT).unwrap()).unwrap();
    let err = WasmRule::new(engine(), &compiled, "x", "1", &Config::default(), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("another engine"), "{err}");
}

#[test]
#[ignore = "a measurement: cargo test --release -p sluice --test wasm_runtime -- --ignored --nocapture"]
fn warm_call_cost() {
    let r = load(FAULT);
    let req = path("c");
    let who = who();
    for _ in 0..1000 {
        r.route(&req, &who);
    }
    let n = 100_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(r.route(&req, &who));
    }
    let per_call = start.elapsed() / n;
    eprintln!("route on a warm instance (2 gets, a log, a set, the decode): {per_call:?} per call");
    assert!(per_call < Duration::from_millis(1));
    let r = verdict("authorize", hook::AUTHZ_ALLOW, |_| String::new());
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(r.authorize(&who, Access::Publish, "a/b"));
    }
    eprintln!("authorize returning a constant: {:?} per call", start.elapsed() / n);
}

#[test]
fn an_explicit_start_function_runs_before_init() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (global $ready (mut i32) (i32.const 0))
      (func (export "sluice_abi_v1"))
      (func (export "_initialize") (global.set $ready (i32.const 1)))
      (func (export "sluice_init") (result i32) (i32.eqz (global.get $ready)))
      (func (export "sluice_authorize") (result i32) (i32.const 1)))"#;
    let r = load(wat);
    assert_eq!(r.authorize(&who(), Access::Publish, "t"), Authz::Allow);
}

/// A log sink for `tracing`.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[test]
fn failures_and_rule_logs_are_logged_with_the_rule_and_rate_limited() {
    let r = load(FAULT);
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..30 {
            assert_eq!(r.route(&path("trap"), &who()), fail_route());
        }
        for _ in 0..270 {
            r.route(&path("zzz"), &who());
        }
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("Rule failed")).collect();
    assert!((10..=20).contains(&failures.len()), "{}", failures.len());
    let line = failures[0];
    for part in ["WARN", "rule=\"test\"", "version=\"1.2.3\"", "hook=\"route\"", "unreachable"] {
        assert!(line.contains(part), "{part} in {line}");
    }
    let rule_lines = text.lines().filter(|l| l.contains("route called")).count();
    assert!((100..=200).contains(&rule_lines), "{rule_lines}");
    assert_eq!(r.stats().traps, 30);
}
