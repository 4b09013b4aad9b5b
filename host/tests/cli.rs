//! The `sluice` binary as a user runs it: `run` with the README's commands, `check`, `passwd`,
//! and every shipped example config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first: the graceful path.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice run` as with no config, but on ephemeral ports (1883 and 5683 may be taken on a
/// shared machine): a config that sets only the embedded broker's port and the zero-config
/// rule, and `--coap-bind`.
fn run_zero_config() -> (Running, u16, u16, tempfile::TempDir) {
    let coap_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mqtt_port = free_tcp_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let text = format!(
        "mqtt:\n  embedded_bind: 127.0.0.1:{mqtt_port}\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n"
    );
    std::fs::write(&file, text).unwrap();
    let child = Command::new(SLUICE)
        .args(["run", "--config", file.to_str().unwrap(), "--coap-bind", &format!("127.0.0.1:{coap_port}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt_port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "sluice run did not start its broker");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    (Running(child), coap_port, mqtt_port, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_works_against_sluice_run() {
    let (_gw, coap, mqtt, _dir) = run_zero_config();
    let base = format!("coap://127.0.0.1:{coap}");

    // PubSub: PUT then GET prints the payload.
    let q = "c=client1&u=tom&p=secret";
    coap_client(&["-m", "put", "-e", "#{msg => \"Hello, CoAP\"}", "-t", "json", &format!("{base}/ps/coap/test?{q}")])
        .await;
    let out = coap_client(&["-m", "get", &format!("{base}/ps/coap/test?{q}")]).await;
    assert!(out.stdout.contains("#{msg => \"Hello, CoAP\"}"), "{out:?}");

    // Observe prints what mosquitto_pub publishes meanwhile.
    let target = format!("{base}/mqtt/coap/observe?c=client2&u=tom&p=secret");
    let observer = coap_client_spawn(&["-m", "get", "-s", "4", "-B", "6", "-o", "-", "-T", "token", &target]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    mqtt_pub(mqtt, "coap/observe", "Hello, observer", &[]);
    let out = observer.wait_with_output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello, observer"), "{out:?}");

    // MQTT mode PUT reaches mosquitto_sub.
    let sub = Sub::start(mqtt, "a/b", 1);
    coap_client(&["-m", "put", "-e", "hello", &format!("{base}/mqtt/a/b?c=c3&u=tom&p=secret")]).await;
    assert_eq!(sub.lines(), vec!["a/b hello"]);

    // A publish with a content format (an MQTT v5 property) and a PubSub value with a Max-Age
    // still reach an MQTT 3.1.1 subscriber of the embedded broker, which keeps serving.
    let sub = Sub::start(mqtt, "a/#", 2);
    coap_client(&["-m", "put", "-t", "json", "-e", "{\"x\":1}", &format!("{base}/mqtt/a/c?c=c4")]).await;
    coap_client(&["-m", "put", "-t", "json", "-e", "{\"y\":2}", &format!("{base}/ps/a/d?c=c4")]).await;
    assert_eq!(sub.lines(), vec!["a/c {\"x\":1}", "a/d {\"y\":2}"]);
    let sub = Sub::start(mqtt, "a/b", 1);
    coap_client(&["-m", "put", "-e", "again", &format!("{base}/mqtt/a/b?c=c3")]).await;
    assert_eq!(sub.lines(), vec!["a/b again"]);
}

#[test]
fn check_lists_every_problem_with_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "coap:\n  block_size: 1000\nmqtt:\n  broker: tcp://x\nrules:\n  - rule: builtin:nope\n")
        .unwrap();
    let out = Command::new(SLUICE).args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    for needle in ["coap.block_size", "mqtt.broker", "rules.0", "bad.yaml", "use 16", "builtin:emqx", "3 problem(s)"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn every_example_config_passes_check() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(SLUICE).args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 2, "no examples found in {}", examples.display());
}

#[test]
fn passwd_prints_a_hash_the_default_rule_accepts() {
    let out = Command::new(SLUICE).args(["passwd", "s3cret"]).output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("sha256$"), "{hash}");
    assert!(sluice_rule_emqx::verify_password(&hash, "s3cret"));
    assert!(!sluice_rule_emqx::verify_password(&hash, "other"));
}

#[test]
fn rule_bench_times_every_hook_of_the_vectors() {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/emqx/rule.yaml");
    let out = Command::new(SLUICE)
        .args(["rule", "bench", "builtin:emqx", "--calls", "10", "--vectors", vectors.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for hook in ["authenticate", "route", "authorize"] {
        let line = text.lines().find(|l| l.starts_with(hook)).unwrap_or_else(|| panic!("no {hook} in {text}"));
        let numbers: Vec<f64> = line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect();
        assert!(numbers.len() == 4 && numbers[0] >= 1.0 && numbers[1] > 0.0, "{line}");
    }
}
