//! Misbehaving Wasm rules inside a running gateway, in both languages: while one device makes
//! the rule trap, loop, exhaust its memory, touch memory out of bounds or answer nonsense, every
//! such request gets its hook's documented fail policy and another device's publishes are all
//! answered 2.04 and all delivered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use coap_lite::RequestType;
use common::*;

/// A package built by scripts/build-rules.sh.
fn package(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/rules").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run scripts/build-rules.sh first", path.display());
    path.canonicalize().unwrap()
}

/// A gateway whose chain is the fault rule, then builtin:emqx (anonymous), on mosquitto.
async fn start(rule: &str, broker: &Mosquitto) -> sluice::server::Server {
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {}\n  publish_timeout: 3s\nrules:\n  - rule: {}\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
        broker.url(),
        package(rule).display()
    );
    let config = sluice::config::Config::parse(&text, "test.yaml").unwrap_or_else(|p| panic!("{p}"));
    gateway(config).await
}

/// One CON PUT; the response code.
fn put(raw: &Raw, mid: u16, path: &str, payload: &[u8]) -> String {
    let mut req = request(RequestType::Put, true, mid, &mid.to_be_bytes(), path);
    req.payload = payload.to_vec();
    raw.send(&req.to_bytes().unwrap());
    loop {
        let answer = raw.recv_packet().unwrap_or_else(|| panic!("no answer to {path}"));
        if answer.header.message_id == mid || answer.get_token() == mid.to_be_bytes() {
            return code(&answer);
        }
    }
}

async fn faults_are_contained(rule: &str) {
    let broker = Mosquitto::start();
    let server = start(rule, &broker).await;
    const GOOD: u16 = 60;
    let sub = Sub::start(broker.port, "ok/#", usize::from(GOOD));

    // A well-behaved device publishes all along, from its own socket and task.
    let addr = server.coap_addr;
    let good = tokio::task::spawn_blocking(move || {
        let raw = Raw::new(addr);
        let mut codes = Vec::new();
        for i in 0..GOOD {
            codes.push(put(&raw, 1000 + i, &format!("ok/{i}"), format!("m{i}").as_bytes()));
            std::thread::sleep(Duration::from_millis(10));
        }
        codes
    });

    // Meanwhile another device makes the rule fail every way it can: route → 5.00.
    let bad = Raw::new(addr);
    let mut mid = 1;
    for _ in 0..2 {
        for path in ["trap", "loop", "memory", "oob", "bigout", "badtopic"] {
            mid += 1;
            assert_eq!(put(&bad, mid, path, b"x"), "5.00", "{rule}: /{path}");
        }
    }
    // A failing uplink drops the message and says so: 5.00, and nothing reaches the broker.
    mid += 1;
    assert_eq!(put(&bad, mid, "ok/dropped", b"trap"), "5.00", "{rule}: uplink trap");

    let codes = good.await.unwrap();
    assert!(codes.iter().all(|c| c == "2.04"), "{rule}: the good device got {codes:?}");
    let mut lines = sub.lines();
    lines.sort();
    let mut expected: Vec<String> = (0..GOOD).map(|i| format!("ok/{i} m{i}")).collect();
    expected.sort();
    assert_eq!(lines, expected, "{rule}: every good publish is delivered, the dropped one is not");

    let stats = server.chain().wasm_stats();
    let failures: u64 = stats.iter().map(|(_, s)| s.failures).sum();
    assert!(failures >= 13, "{rule}: failures counted: {stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rust_rule_is_contained_while_others_are_served() {
    faults_are_contained("fault").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_assemblyscript_rule_is_contained_while_others_are_served() {
    faults_are_contained("fault-as").await;
}

/// A rule swap leaves the listeners, the MQTT connection and the observers as they were: an
/// observer registered before a package is added and a SIGHUP reload keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_survive_rule_swaps() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::copy(package("fault"), rules.join("fault.wasm")).unwrap();
    let path = dir.path().join("sluice.yaml");
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {}\nrules_dir: rules\nrules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
        broker.url()
    );
    std::fs::write(&path, text).unwrap();
    let config = sluice::config::Config::load(&path).unwrap();
    let server = sluice::server::start_from(config, Some(&path)).await.unwrap();

    let target = url(&server, "mqtt/obs/t?c=observer1");
    let observer = coap_client_spawn(&["-m", "get", "-s", "8", "-B", "10", "-o", "-", &target]);
    assert!(eventually(|| server.gateway().observer_count() == 1).await, "the observer registered");
    mqtt_pub(broker.port, "obs/t", "before", &[]);

    // A package is added by copying it in, then everything is reloaded as on SIGHUP.
    let mut status = server.rules_status();
    std::fs::copy(package("fault-as"), rules.join("fault-as.wasm")).unwrap();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.count >= 1)).await.unwrap().unwrap();
    server.reload_rules();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.count >= 2)).await.unwrap().unwrap();
    let names: Vec<String> = server.chain().rules().iter().map(|r| r.name.clone()).collect();
    assert!(names.contains(&"fault-as".to_string()) && names.contains(&"fault".to_string()), "{names:?}");
    assert_eq!(server.gateway().observer_count(), 1, "the observer is still registered");

    mqtt_pub(broker.port, "obs/t", "after", &[]);
    // The device still publishes through the new chain.
    let sub = Sub::start(broker.port, "ok/#", 1);
    let raw = Raw::new(server.coap_addr);
    assert_eq!(put(&raw, 7, "ok/still", b"x"), "2.04");
    assert_eq!(sub.lines(), vec!["ok/still x"]);

    let out = observer.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("before") && text.contains("after"), "the observer got: {text:?}");
    server.shutdown().await;
}
