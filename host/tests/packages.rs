//! Rule packages: packing and reading the custom sections, refusing what is not a package,
//! sha256 pins, test vectors on builtin and Wasm rules, and the `sluice rule` commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::wat_rule;
use sluice::config::{Config, RuleConfig, RuleLimitsConfig};
use sluice::rules::package::{self, Manifest, Package};
use sluice::rules::source::RuleSource;
use sluice::rules::vectors::{Vector, run_package_vectors, run_vectors};
use sluice::rules::{Engine, load_chain};
use sluice_sdk::{Principal, Request, Route};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn manifest(name: &str, version: &str) -> Manifest {
    Manifest {
        name: name.into(),
        version: version.into(),
        abi: 1,
        language: "wat".into(),
        description: "test rule".into(),
        hooks: vec![],
        config: Default::default(),
        defaults: serde_json::Value::Null,
        limits: RuleLimitsConfig::default(),
    }
}

fn vectors(yaml: &str) -> Vec<Vector> {
    serde_yaml::from_str(yaml).unwrap()
}

/// A packaged WAT rule publishing to `topic`, with one vector expecting `expect_topic`.
fn package_bytes(name: &str, version: &str, topic: &str, expect_topic: &str) -> Vec<u8> {
    let v = vectors(&format!(
        "- name: everything is published\n  hook: route\n  request: {{path: x}}\n  expect: {{publish: {{topic: {expect_topic}}}}}\n"
    ));
    package::pack(&wat_rule(topic), &manifest(name, version), &v).unwrap()
}

/// Appends a custom section by hand (to craft packages `pack` would refuse to write).
fn with_section(mut wasm: Vec<u8>, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    wasm.push(0);
    let mut n = body.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            wasm.push(b);
            break;
        }
        wasm.push(b | 0x80);
    }
    wasm.extend_from_slice(&body);
    wasm
}

fn route_x(chain: &sluice::rules::Chain) -> Route {
    let req = Request { path: vec!["x".into()], ..Request::default() };
    chain.route(&req, &Principal::new("dev1"))
}

#[test]
fn pack_then_read_round_trips_manifest_vectors_and_hooks() {
    let bytes = package_bytes("hello", "0.1.0", "hello/out", "hello/out");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.wasm");
    std::fs::write(&file, &bytes).unwrap();
    let p = Package::read(&file).unwrap();
    assert_eq!(p.manifest.name, "hello");
    assert_eq!(p.manifest.hooks, vec!["route"], "hooks come from the exports");
    assert_eq!(p.vectors.len(), 1);
    assert_eq!(p.sha256, package::sha256_hex(&bytes));
    // Packing again replaces the sections instead of adding more.
    let again = package::pack(&bytes, &manifest("hello", "0.2.0"), &[]).unwrap();
    let p2 = Package::from_bytes(again.clone(), "again").unwrap();
    assert_eq!(p2.manifest.version, "0.2.0");
    assert!(p2.vectors.is_empty());
    let ours = package::sections(&again)
        .unwrap()
        .into_iter()
        .filter(|s| s.name.as_deref().is_some_and(|n| n.starts_with("sluice.")))
        .count();
    assert_eq!(ours, 2);
}

#[test]
fn non_packages_and_bad_manifests_are_refused_with_the_fix() {
    let plain = wat_rule("a");
    let err = Package::from_bytes(plain.clone(), "plain.wasm").unwrap_err().to_string();
    assert!(err.contains("plain.wasm") && err.contains("sluice rule build"), "{err}");
    let err = Package::from_bytes(b"not wasm at all".to_vec(), "junk.wasm").unwrap_err().to_string();
    assert!(err.contains("not a WebAssembly module"), "{err}");
    let err = package::pack(&plain, &manifest("Bad_Name", "1"), &[]).unwrap_err().to_string();
    assert!(err.contains("lowercase"), "{err}");
    let json = br#"{"name":"future","version":"1.0.0","abi":2}"#;
    let err = Package::from_bytes(with_section(plain.clone(), "sluice.manifest", json), "future.wasm")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ABI v2") && err.contains("rebuild"), "{err}");
    let err =
        Package::from_bytes(with_section(plain, "sluice.manifest", b"{nope"), "broken.wasm").unwrap_err().to_string();
    assert!(err.contains("broken.wasm: manifest"), "{err}");
}

#[test]
fn a_package_runs_its_vectors_through_the_runtime() {
    let engine = Engine::new(None).unwrap();
    let good = Package::from_bytes(package_bytes("good", "0.1.0", "a/b", "a/b"), "good.wasm").unwrap();
    let limits = sluice::rules::Limits::resolve(None, &good.manifest.limits).unwrap();
    sluice::rules::load_package(&good, &engine, &serde_json::Value::Null, limits.clone()).unwrap();
    let bad = Package::from_bytes(package_bytes("bad", "0.1.0", "a/b", "c/d"), "bad.wasm").unwrap();
    let err = sluice::rules::load_package(&bad, &engine, &serde_json::Value::Null, limits).unwrap_err().to_string();
    assert!(err.contains("everything is published") && err.contains("c/d") && err.contains("a/b"), "{err}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn chain_runs_unnamed_packages_first_then_the_configured_entries() {
    let engine = Engine::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    write(&rules, "b-first.wasm", &package_bytes("first", "0.1.0", "first/x", "first/x"));
    write(&rules, "named.wasm", &package_bytes("named", "0.1.0", "named/x", "named/x"));
    let text = "rules_dir: rules\nrules:\n  - rule: named\n  - rule: builtin:emqx\n    config: {anonymous: true}\n";
    std::fs::write(dir.path().join("sluice.yaml"), text).unwrap();
    let config = Config::load(&dir.path().join("sluice.yaml")).unwrap();
    let chain = load_chain(&config, Some(dir.path()), &engine).unwrap();
    let names: Vec<_> = chain.rules().into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["first", "named", "builtin:emqx"]);
    assert!(matches!(route_x(&chain), Route::Publish(p) if p.topic == "first/x"));
    let info = &chain.rules()[0];
    assert_eq!(info.version, "0.1.0");
    assert_eq!(info.sha256.as_ref().unwrap().len(), 64);
    assert!(info.source.as_ref().unwrap().ends_with("b-first.wasm"));
}

#[test]
fn no_config_runs_the_rules_folder_then_anonymous_emqx() {
    let engine = Engine::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "one.wasm", &package_bytes("one", "0.1.0", "one/x", "one/x"));
    let mut config = Config::zero_config();
    config.rules_dir = Some(dir.path().to_path_buf());
    let chain = load_chain(&config, None, &engine).unwrap();
    let names: Vec<_> = chain.rules().into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["one", "builtin:emqx"]);
    let req = Request { path: vec!["mqtt".into(), "t".into()], query: vec!["c=d1".into()], ..Request::default() };
    assert!(matches!(chain.authenticate(&req), sluice_sdk::Auth::Allow(_)));
}

#[test]
fn a_pin_mismatch_names_both_hashes_and_the_fix() {
    let engine = Engine::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = package_bytes("pinned", "0.1.0", "p/x", "p/x");
    let file = write(dir.path(), "pinned.wasm", &bytes);
    let actual = package::sha256_hex(&bytes);
    let wrong = "ab".repeat(32);
    let entry = RuleConfig {
        rule: file.display().to_string(),
        config: serde_yaml::Value::Null,
        sha256: Some(wrong.clone()),
        limits: None,
    };
    let config = Config { rules: vec![entry.clone()], ..Config::default() };
    let err = load_chain(&config, None, &engine).err().unwrap().to_string();
    assert!(err.contains(&wrong) && err.contains(&actual) && err.contains("set sha256"), "{err}");
    assert!(err.starts_with("rules.0: "), "the entry is named: {err}");
    let ok = RuleConfig { sha256: Some(actual.to_uppercase()), ..entry };
    let config = Config { rules: vec![ok.clone()], ..Config::default() };
    load_chain(&config, None, &engine).unwrap();
    let missing = RuleConfig { rule: "nope".into(), ..ok.clone() };
    let config = Config { rules: vec![ok, missing], rules_dir: Some(dir.path().into()), ..Config::default() };
    let err = load_chain(&config, None, &engine).err().unwrap();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].entry, 1);
    assert!(err.to_string().contains("no package named nope"), "{err}");
}

const EMQX_VECTORS: &str = r#"
- name: anonymous publish
  hook: route
  request: {method: PUT, path: mqtt/a/b, query: ["c=dev1"]}
  expect: {publish: {topic: a/b, qos: null, retain: false}}
- name: missing client id is refused
  hook: authenticate
  request: {method: PUT, path: mqtt/a, query: []}
  expect: {deny: {code: "4.00"}}
- name: tom may publish to his topic
  hook: authorize
  config: {anonymous: false, users: [{username: tom, password: secret, publish: ["devices/${clientid}/#"]}]}
  principal: {client_id: dev1, username: tom}
  access: publish
  topic: devices/dev1/t
  expect: allow
"#;

#[test]
fn vectors_pass_and_fail_on_builtin_emqx() {
    let good = vectors(EMQX_VECTORS);
    let defaults = serde_json::json!({"anonymous": true});
    let failures = run_package_vectors(sluice_rule_emqx::init, &defaults, &good);
    assert!(failures.is_empty(), "{failures:?}");
    let mut bad = good.clone();
    bad[0].expect = serde_json::json!({"publish": {"topic": "x/y"}});
    let failures = run_package_vectors(sluice_rule_emqx::init, &defaults, &bad);
    assert_eq!(failures.len(), 1);
    let text = failures[0].to_string();
    assert!(text.contains("anonymous publish") && text.contains("x/y") && text.contains("a/b"), "{text}");
    // A rule already initialised runs vectors directly.
    let rule =
        sluice_rule_emqx::init(&sluice_sdk::Config::from_entries(vec![("anonymous".into(), "true".into())])).unwrap();
    assert!(run_vectors(rule.as_ref(), &good[..2]).is_empty());
}

#[test]
fn sluice_rule_test_runs_vectors_and_exits_1_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<Vector> = vectors(EMQX_VECTORS);
    let file = dir.path().join("v.json");
    std::fs::write(&file, serde_json::to_string(&good[1..]).unwrap()).unwrap();
    let out = Command::new(SLUICE).args(["rule", "test", "builtin:emqx", "--vectors"]).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok    missing client id is refused"), "{stdout}");
    let mut bad = good[1..].to_vec();
    bad[0].expect = serde_json::json!("continue");
    std::fs::write(&file, serde_json::to_string(&bad).unwrap()).unwrap();
    let out = Command::new(SLUICE).args(["rule", "test", "builtin:emqx", "--vectors"]).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  missing client id is refused"), "{stdout}");
}

#[test]
fn sluice_rule_pack_inspect_and_test_a_wasm_module() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write(dir.path(), "rule.raw.wasm", &wat_rule("hello/x"));
    let yaml = "name: hello\nversion: 0.3.0\nlanguage: rust\ndescription: says hello\nvectors:\n  - name: x is published\n    hook: route\n    request: {path: x}\n    expect: {publish: {topic: hello/x}}\n";
    let manifest = write(dir.path(), "rule.yaml", yaml.as_bytes());
    let out = Command::new(SLUICE).args(["rule", "pack"]).arg(&raw).arg("--manifest").arg(&manifest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let packed = dir.path().join("hello.wasm");
    let p = Package::read(&packed).unwrap();
    assert_eq!(p.manifest.version, "0.3.0");

    let out = Command::new(SLUICE).args(["rule", "inspect"]).arg(&packed).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for needle in
        ["name:      hello", "version:   0.3.0", &p.sha256, "sluice1.set (func)", "x is published", "hooks:     route"]
    {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
    let out = Command::new(SLUICE).args(["rule", "inspect"]).arg(&raw).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sluice rule build"));

    let out = Command::new(SLUICE).args(["rule", "test"]).arg(&packed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn sluice_rule_new_scaffolds_both_languages_with_placeholders_filled() {
    let dir = tempfile::tempdir().unwrap();
    for (lang, files) in [
        ("rust", &["Cargo.toml", "src/lib.rs", "rule.yaml", "README.md", ".gitignore"][..]),
        (
            "assemblyscript",
            &[
                "package.json",
                "asconfig.json",
                "assembly/index.ts",
                "assembly/tsconfig.json",
                "rule.yaml",
                "README.md",
                ".gitignore",
            ][..],
        ),
    ] {
        let name = format!("my-{}-rule", &lang[..2]);
        let out = Command::new(SLUICE)
            .args(["rule", "new", "--lang", lang, &name, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for file in files {
            let text = std::fs::read_to_string(dir.path().join(&name).join(file)).unwrap();
            assert!(!text.contains("{{"), "{lang} {file} still has a placeholder:\n{text}");
        }
        let source = RuleSource::read(&dir.path().join(&name).join("rule.yaml")).unwrap();
        assert_eq!(source.manifest.name, name);
        // A second `new` into the same folder is refused.
        let again = Command::new(SLUICE)
            .args(["rule", "new", "--lang", lang, &name, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!again.status.success());
    }
    let out = Command::new(SLUICE).args(["rule", "new", "--lang", "go", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("use rust or assemblyscript"));
}

/// Compiles a fresh Rust project for wasm32 (a minute on a cold cache): the scaffold builds
/// with one command into a package the runtime loads and whose vectors pass.
#[test]
fn sluice_rule_build_makes_a_loadable_package_from_a_new_rust_project() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(SLUICE)
        .args(["rule", "new", "--lang", "rust", "hello", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let project = dir.path().join("hello");
    let out = Command::new(SLUICE).args(["rule", "build"]).arg(&project).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let package = Package::read(&project.join("build/hello.wasm")).unwrap();
    assert_eq!(package.manifest.hooks, vec!["route"]);
    let engine = Engine::new(None).unwrap();
    let mut config = Config::zero_config();
    config.rules_dir = Some(project.join("build"));
    let chain = load_chain(&config, None, &engine).unwrap();
    let req = Request { path: vec!["hello".into(), "a".into(), "b".into()], ..Request::default() };
    assert!(matches!(chain.route(&req, &Principal::new("d")), Route::Publish(p) if p.topic == "hello/a/b"));
}

/// The AssemblyScript scaffold builds with one command too (npm installs assemblyscript on
/// the first build). Skipped, with a note, on a machine without npm.
#[test]
fn sluice_rule_build_makes_a_loadable_package_from_a_new_assemblyscript_project() {
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("npm is not installed: skipping the AssemblyScript build");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(SLUICE)
        .args(["rule", "new", "--lang", "assemblyscript", "hello-as", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let project = dir.path().join("hello-as");
    let out = Command::new(SLUICE).args(["rule", "build"]).arg(&project).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let package = Package::read(&project.join("build/hello-as.wasm")).unwrap();
    assert_eq!(package.manifest.language, "assemblyscript");
    let engine = Engine::new(None).unwrap();
    let mut config = Config::zero_config();
    config.rules_dir = Some(project.join("build"));
    let chain = load_chain(&config, None, &engine).unwrap();
    let req = Request { path: vec!["hello".into(), "a".into()], ..Request::default() };
    assert!(matches!(chain.route(&req, &Principal::new("d")), Route::Publish(p) if p.topic == "hello/a"));
}
