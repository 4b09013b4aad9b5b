//! Hot reload on a real folder: packages added (also by write-then-rename), updated, broken
//! and removed while the chain keeps answering; SIGHUP-style reloads of a bad config refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::wat_rule;
use sluice::config::{Config, RuleLimitsConfig};
use sluice::rules::package::{self, Manifest};
use sluice::rules::{Chain, Change, Engine, Reloader, start_rules};
use sluice_sdk::{Principal, Request, Route};

/// A package named `name` publishing to `topic`, whose vector expects `expect_topic`.
fn package(name: &str, version: &str, topic: &str, expect_topic: &str) -> Vec<u8> {
    package_with_limits(name, version, topic, expect_topic, RuleLimitsConfig::default())
}

fn package_with_limits(
    name: &str,
    version: &str,
    topic: &str,
    expect_topic: &str,
    limits: RuleLimitsConfig,
) -> Vec<u8> {
    let manifest = Manifest {
        name: name.into(),
        version: version.into(),
        abi: 1,
        language: "wat".into(),
        description: String::new(),
        hooks: vec![],
        config: Default::default(),
        defaults: serde_json::Value::Null,
        limits,
    };
    let vectors: Vec<sluice::rules::Vector> = serde_yaml::from_str(&format!(
        "- name: x is published\n  hook: route\n  request: {{path: x}}\n  expect: {{publish: {{topic: {expect_topic}}}}}\n"
    ))
    .unwrap();
    package::pack(&wat_rule(topic), &manifest, &vectors).unwrap()
}

fn route_x(chain: &ArcSwap<Chain>) -> Route {
    let req = Request { path: vec!["x".into()], ..Request::default() };
    chain.load_full().route(&req, &Principal::new("dev1"))
}

fn topic(chain: &ArcSwap<Chain>) -> Option<String> {
    match route_x(chain) {
        Route::Publish(p) => Some(p.topic),
        _ => None,
    }
}

/// Waits until `f` holds (the reloader debounces, so a change lands ~300 ms later).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Setup {
    dir: tempfile::TempDir,
    chain: Arc<ArcSwap<Chain>>,
    reloader: Reloader,
}

fn start(config_text: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let engine = Engine::new(None).unwrap();
    let (path, config) = match config_text {
        Some(text) => {
            // Not canonical on purpose: slots must not depend on how the folder was reached.
            let path = dir.path().join(".").join("sluice.yaml");
            std::fs::write(&path, text).unwrap();
            let config = Config::load(&path).unwrap();
            (Some(path), config)
        }
        None => {
            let mut config = Config::zero_config();
            config.rules_dir = Some(dir.path().join("rules"));
            (None, config)
        }
    };
    let (chain, reloader) = start_rules(&config, path.as_deref(), &engine).unwrap();
    Setup { dir, chain, reloader }
}

fn write_then_rename(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn packages_are_added_swapped_and_removed_while_the_chain_serves() {
    let s = start(None);
    let rules = s.dir.path().join("rules");
    assert_eq!(topic(&s.chain), None, "emqx alone does not route /x");

    write_then_rename(&rules, "hello.wasm", &package("hello", "0.1.0", "v1/x", "v1/x"));
    eventually("the package is added", || topic(&s.chain).as_deref() == Some("v1/x"));
    let status = s.reloader.status().borrow().clone();
    assert!(status.changes.iter().any(|c| matches!(c, Change::Added(i) if i.name == "hello")), "{status:?}");

    // Overwritten in place: swapped, with both versions known.
    std::fs::write(rules.join("hello.wasm"), package("hello", "0.2.0", "v2/x", "v2/x")).unwrap();
    eventually("the package is swapped", || topic(&s.chain).as_deref() == Some("v2/x"));
    let status = s.reloader.status().borrow().clone();
    assert!(
        status
            .changes
            .iter()
            .any(|c| matches!(c, Change::Swapped { old, new } if old.version == "0.1.0" && new.version == "0.2.0")),
        "{status:?}"
    );
    let info = s.chain.load_full().rules();
    assert_eq!(info[0].version, "0.2.0");
    assert_eq!(info[1].name, "builtin:emqx");

    std::fs::remove_file(rules.join("hello.wasm")).unwrap();
    eventually("the package is removed", || topic(&s.chain).is_none());
    assert_eq!(s.chain.load_full().rules().len(), 1);
}

#[test]
fn a_broken_update_is_refused_and_the_old_version_keeps_serving() {
    let s = start(None);
    let rules = s.dir.path().join("rules");
    write_then_rename(&rules, "hello.wasm", &package("hello", "0.1.0", "v1/x", "v1/x"));
    eventually("the package is added", || topic(&s.chain).as_deref() == Some("v1/x"));
    let count = s.reloader.status().borrow().count;

    // Not a package at all.
    write_then_rename(&rules, "hello.wasm", b"garbage");
    let status = s.reloader.wait_for(count + 1, Duration::from_secs(10)).unwrap();
    let refused = status.refused();
    assert_eq!(refused.len(), 1, "{status:?}");
    assert!(refused[0].1.contains("not a WebAssembly module"), "{refused:?}");
    assert_eq!(topic(&s.chain).as_deref(), Some("v1/x"));

    // A package that fails its own vectors.
    write_then_rename(&rules, "hello.wasm", &package("hello", "0.2.0", "v2/x", "wrong/x"));
    let status = s.reloader.wait_for(count + 2, Duration::from_secs(10)).unwrap();
    let refused = status.refused();
    assert!(refused.len() == 1 && refused[0].1.contains("test vectors fail"), "{status:?}");
    assert_eq!(topic(&s.chain).as_deref(), Some("v1/x"));
    assert_eq!(s.chain.load_full().rules()[0].version, "0.1.0");

    // A good update after the broken ones goes in.
    write_then_rename(&rules, "hello.wasm", &package("hello", "0.3.0", "v3/x", "v3/x"));
    eventually("the fixed package is swapped in", || topic(&s.chain).as_deref() == Some("v3/x"));
}

#[test]
fn files_being_written_and_dotfiles_are_ignored() {
    let s = start(None);
    let rules = s.dir.path().join("rules");
    std::fs::write(rules.join("hello.wasm.tmp"), package("hello", "0.1.0", "v1/x", "v1/x")).unwrap();
    std::fs::write(rules.join(".hidden.wasm"), package("hidden", "0.1.0", "h/x", "h/x")).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.reloader.status().borrow().count, 0, "no reload for ignored files");
    assert_eq!(topic(&s.chain), None);
}

#[test]
fn sighup_rereads_the_config_and_refuses_a_bad_one() {
    let s = start(Some("rules_dir: rules\nrules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n"));
    let config = s.dir.path().join("sluice.yaml");
    let rules = s.dir.path().join("rules");
    std::fs::write(rules.join("a.wasm"), package("a", "0.1.0", "a/x", "a/x")).unwrap();
    eventually("the package is added", || topic(&s.chain).as_deref() == Some("a/x"));

    // Reloading with nothing changed reuses every rule as it is.
    let count = s.reloader.status().borrow().count;
    s.reloader.reload_now();
    let status = s.reloader.wait_for(count + 1, Duration::from_secs(10)).unwrap();
    assert!(status.changes.is_empty() && status.error.is_none(), "{status:?}");

    // A config naming the package with a pin that does not match: refused as a whole.
    let count = s.reloader.status().borrow().count;
    std::fs::write(&config, format!("rules_dir: rules\nrules:\n  - rule: a\n    sha256: \"{}\"\n", "00".repeat(32)))
        .unwrap();
    s.reloader.reload_now();
    let status = s.reloader.wait_for(count + 1, Duration::from_secs(10)).unwrap();
    // The file watcher may also have seen the write; wait for the last reload either way.
    std::thread::sleep(Duration::from_millis(600));
    let status = s.reloader.status().borrow().clone().error.or(status.error);
    assert!(status.as_deref().is_some_and(|e| e.contains("set sha256")), "{status:?}");
    assert_eq!(topic(&s.chain).as_deref(), Some("a/x"));
    assert_eq!(s.chain.load_full().rules().len(), 2);

    // A config that does not parse: every problem listed, the chain unchanged.
    let count = s.reloader.status().borrow().count;
    std::fs::write(&config, "rules_dir: rules\nbogus: 1\nmqtt:\n  broker: tcp://x\n").unwrap();
    s.reloader.reload_now();
    s.reloader.wait_for(count + 1, Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let error = s.reloader.status().borrow().error.clone().unwrap();
    assert!(error.contains("bogus") && error.contains("mqtt.broker"), "{error}");
    assert_eq!(topic(&s.chain).as_deref(), Some("a/x"));

    // A good config: the package is now an entry (with its right pin), emqx is gone.
    let sha = package::sha256_hex(&std::fs::read(rules.join("a.wasm")).unwrap());
    std::fs::write(&config, format!("rules_dir: rules\nrules:\n  - rule: a\n    sha256: {sha}\n")).unwrap();
    s.reloader.reload_now();
    eventually("the new config is applied", || {
        s.chain.load_full().rules().iter().map(|r| r.name.clone()).collect::<Vec<_>>() == vec!["a".to_string()]
    });
    assert_eq!(topic(&s.chain).as_deref(), Some("a/x"));
}

/// Four threads call the chain non-stop while five versions are swapped in: every call is
/// answered by one version or the next, none fails. (The deadline is raised to 1 s: with more
/// busy threads than this machine's cores plus a compile, a 10 ms wall-clock deadline is
/// sometimes missed by a descheduled thread, which is the runtime's deadline at work, not
/// the swap.)
#[test]
fn swaps_under_load_lose_no_request() {
    let s = start(None);
    let rules = s.dir.path().join("rules");
    let limits = || RuleLimitsConfig { timeout: Some("1s".into()), ..RuleLimitsConfig::default() };
    write_then_rename(&rules, "hello.wasm", &package_with_limits("hello", "0.1.0", "v0/x", "v0/x", limits()));
    eventually("the package is added", || topic(&s.chain).as_deref() == Some("v0/x"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (chain, stop) = (s.chain.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let snapshot = chain.load_full();
                    let req = Request { path: vec!["x".into()], ..Request::default() };
                    match snapshot.route(&req, &Principal::new("dev1")) {
                        Route::Publish(p) if p.topic.starts_with('v') && p.topic.ends_with("/x") => ok += 1,
                        other => {
                            failed += 1;
                            if failed < 3 {
                                eprintln!("failed: {other:?} {:?}", snapshot.wasm_stats());
                            }
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for version in 1..=5 {
        let want = format!("v{version}/x");
        let bytes = package_with_limits("hello", &format!("0.{version}.0"), &want, &want, limits());
        write_then_rename(&rules, "hello.wasm", &bytes);
        eventually("the new version serves", || topic(&s.chain).as_deref() == Some(want.as_str()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.join().unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "only {ok} calls ran");
    assert_eq!(failed, 0, "{failed} of {} calls failed during swaps", ok + failed);
}

#[test]
fn a_reload_with_nothing_changed_keeps_every_rule_as_loaded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/a.wasm"), package("a", "0.1.0", "a/x", "a/x")).unwrap();
    // Reached through a non-canonical path, as `--config ./sluice.yaml` would be.
    let path = dir.path().join(".").join("sluice.yaml");
    std::fs::write(&path, "rules_dir: rules\n").unwrap();
    let config = Config::load(&path).unwrap();
    let (chain, reloader) = start_rules(&config, Some(&path), &Engine::new(None).unwrap()).unwrap();
    assert_eq!(topic(&chain).as_deref(), Some("a/x"));
    let before = chain.load_full();
    reloader.reload_now();
    let status = reloader.wait_for(1, Duration::from_secs(10)).unwrap();
    assert!(status.changes.is_empty() && status.error.is_none(), "{status:?}");
    assert_eq!(before.rules(), chain.load_full().rules());
}

/// The whole gateway under load: a device sends CON publishes one after another while new
/// versions, a broken file and a SIGHUP-style reload go through the rules folder. Every
/// request is answered 2.04 and every payload reaches the broker exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_swaps_rules_under_load_losing_nothing() {
    use coap_lite::RequestType;

    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    write_then_rename(&rules, "load.wasm", &package("load", "0.1.0", "load/t", "load/t"));
    let path = dir.path().join("sluice.yaml");
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {}\nrules_dir: rules\nrules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
        broker.url()
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let server = sluice::server::start_from(config, Some(&path)).await.unwrap();
    assert_eq!(server.chain().rules()[0].name, "load");

    const N: u16 = 600;
    let sub = common::Sub::start(broker.port, "load/#", N as usize);
    let coap = server.coap_addr;
    let device = tokio::task::spawn_blocking(move || {
        let raw = common::Raw::new(coap);
        let mut codes = Vec::new();
        for i in 0..N {
            let mut req = common::request(RequestType::Post, true, i, &i.to_be_bytes(), "x");
            req.payload = i.to_string().into_bytes();
            raw.send(&req.to_bytes().unwrap());
            let answer = raw.recv_packet().map(|p| common::code(&p)).unwrap_or_else(|| "none".into());
            codes.push(answer);
            std::thread::sleep(Duration::from_millis(4));
        }
        codes
    });

    let folder = rules.clone();
    let chain_versions = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for version in 2..=4 {
            // Further apart than the debounce, so that each version is swapped in.
            std::thread::sleep(Duration::from_millis(500));
            write_then_rename(&folder, "load.wasm", &package("load", &format!("0.{version}.0"), "load/t", "load/t"));
            seen.push(format!("0.{version}.0"));
        }
        std::thread::sleep(Duration::from_millis(500));
        write_then_rename(&folder, "load.wasm", b"not a rule");
        std::thread::sleep(Duration::from_millis(500));
        seen
    });
    let seen = chain_versions.await.unwrap();
    server.reload_rules();
    let codes = device.await.unwrap();
    let mut rx = server.rules_status();
    let status = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.count >= 5)).await;
    let status = status.expect("five reloads").unwrap().clone();
    assert!(status.refused().iter().any(|(_, reason)| reason.contains("not a WebAssembly module")), "{status:?}");
    let failed: Vec<_> = codes.iter().enumerate().filter(|(_, c)| *c != "2.04").collect();
    assert!(failed.is_empty(), "{} of {N} requests failed: {failed:?}", failed.len());
    let mut payloads: Vec<u16> = sub.lines().iter().filter_map(|l| l.strip_prefix("load/t ")?.parse().ok()).collect();
    payloads.sort_unstable();
    assert_eq!(payloads, (0..N).collect::<Vec<_>>(), "lost or duplicated messages");
    // The last good version serves; the broken file was refused.
    assert_eq!(server.chain().rules()[0].version, *seen.last().unwrap());
    server.shutdown().await;
}
