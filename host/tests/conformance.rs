//! Conformance: `builtin:emqx` (native) and `emqx.wasm` (the same crate built for
//! `wasm32-unknown-unknown`, run by the gateway's Wasm runtime) give identical answers on every
//! vector of `rules/emqx/rule.yaml`, and both give the answer the vector expects.
//!
//! The package comes from `target/rules/emqx.wasm` (`scripts/build-rules.sh`); set
//! `SLUICE_RULES_DIR` to look elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::rules::source::RuleSource;
use sluice::rules::vectors::{AccessSpec, Hook, json_config, merge};
use sluice::rules::{Engine, Limits, Package, Vector, WasmRule};
use sluice_sdk::{Access, Auth, Authz, Downlink, Request, Route, Rule, Transform, Uplink};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the host crate is in the workspace").to_path_buf()
}

/// The bytes of a built rule package.
fn package(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("SLUICE_RULES_DIR").map_or_else(|| workspace().join("target/rules"), PathBuf::from);
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-rules.sh first", path.display()))
}

/// The default limits with a deadline that a loaded CI machine cannot miss by accident.
fn limits() -> Limits {
    Limits { timeout: std::time::Duration::from_millis(250), ..Limits::default() }
}

/// One hook's answer, as the SDK value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Auth(Auth),
    Route(Route),
    Authz(Authz),
    Transform(Transform),
}

/// Runs the vector's hook on `rule` and returns the SDK value it answered.
fn answer(v: &Vector, rule: &dyn Rule) -> Answer {
    let who = v.principal.as_ref().map(|p| p.build()).unwrap_or_default();
    let request = || v.request.as_ref().map_or_else(|| Ok(Request::default()), |r| r.build()).unwrap();
    match v.hook {
        Hook::Authenticate => Answer::Auth(rule.authenticate(&request())),
        Hook::Route => Answer::Route(rule.route(&request(), &who)),
        Hook::Authorize => {
            let access = match v.access {
                Some(AccessSpec::Subscribe) => Access::Subscribe,
                _ => Access::Publish,
            };
            Answer::Authz(rule.authorize(&who, access, v.topic.as_deref().unwrap_or_default()))
        }
        Hook::Uplink => {
            let spec = v.uplink.as_ref().unwrap();
            let payload = bytes(&spec.payload, &spec.payload_hex);
            let msg = Uplink { topic: spec.topic.clone(), payload, content_format: spec.content_format };
            Answer::Transform(rule.uplink(&msg, &who))
        }
        Hook::Downlink => {
            let spec = v.downlink.as_ref().unwrap();
            let msg = Downlink {
                topic: spec.topic.clone(),
                payload: bytes(&spec.payload, &spec.payload_hex),
                content_type: spec.content_type.clone(),
                user_properties: spec.user_properties.clone().into_iter().collect(),
            };
            Answer::Transform(rule.downlink(&msg, &who))
        }
    }
}

/// A vector's payload, written as text or hex.
fn bytes(text: &Option<String>, hex_text: &Option<String>) -> Vec<u8> {
    match (text, hex_text) {
        (Some(t), _) => t.clone().into_bytes(),
        (None, Some(h)) => hex::decode(h).unwrap(),
        (None, None) => Vec::new(),
    }
}

/// The vectors grouped by the config they run with (the manifest's defaults under each
/// vector's own config).
fn by_config<'a>(defaults: &Value, vectors: &'a [Vector]) -> Vec<(Value, Vec<&'a Vector>)> {
    let mut groups: Vec<(Value, Vec<&Vector>)> = Vec::new();
    for v in vectors {
        let config = v.config.as_ref().map_or_else(|| defaults.clone(), |c| merge(defaults, c));
        match groups.iter_mut().find(|(c, _)| *c == config) {
            Some((_, list)) => list.push(v),
            None => groups.push((config, vec![v])),
        }
    }
    groups
}

#[test]
fn native_and_wasm_emqx_give_identical_answers_on_every_vector() {
    let source = RuleSource::read(&workspace().join("rules/emqx/rule.yaml")).unwrap();
    assert!(source.vectors.len() >= 200, "only {} vectors", source.vectors.len());
    let engine = Engine::new(None).unwrap();
    let compiled = engine.compile(&package("emqx")).unwrap();
    assert_eq!(compiled.hooks(), ["authenticate", "route", "authorize"]);

    let mut compared = 0;
    let mut failures = Vec::new();
    for (config, vectors) in by_config(&source.manifest.defaults, &source.vectors) {
        let json = config;
        let config = json_config(&json).unwrap();
        let native = sluice_rule_emqx::init(&config).unwrap_or_else(|e| panic!("config {json}: {e}: {config:?}"));
        let wasm = WasmRule::new(&engine, &compiled, "emqx", "0.1.0", &config, limits()).unwrap();
        for v in vectors {
            let (n, w) = (answer(v, native.as_ref()), answer(v, &wasm));
            assert_eq!(n, w, "vector {:?}: native and wasm differ", v.name);
            failures.extend(v.check(native.as_ref()).map(|f| format!("native: {f}")));
            failures.extend(v.check(&wasm).map(|f| format!("wasm: {f}")));
            compared += 1;
        }
        let stats = wasm.stats();
        assert_eq!((stats.traps, stats.timeouts, stats.failures), (0, 0, 0), "{stats:?}");
    }
    assert_eq!(compared, source.vectors.len());
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_package_carries_the_vectors_of_rule_yaml() {
    let source = RuleSource::read(&workspace().join("rules/emqx/rule.yaml")).unwrap();
    match Package::from_bytes(package("emqx"), "emqx.wasm") {
        Ok(pkg) => {
            assert_eq!(pkg.manifest.name, "emqx");
            assert_eq!(pkg.vectors, source.vectors, "emqx.wasm is stale: run scripts/build-rules.sh");
        }
        // A bare module (SLUICE_RULES_DIR pointing at cargo's output) has no sections to compare.
        Err(e) => assert!(std::env::var_os("SLUICE_RULES_DIR").is_some(), "emqx.wasm is not a package: {e}"),
    }
}

#[test]
fn native_and_wasm_emqx_refuse_a_bad_config_with_the_same_reason() {
    let engine = Engine::new(None).unwrap();
    let compiled = engine.compile(&package("emqx")).unwrap();
    for entries in [
        vec![("users.0.username", "tom"), ("users.0.passwd", "x")],
        vec![("anonymos", "true")],
        vec![("anonymous", "yes")],
        vec![("anonymous_subscribe.0", "d/${peer}")],
    ] {
        let config =
            sluice_sdk::Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let native = sluice_rule_emqx::init(&config).err().unwrap();
        let wasm = WasmRule::new(&engine, &compiled, "emqx", "0.1.0", &config, limits()).err().unwrap();
        match wasm {
            sluice::rules::LoadError::Config { reason, .. } => assert_eq!(reason, native),
            other => panic!("expected a config refusal, got {other}"),
        }
    }
}
