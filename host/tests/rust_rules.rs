//! Rust rules as WebAssembly, through the gateway's runtime (`sluice::rules::WasmRule`): every
//! shipped Rust rule passes its own vectors, every hook carries its inputs and verdicts across
//! the ABI, and every way a rule can fail (`tests/rules/fault`) is contained with its documented
//! outcome while the next request is still answered correctly.
//!
//! The packages come from `target/rules/NAME.wasm` (`scripts/build-rules.sh`); set
//! `SLUICE_RULES_DIR` to look elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::rules::source::RuleSource;
use sluice::rules::vectors::json_config;
use sluice::rules::{Compiled, Engine, Limits, LoadError, Package, WasmRule, run_package_vectors};
use sluice_sdk::{
    Access, Auth, Authz, Code, Config, Downlink, Method, Principal, Publish, Request, Route, Rule, Transform, Uplink,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the host crate is in the workspace").to_path_buf()
}

/// The bytes of a built rule package.
fn package(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("SLUICE_RULES_DIR").map_or_else(|| workspace().join("target/rules"), PathBuf::from);
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-rules.sh first", path.display()))
}

/// Each Rust rule's project folder.
const RULES: &[(&str, &str)] = &[
    ("emqx", "rules/emqx"),
    ("senml", "rules/senml"),
    ("thingsboard", "examples/thingsboard"),
    ("fault", "tests/rules/fault"),
];

/// The default limits with a deadline that a loaded 2-core CI machine cannot miss by accident
/// (the deadline itself is tested with the `loop` fault, which never returns).
fn limits() -> Limits {
    Limits { timeout: Duration::from_millis(250), ..Limits::default() }
}

fn compile(engine: &Engine, name: &str) -> Compiled {
    engine.compile(&package(name)).unwrap_or_else(|e| panic!("{name}.wasm: {e}"))
}

fn config(entries: &[(&str, &str)]) -> Config {
    Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn load(engine: &Engine, name: &str, entries: &[(&str, &str)]) -> WasmRule {
    WasmRule::new(engine, &compile(engine, name), name, "0.1.0", &config(entries), limits())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn request(method: Method, path: &str, query: &[&str]) -> Request {
    Request {
        method,
        path: path.split('/').filter(|s| !s.is_empty()).map(String::from).collect(),
        query: query.iter().map(|q| q.to_string()).collect(),
        peer: "192.0.2.7:40000".into(),
        ..Request::default()
    }
}

fn code(route: &Route) -> Option<Code> {
    match route {
        Route::Reject(r) => Some(r.code),
        _ => None,
    }
}

#[test]
fn every_rust_rule_passes_its_own_vectors_as_wasm() {
    let engine = Engine::new(None).unwrap();
    for (name, dir) in RULES {
        let source = RuleSource::read(&workspace().join(dir).join("rule.yaml")).unwrap();
        assert!(!source.vectors.is_empty(), "{name} has no vectors");
        let compiled = compile(&engine, name);
        let mut hooks: Vec<&str> = compiled.hooks().to_vec();
        let mut declared: Vec<&str> = source.manifest.hooks.iter().map(String::as_str).collect();
        hooks.sort_unstable();
        declared.sort_unstable();
        assert_eq!(hooks, declared, "{name}: rule.yaml's hooks differ from the module's exports");
        let load = |config: &Config| {
            WasmRule::new(&engine, &compiled, name, &source.manifest.version, config, limits())
                .map(|r| Box::new(r) as Box<dyn Rule>)
                .map_err(|e| e.to_string())
        };
        let failures = run_package_vectors(load, &source.manifest.defaults, &source.vectors);
        let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
        assert!(
            failures.is_empty(),
            "{name}: {} of {} vectors failed:\n{}",
            failures.len(),
            source.vectors.len(),
            text.join("\n")
        );
    }
}

#[test]
fn every_package_carries_its_manifest_and_vectors() {
    for (name, dir) in RULES {
        let source = RuleSource::read(&workspace().join(dir).join("rule.yaml")).unwrap();
        let pkg = match Package::from_bytes(package(name), name) {
            Ok(pkg) => pkg,
            // A bare module (SLUICE_RULES_DIR pointing at cargo's output) carries no sections.
            Err(_) if std::env::var_os("SLUICE_RULES_DIR").is_some() => continue,
            Err(e) => panic!("{name}.wasm is not a package: {e}"),
        };
        assert_eq!(pkg.manifest.name, *name);
        assert_eq!(pkg.manifest.language, "rust");
        assert_eq!(pkg.vectors, source.vectors, "{name}.wasm is stale: run scripts/build-rules.sh");
    }
}

#[test]
fn every_hook_carries_its_inputs_and_verdict_across_the_abi() {
    let engine = Engine::new(None).unwrap();
    let fault = load(&engine, "fault", &[]);

    let auth = fault.authenticate(&request(Method::Get, "whoami", &["c=dev1", "u=tom"]));
    let who = Principal {
        client_id: "dev1".into(),
        username: Some("tom".into()),
        attributes: vec![("peer".into(), "192.0.2.7:40000".into())],
    };
    assert_eq!(auth, Auth::Allow(who.clone()));
    assert_eq!(fault.authenticate(&request(Method::Get, "other", &[])), Auth::Continue);

    assert_eq!(fault.route(&request(Method::Put, "ok/7", &[]), &who), Route::Publish(Publish::to("ok/7")));
    assert_eq!(fault.route(&request(Method::Put, "other", &[]), &who), Route::Continue);
    // The gateway's clock.
    let Route::Publish(now) = fault.route(&request(Method::Put, "now", &[]), &who) else { panic!("now") };
    let guest: u64 = now.topic.trim_start_matches("now/").parse().unwrap();
    assert!(guest.abs_diff(sluice_sdk::now_ms()) < 60_000, "{guest} is not now");
    // The log import: every level, then an ordinary verdict.
    assert_eq!(fault.route(&request(Method::Put, "log", &[]), &who), Route::Publish(Publish::to("log/done")));

    assert_eq!(fault.authorize(&who, Access::Publish, "allow/x"), Authz::Allow);
    assert_eq!(fault.authorize(&who, Access::Subscribe, "deny/#"), Authz::Deny);
    assert_eq!(fault.authorize(&who, Access::Subscribe, "other"), Authz::Continue);

    let up = Uplink { topic: "ok/7".into(), payload: b"21.5".to_vec(), content_format: Some(0) };
    assert_eq!(fault.uplink(&up, &who), Transform::Continue);

    let down = Downlink {
        topic: "cmd/dev1".into(),
        payload: b"on".to_vec(),
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
    };
    let seen = "cmd/dev1 on Some(\"text/plain\") [(\"k\", \"v\")] dev1 [(\"peer\", \"192.0.2.7:40000\")]";
    assert_eq!(fault.downlink(&down, &who), Transform::Replace { payload: seen.into(), content_format: Some(0) });
    assert_eq!(fault.stats().failures, 0);
}

#[test]
fn each_fault_gets_its_fail_policy_and_the_next_request_is_answered() {
    let engine = Engine::new(None).unwrap();
    let fault = load(&engine, "fault", &[]);
    let who = Principal::new("dev1");
    let ok = |rule: &WasmRule| {
        assert_eq!(rule.route(&request(Method::Put, "ok/after", &[]), &who), Route::Publish(Publish::to("ok/after")));
    };
    ok(&fault);

    // Route faults: each one is 5.00, and the rule keeps answering.
    for (path, what) in [
        ("trap", "a trap (panic)"),
        ("loop", "an infinite loop (deadline)"),
        ("memory", "a memory bomb (memory cap)"),
        ("oob", "an out-of-bounds pointer"),
        ("bigout", "a 1 MiB output"),
        ("badtopic", "a wildcard publish topic"),
    ] {
        let before = fault.stats();
        let started = Instant::now();
        let verdict = fault.route(&request(Method::Put, path, &[]), &who);
        let took = started.elapsed();
        assert_eq!(code(&verdict), Some(Code::INTERNAL_SERVER_ERROR), "{what}: {verdict:?}");
        assert!(took < Duration::from_secs(30), "{what} hung: {took:?}"); // a hang check, not a timing one
        let after = fault.stats();
        assert_eq!(after.failures, before.failures + 1, "{what} is counted: {after:?}");
        ok(&fault);
    }
    let stats = fault.stats();
    assert!(stats.timeouts >= 1, "the loop is a timeout: {stats:?}");
    assert!(stats.traps >= 2, "trap and oob are traps: {stats:?}");
    // The bomb ends at the memory cap (a trap) or, on a slow machine, at the deadline.
    assert!(stats.traps + stats.timeouts >= 4, "the memory bomb is contained: {stats:?}");
    assert!(stats.instances >= 2, "a trapped instance is replaced: {stats:?}");

    // The other hooks' fail policies.
    match fault.authenticate(&request(Method::Get, "authtrap", &[])) {
        Auth::Deny(r) => assert_eq!(r.code, Code::UNAUTHORIZED),
        other => panic!("authenticate trap: {other:?}"),
    }
    assert_eq!(fault.authorize(&who, Access::Publish, "trap"), Authz::Deny);
    let trap_up = Uplink { topic: "ok/1".into(), payload: b"trap".to_vec(), content_format: None };
    assert_eq!(fault.uplink(&trap_up, &who), sluice::rules::uplink_failed());
    let trap_down = Downlink { topic: "t".into(), payload: b"trap".to_vec(), ..Downlink::default() };
    assert_eq!(fault.downlink(&trap_down, &who), Transform::Drop);
    ok(&fault);
    let fine_up = Uplink { payload: b"fine".to_vec(), ..trap_up };
    assert_eq!(fault.uplink(&fine_up, &who), Transform::Continue);
}

#[test]
fn a_tight_memory_cap_contains_the_bomb_and_a_short_deadline_the_loop() {
    let engine = Engine::new(None).unwrap();
    let compiled = compile(&engine, "fault");
    let limits = Limits { memory_bytes: 4 << 20, timeout: Duration::from_millis(50), ..Limits::default() };
    let fault = WasmRule::new(&engine, &compiled, "fault", "0.1.0", &Config::default(), limits).unwrap();
    let who = Principal::new("d");
    for path in ["memory", "loop", "memory"] {
        assert_eq!(code(&fault.route(&request(Method::Put, path, &[]), &who)), Some(Code::INTERNAL_SERVER_ERROR));
        assert_eq!(fault.route(&request(Method::Put, "ok/x", &[]), &who), Route::Publish(Publish::to("ok/x")));
    }
}

#[test]
fn faults_on_one_thread_do_not_disturb_another() {
    let engine = Engine::new(None).unwrap();
    let fault = std::sync::Arc::new(load(&engine, "fault", &[]));
    let who = Principal::new("d");
    std::thread::scope(|s| {
        let bad = s.spawn(|| {
            for _ in 0..5 {
                fault.route(&request(Method::Put, "trap", &[]), &who);
            }
        });
        let good = s.spawn(|| {
            for i in 0..200 {
                let path = format!("ok/{i}");
                assert_eq!(fault.route(&request(Method::Put, &path, &[]), &who), Route::Publish(Publish::to(path)));
            }
        });
        bad.join().unwrap();
        good.join().unwrap();
    });
}

#[test]
fn thingsboard_maps_a_device_request_from_token_to_json() {
    let engine = Engine::new(None).unwrap();
    let tb = load(&engine, "thingsboard", &[("devices.A1_TEST_TOKEN", "thermostat-1")]);
    // {"temperature": 21.5} in CBOR
    let cbor = hex::decode("a16b74656d7065726174757265f94d60").unwrap();
    let req = Request {
        payload: cbor.clone(),
        content_format: Some(60),
        ..request(Method::Post, "api/v1/A1_TEST_TOKEN/telemetry", &[])
    };

    let Auth::Allow(who) = tb.authenticate(&req) else { panic!("the token is not accepted") };
    assert_eq!(who, Principal::new("thermostat-1"));
    let Route::Publish(publish) = tb.route(&req, &who) else { panic!("not published") };
    assert_eq!(publish.topic, "devices/thermostat-1/telemetry");
    let up = Uplink { topic: publish.topic, payload: cbor, content_format: Some(60) };
    assert_eq!(
        tb.uplink(&up, &who),
        Transform::Replace { payload: br#"{"temperature":21.5}"#.to_vec(), content_format: Some(50) }
    );

    let wrong = request(Method::Post, "api/v1/NOPE/telemetry", &[]);
    match tb.authenticate(&wrong) {
        Auth::Deny(r) => {
            assert_eq!(r.code, Code::UNAUTHORIZED);
            assert!(!r.reason.contains("NOPE"), "the token is echoed: {}", r.reason);
        }
        other => panic!("unknown token: {other:?}"),
    }
}

#[test]
fn thingsboard_refuses_a_config_without_devices() {
    let engine = Engine::new(None).unwrap();
    let compiled = compile(&engine, "thingsboard");
    match WasmRule::new(&engine, &compiled, "thingsboard", "0.1.0", &Config::default(), limits()) {
        Err(LoadError::Config { reason, .. }) => assert!(reason.starts_with("devices: required"), "{reason}"),
        Err(other) => panic!("expected a config refusal, got {other}"),
        Ok(_) => panic!("accepted a config without devices"),
    }
}

#[test]
fn senml_converts_a_large_pack() {
    let engine = Engine::new(None).unwrap();
    let senml = load(&engine, "senml", &[]);
    let base = r#""bn":"dev/","bt":1700000000,"#;
    let records: Vec<String> = (0..500)
        .map(|i| format!(r#"{{{}"n":"sensor{i}","u":"Cel","v":{i}.5}}"#, if i == 0 { base } else { "" }))
        .collect();
    let pack = format!("[{}]", records.join(","));
    let up = Uplink { topic: "t".into(), payload: pack.into_bytes(), content_format: Some(110) };
    let Transform::Replace { payload, content_format } = senml.uplink(&up, &Principal::new("d")) else {
        panic!("not converted: {:?}", senml.stats())
    };
    assert_eq!(content_format, Some(50));
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(500));
    assert_eq!(json[499], serde_json::json!({"n": "dev/sensor499", "u": "Cel", "v": 499.5, "t": 1700000000}));
}

#[test]
fn emqx_defaults_config_loads_in_wasm() {
    let engine = Engine::new(None).unwrap();
    let source = RuleSource::read(&workspace().join("rules/emqx/rule.yaml")).unwrap();
    let config = json_config(&source.manifest.defaults).unwrap();
    let emqx = WasmRule::new(&engine, &compile(&engine, "emqx"), "emqx", "0.1.0", &config, limits()).unwrap();
    // Anonymous access is off by default.
    match emqx.authenticate(&request(Method::Put, "mqtt/a", &["c=d"])) {
        Auth::Deny(r) => assert_eq!(r.code, Code::UNAUTHORIZED),
        other => panic!("{other:?}"),
    }
}
