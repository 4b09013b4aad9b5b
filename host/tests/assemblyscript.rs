//! AssemblyScript rules through the real Wasm runtime (`sluice::rules::{Engine, WasmRule}`).
//!
//! * `hooks`: tests/rules/fault-as/build/hooks.raw.wasm implements every hook and answers every
//!   verdict of `@sluice/sdk` on request, so each encoding is checked against the exact
//!   `sluice_sdk` value the host decodes.
//! * `fault-as`: each fault (trap, infinite loop, memory bomb, out-of-bounds pointer, oversized
//!   output, wildcard topic) is contained with its hook's fail policy, and the next `ok` request
//!   is still answered.
//! * `enrich-as`: the example rule, hook by hook and through its own vectors.
//! * `abi.ts` mirrors `sluice-abi` number for number.
//!
//! The modules are built by scripts/build-rules.sh (`sluice rule build`, into target/rules/; the
//! fault-as build also writes build/hooks.raw.wasm); `npm run asbuild` in a project writes the
//! bare module to its build/ folder, used when it is newer than the package.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use sluice::rules::source::RuleSource;
use sluice::rules::{Engine, Limits, LoadError, Package, WasmRule, run_package_vectors};
use sluice_sdk::{
    Access, Auth, Authz, Code, Config, Downlink, Identity, MessageType, Method, Principal, Publish, Reject, Request,
    Route, Rule, Transform, Uplink,
};

static ENGINE: LazyLock<Engine> = LazyLock::new(|| Engine::new(None).expect("engine"));

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The module: target/rules/NAME.wasm (a package) or the project's bare build output, whichever
/// is newer (so that a stale package does not hide a fresh `npm run asbuild`).
fn module(name: &str, project: &str, raw: &str) -> Vec<u8> {
    let package = repo().join("target/rules").join(format!("{name}.wasm"));
    let raw = repo().join(project).join("build").join(raw);
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest = [&package, &raw].into_iter().filter_map(|p| Some((modified(p)?, p))).max_by_key(|(t, _)| *t);
    match newest.map(|(_, p)| std::fs::read(p)) {
        Some(Ok(bytes)) => bytes,
        _ => panic!(
            "{} and {} are missing: run scripts/build-rules.sh first (or `npm install && npm run asbuild` in {project})",
            package.display(),
            raw.display()
        ),
    }
}

fn config(entries: &[(&str, &str)]) -> Config {
    Config::from_entries(entries.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect())
}

fn load(wasm: &[u8], name: &str, entries: &[(&str, &str)]) -> Result<WasmRule, LoadError> {
    let compiled = ENGINE.compile(wasm)?;
    WasmRule::new(&ENGINE, &compiled, name, "0.1.0", &config(entries), Limits::default())
}

fn hooks() -> WasmRule {
    let wasm = module("hooks-as", "tests/rules/fault-as", "hooks.raw.wasm");
    load(&wasm, "hooks-as", &[("greeting", "hi"), ("items.0", "a"), ("items.1", "b"), ("n", "7"), ("flag", "true")])
        .expect("hooks loads")
}

fn fault() -> WasmRule {
    load(&module("fault-as", "tests/rules/fault-as", "rule.raw.wasm"), "fault-as", &[]).expect("fault-as loads")
}

fn enrich(entries: &[(&str, &str)]) -> WasmRule {
    load(&module("enrich-as", "examples/enrich-as", "rule.raw.wasm"), "enrich-as", entries).expect("enrich-as loads")
}

fn path(p: &str) -> Vec<String> {
    p.split('/').map(str::to_owned).collect()
}

fn get(p: &str) -> Request {
    Request { path: path(p), ..Request::default() }
}

fn who(client_id: &str) -> Principal {
    Principal::new(client_id)
}

fn respond_text(route: &Route) -> String {
    match route {
        Route::Respond { payload, .. } => String::from_utf8_lossy(payload).into_owned(),
        other => panic!("expected a respond, got {other:?}"),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

#[test]
fn hooks_module_exports_every_hook() {
    let rule = hooks();
    for hook in ["authenticate", "route", "authorize", "uplink", "downlink"] {
        assert!(rule.hooks().contains(&hook), "{hook} missing from {:?}", rule.hooks());
    }
}

#[test]
fn every_auth_verdict_decodes_to_the_sdk_value() {
    let rule = hooks();
    let auth = |v: &str| rule.authenticate(&Request { query: vec![format!("v={v}")], ..get("auth") });
    assert_eq!(auth("continue"), Auth::Continue);
    assert_eq!(
        auth("allow"),
        Auth::Allow(Principal {
            client_id: "dev1".into(),
            username: Some("user1".into()),
            attributes: pairs(&[("tenant", "acme"), ("tier", "gold")]),
        })
    );
    assert_eq!(auth("allow-bare"), Auth::Allow(Principal::new("dev2")));
    assert_eq!(auth("session"), Auth::Session { client_id: "dev3".into(), token: "tok3".into() });
    assert_eq!(auth("deny"), Auth::Deny(Reject::new(Code::FORBIDDEN, "denied by hooks")));
    assert_eq!(auth("deny-default"), Auth::Deny(Reject::new(Code::UNAUTHORIZED, "")));
    assert_eq!(rule.authenticate(&get("other")), Auth::Continue);
}

#[test]
fn the_request_reaches_the_rule_field_by_field() {
    let rule = hooks();
    let long = "x".repeat(300);
    let req = Request {
        method: Method::Post,
        message_type: MessageType::NonConfirmable,
        path: vec!["auth".into(), "a/b".into()],
        query: vec!["v=echo".into(), "x".into()],
        content_format: Some(50),
        accept: Some(60),
        observe: Some(0),
        max_age: Some(30),
        peer: "127.0.0.1:5683".into(),
        identity: Identity {
            psk_identity: Some("psk1".into()),
            cert_subject: Some("cn".into()),
            cert_sans: vec!["s1".into(), "s2".into()],
            cert_fingerprint: Some("ab".into()),
        },
        payload: format!("{long}é").into_bytes(),
    };
    let expected = format!("2|1|auth/a/b|v=echo&x|50|60|0|30|127.0.0.1:5683|psk1|cn|s1,s2|ab|{long}é");
    assert_eq!(rule.authenticate(&req), Auth::Allow(Principal::new(expected)));
    // Absent fields stay absent.
    assert_eq!(respond_text(&rule.route(&get("echo"), &who("d"))), "1|0|echo||-|-|-|-||-|-||-|");
}

#[test]
fn every_route_verdict_decodes_to_the_sdk_value() {
    let rule = hooks();
    let route = |p: &str| rule.route(&get(p), &who("dev1"));
    assert_eq!(
        route("publish"),
        Route::Publish(Publish {
            topic: "p/dev1".into(),
            qos: Some(1),
            retain: true,
            expiry: Some(60),
            user_properties: pairs(&[("k", "v"), ("k2", "")]),
        })
    );
    assert_eq!(route("publish-default"), Route::Publish(Publish::to("p/default")));
    assert_eq!(
        route("set"),
        Route::SetValue(Publish { topic: "v/x".into(), qos: Some(2), expiry: Some(30), ..Publish::default() })
    );
    assert_eq!(route("sub"), Route::Subscribe { filter: "s/+/x".into(), qos: Some(1) });
    assert_eq!(route("sub-default"), Route::Subscribe { filter: "s/#".into(), qos: None });
    assert_eq!(route("unsub"), Route::Unsubscribe { filter: "s/#".into() });
    assert_eq!(route("read"), Route::Read { topic: "r/x".into() });
    assert_eq!(route("observe"), Route::ObserveValue { topic: "o/x".into(), qos: Some(0) });
    assert_eq!(route("observe-default"), Route::ObserveValue { topic: "o/y".into(), qos: None });
    assert_eq!(route("delete"), Route::Delete { topic: "d/x".into() });
    assert_eq!(route("connect"), Route::Connect);
    assert_eq!(route("heartbeat"), Route::Heartbeat);
    assert_eq!(route("disconnect"), Route::Disconnect);
    assert_eq!(
        route("respond"),
        Route::Respond { code: Code::CONTENT, payload: b"hello".to_vec(), content_format: Some(0) }
    );
    assert_eq!(route("respond-empty"), Route::Respond { code: Code::VALID, payload: Vec::new(), content_format: None });
    assert_eq!(route("reject"), Route::Reject(Reject::new(Code::NOT_FOUND, "no such thing")));
    assert_eq!(route("nothing"), Route::Continue);
}

#[test]
fn the_principal_and_the_config_reach_the_rule() {
    let rule = hooks();
    let full = Principal {
        client_id: "dev1".into(),
        username: Some("u".into()),
        attributes: pairs(&[("tenant", "acme"), ("flag", "")]),
    };
    assert_eq!(respond_text(&rule.route(&get("who"), &full)), "dev1|u|tenant=acme,flag=");
    assert_eq!(respond_text(&rule.route(&get("who"), &who("dev2"))), "dev2|-|");
    // config: get, the `config` import, list length, int, bool.
    assert_eq!(respond_text(&rule.route(&get("config"), &who("d"))), "hi|hi|2|7|true");
}

#[test]
fn init_refusal_carries_the_rules_reason() {
    let wasm = module("hooks-as", "tests/rules/fault-as", "hooks.raw.wasm");
    match load(&wasm, "hooks-as", &[("refuse", "true")]) {
        Err(LoadError::Config { reason, .. }) => assert!(reason.contains("refuse: told to refuse"), "{reason}"),
        other => panic!("expected a config refusal, got {other:?}"),
    }
    match load(&wasm, "hooks-as", &[("refuse", "maybe")]) {
        Err(LoadError::Config { reason, .. }) => assert!(reason.contains("expected true or false"), "{reason}"),
        other => panic!("expected a config refusal, got {other:?}"),
    }
}

#[test]
fn every_authz_verdict_decodes_to_the_sdk_value() {
    let rule = hooks();
    let me = who("dev1");
    assert_eq!(rule.authorize(&me, Access::Publish, "allow/x"), Authz::Allow);
    assert_eq!(rule.authorize(&me, Access::Subscribe, "deny/x"), Authz::Deny);
    assert_eq!(rule.authorize(&me, Access::Publish, "other"), Authz::Continue);
    assert_eq!(rule.authorize(&me, Access::Publish, "pubonly/x"), Authz::Allow);
    assert_eq!(rule.authorize(&me, Access::Subscribe, "pubonly/x"), Authz::Deny);
}

#[test]
fn every_transform_verdict_decodes_to_the_sdk_value() {
    let rule = hooks();
    let me = who("dev1");
    let up = |payload: &str, cf: Option<u16>| {
        rule.uplink(&Uplink { topic: "t/1".into(), payload: payload.into(), content_format: cf }, &me)
    };
    assert_eq!(up("keep", None), Transform::Continue);
    assert_eq!(up("drop", None), Transform::Drop);
    assert_eq!(up("reject", None), Transform::Reject(Reject::new(Code::BAD_REQUEST, "rejected by hooks")));
    assert_eq!(
        up("replace", Some(42)),
        Transform::Replace { payload: b"t/1|dev1|42".to_vec(), content_format: Some(0) }
    );
    assert_eq!(up("replace", None), Transform::Replace { payload: b"t/1|dev1|-".to_vec(), content_format: Some(0) });
    let down = |payload: &str| {
        let msg = Downlink {
            topic: "c/1".into(),
            payload: payload.into(),
            content_type: Some("text/plain".into()),
            user_properties: pairs(&[("a", "b"), ("c", "")]),
        };
        rule.downlink(&msg, &me)
    };
    assert_eq!(down("keep"), Transform::Continue);
    assert_eq!(down("drop"), Transform::Drop);
    assert_eq!(
        down("replace"),
        Transform::Replace { payload: b"c/1|text/plain|a=b,c=|dev1".to_vec(), content_format: Some(50) }
    );
}

fn ok_answers(rule: &WasmRule, n: &str) {
    assert_eq!(rule.route(&get(&format!("ok/{n}")), &who("dev1")), Route::Publish(Publish::to(format!("ok/{n}"))));
}

fn is_route_failure(route: &Route) -> bool {
    matches!(route, Route::Reject(r) if r.code == Code::INTERNAL_SERVER_ERROR)
}

#[test]
fn fault_ok_and_continue_answer() {
    let rule = fault();
    ok_answers(&rule, "x");
    assert_eq!(rule.route(&get("fine"), &who("dev1")), Route::Continue);
    assert_eq!(
        rule.uplink(&Uplink { payload: b"hello".to_vec(), ..Uplink::default() }, &who("d")),
        Transform::Continue
    );
}

#[test]
fn every_fault_is_contained_and_the_next_request_answers() {
    let rule = fault();
    ok_answers(&rule, "first");
    for fault in ["trap", "loop", "memory", "oob", "bigout", "badtopic"] {
        let started = Instant::now();
        let answer = rule.route(&get(fault), &who("dev1"));
        let took = started.elapsed();
        assert!(is_route_failure(&answer), "{fault}: expected the route fail policy (5.00), got {answer:?}");
        assert!(took < Duration::from_secs(5), "{fault}: took {took:?}");
        ok_answers(&rule, fault);
    }
    let stats = rule.stats();
    assert!(stats.timeouts >= 1, "the loop must end by the deadline: {stats:?}");
    // trap, memory and oob trap; on a loaded machine the memory bomb may meet the deadline first.
    assert!(stats.traps + stats.timeouts >= 4, "trap, loop, memory and oob: {stats:?}");
    assert!(stats.failures >= 6, "every fault answers with the fail policy: {stats:?}");
}

#[test]
fn the_memory_bomb_meets_the_memory_cap_and_the_loop_the_deadline() {
    let wasm = module("fault-as", "tests/rules/fault-as", "rule.raw.wasm");
    let compiled = ENGINE.compile(&wasm).expect("compiles");
    // A generous deadline, so that only the 16 MiB cap can stop the bomb.
    let limits = Limits { timeout: Duration::from_secs(5), ..Limits::default() };
    let rule = WasmRule::new(&ENGINE, &compiled, "fault-as", "0.1.0", &config(&[]), limits).expect("loads");
    assert!(is_route_failure(&rule.route(&get("memory"), &who("dev1"))));
    let stats = rule.stats();
    assert_eq!((stats.traps, stats.timeouts), (1, 0), "{stats:?}");
    ok_answers(&rule, "after-memory");
    // A short deadline stops the loop.
    let limits = Limits { timeout: Duration::from_millis(20), ..Limits::default() };
    let rule = WasmRule::new(&ENGINE, &compiled, "fault-as", "0.1.0", &config(&[]), limits).expect("loads");
    let started = Instant::now();
    assert!(is_route_failure(&rule.route(&get("loop"), &who("dev1"))));
    assert!(started.elapsed() < Duration::from_secs(30), "the loop hung: {:?}", started.elapsed());
    assert_eq!(rule.stats().timeouts, 1);
    ok_answers(&rule, "after-loop");
}

#[test]
fn a_trap_in_uplink_drops_the_message_and_answers_5_00() {
    let rule = fault();
    let trap = Uplink { topic: "ok/x".into(), payload: b"trap".to_vec(), content_format: None };
    assert_eq!(rule.uplink(&trap, &who("dev1")), sluice::rules::uplink_failed());
    assert_eq!(rule.uplink(&Uplink { payload: b"fine".to_vec(), ..trap }, &who("dev1")), Transform::Continue);
    ok_answers(&rule, "after");
}

#[test]
fn faults_on_many_threads_leave_every_thread_serving() {
    let rule = fault();
    std::thread::scope(|s| {
        for t in 0..4 {
            let rule = &rule;
            s.spawn(move || {
                for i in 0..20 {
                    let fault = ["trap", "oob", "badtopic", "bigout"][(t + i) % 4];
                    assert!(is_route_failure(&rule.route(&get(fault), &who("dev1"))), "{fault}");
                    ok_answers(rule, &format!("{t}-{i}"));
                }
            });
        }
    });
}

#[test]
fn enrich_names_t_devices_by_identity_or_query() {
    let rule = enrich(&[]);
    let req = |query: &[&str]| Request { query: query.iter().map(|q| (*q).to_string()).collect(), ..get("t/a/b") };
    assert_eq!(rule.authenticate(&req(&["c=dev1"])), Auth::Allow(Principal::new("dev1")));
    assert_eq!(rule.authenticate(&req(&["clientid=dev2"])), Auth::Allow(Principal::new("dev2")));
    let psk = Request {
        identity: Identity { psk_identity: Some("dev7".into()), ..Identity::default() },
        ..req(&["c=other"])
    };
    assert_eq!(rule.authenticate(&psk), Auth::Allow(Principal::new("dev7")));
    assert!(matches!(rule.authenticate(&req(&[])), Auth::Deny(r) if r.code == Code::BAD_REQUEST));
    assert_eq!(rule.authenticate(&Request { query: vec!["c=x".into()], ..get("mqtt/a") }), Auth::Continue);
    assert!(matches!(rule.route(&get("t/a/b"), &who("")), Route::Reject(r) if r.code == Code::UNAUTHORIZED));
}

#[test]
fn enrich_routes_under_the_prefix_and_the_client_id() {
    let rule = enrich(&[]);
    assert_eq!(rule.route(&get("t/room1/temp"), &who("dev1")), Route::Publish(Publish::to("devices/dev1/room1/temp")));
    assert_eq!(rule.route(&get("t/a"), &who("dev1")), Route::Continue);
    assert_eq!(rule.route(&get("mqtt/a/b"), &who("dev1")), Route::Continue);
    assert!(matches!(rule.route(&get("t/a/+"), &who("dev1")), Route::Reject(r) if r.code == Code::BAD_REQUEST));
    let other = enrich(&[("prefix", "site/7")]);
    assert_eq!(other.route(&get("t/a/b"), &who("d")), Route::Publish(Publish::to("site/7/d/a/b")));
    assert!(matches!(
        load(&module("enrich-as", "examples/enrich-as", "rule.raw.wasm"), "enrich-as", &[("prefix", "a/#")]),
        Err(LoadError::Config { .. })
    ));
}

#[test]
fn enrich_adds_device_and_receive_time_to_json_objects() {
    let rule = enrich(&[]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let msg =
        Uplink { topic: "devices/dev1/a/b".into(), payload: br#"{"t": 21.5}"#.to_vec(), content_format: Some(50) };
    let Transform::Replace { payload, content_format } = rule.uplink(&msg, &who("dev1")) else {
        panic!("expected a replace");
    };
    assert_eq!(content_format, Some(50));
    let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON out");
    assert_eq!(json["t"], 21.5);
    assert_eq!(json["device"], "dev1");
    let at = json["received_at"].as_u64().expect("received_at") as u128;
    assert!(at + 1000 >= before && at <= before + 60_000, "received_at {at} vs now {before}");
    let text = Uplink { payload: b"21.5".to_vec(), content_format: Some(0), ..msg.clone() };
    assert_eq!(rule.uplink(&text, &who("dev1")), Transform::Continue);
    let quiet = enrich(&[("timestamp", "false")]);
    assert_eq!(
        quiet.uplink(&Uplink { content_format: None, ..msg }, &who("dev1")),
        Transform::Replace { payload: br#"{"t":21.5,"device":"dev1"}"#.to_vec(), content_format: Some(50) }
    );
}

#[test]
fn enrich_compacts_json_on_the_way_down() {
    let rule = enrich(&[]);
    let msg = |payload: &str| Downlink { topic: "cmd".into(), payload: payload.into(), ..Downlink::default() };
    assert_eq!(
        rule.downlink(&msg("{\n  \"on\": true,\n  \"s\": \"a b\"\n}\n"), &who("d")),
        Transform::Replace { payload: br#"{"on":true,"s":"a b"}"#.to_vec(), content_format: None }
    );
    assert_eq!(rule.downlink(&msg(r#"{"on":true}"#), &who("d")), Transform::Continue);
    assert_eq!(rule.downlink(&msg("not json at all"), &who("d")), Transform::Continue);
}

#[test]
fn enrich_passes_its_own_vectors() {
    let wasm = module("enrich-as", "examples/enrich-as", "rule.raw.wasm");
    // The package carries its vectors; a bare module takes them from rule.yaml.
    let (defaults, vectors) = match Package::from_bytes(wasm.clone(), "enrich-as.wasm") {
        Ok(package) if !package.vectors.is_empty() => (package.manifest.defaults, package.vectors),
        _ => {
            let source = RuleSource::read(&repo().join("examples/enrich-as/rule.yaml")).expect("rule.yaml");
            (source.manifest.defaults, source.vectors)
        }
    };
    assert!(vectors.len() >= 8, "enrich-as has {} vectors", vectors.len());
    let compiled = ENGINE.compile(&wasm).expect("compiles");
    let failures = run_package_vectors(
        |c| {
            WasmRule::new(&ENGINE, &compiled, "enrich-as", "0.1.0", c, Limits::default())
                .map(|r| Box::new(r) as Box<dyn Rule>)
                .map_err(|e| e.to_string())
        },
        &defaults,
        &vectors,
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn fault_as_passes_its_own_vectors() {
    let source = RuleSource::read(&repo().join("tests/rules/fault-as/rule.yaml")).expect("rule.yaml");
    let compiled = ENGINE.compile(&module("fault-as", "tests/rules/fault-as", "rule.raw.wasm")).expect("compiles");
    let failures = run_package_vectors(
        |c| {
            WasmRule::new(&ENGINE, &compiled, "fault-as", "0.1.0", c, Limits::default())
                .map(|r| Box::new(r) as Box<dyn Rule>)
                .map_err(|e| e.to_string())
        },
        &source.manifest.defaults,
        &source.vectors,
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `(namespace, name, value)` of every constant in a namespace/module of `source`:
/// `pub mod field {` … `pub const METHOD: i32 = 1;` (Rust) or `export namespace field {` …
/// `export const METHOD: i32 = 1;` (AssemblyScript).
fn abi_numbers(source: &str, open: &str, constant: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut namespace = String::new();
    for line in source.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(open) {
            namespace = rest.trim_end_matches('{').trim().to_string();
        } else if line == "}" {
            namespace.clear();
        } else if let Some(rest) = line.strip_prefix(constant) {
            let Some((left, value)) = rest.split_once('=') else { continue };
            let name = left.split(':').next().unwrap_or(left);
            let value =
                value.trim().trim_end_matches(';').trim().replace("i64::MIN", "MIN").replace("i64.MIN_VALUE", "MIN");
            out.push((namespace.clone(), name.trim().to_string(), value));
        }
    }
    out.sort();
    out
}

#[test]
fn the_assemblyscript_abi_mirrors_the_crate() {
    let rust = std::fs::read_to_string(repo().join("sdk/abi/src/lib.rs")).expect("sdk/abi/src/lib.rs");
    let ts = std::fs::read_to_string(repo().join("sdk/assemblyscript/assembly/abi.ts")).expect("abi.ts");
    let rust = abi_numbers(&rust, "pub mod ", "pub const ");
    let ts = abi_numbers(&ts, "export namespace ", "export const ");
    // Numbers and names compare as text; the slices (`ALL`, `ENV_IMPORTS`) are written
    // differently, and AssemblyScript names the imports in `@external` declarations instead.
    let skip = |(namespace, name, _): &&(String, String, String)| {
        name != "ALL" && name != "ENV_IMPORTS" && namespace != "import"
    };
    let rust: Vec<_> = rust.iter().filter(skip).cloned().collect();
    let ts: Vec<_> = ts.iter().filter(skip).cloned().collect();
    assert_eq!(ts, rust, "sdk/assemblyscript/assembly/abi.ts must mirror sdk/abi/src/lib.rs");
}
