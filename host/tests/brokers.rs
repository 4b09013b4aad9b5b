//! Brokers other than mosquitto on MQTT 5: NATS (its MQTT interface speaks 3.1.1 only, Debian's
//! `nats-server` with JetStream) and mosquitto spoken to in 3.1.1. libcoap's client on the CoAP
//! side, `mosquitto_sub`/`mosquitto_pub` on the MQTT side: a PUT reaches a subscriber, an
//! observer gets what is published, a `/ps` value is set and read back; `mqtt.protocol: auto`
//! finds 3.1.1 by itself and a fixed protocol the broker refuses is reported with its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A gateway on `broker` (with `protocol`, if given) that has connected to it.
async fn connected_gateway(broker: &str, protocol: Option<&str>) -> sluice::server::Server {
    let mut config = config(broker, "anonymous: true");
    if let Some(protocol) = protocol {
        config.mqtt.protocol = match protocol {
            "v3.1.1" => sluice::config::MqttProtocol::V311,
            "v5" => sluice::config::MqttProtocol::V5,
            _ => sluice::config::MqttProtocol::Auto,
        };
    }
    let gw = gateway(config).await;
    wait_broker_connected(&gw).await;
    gw
}

/// PUT → subscriber, MQTT publish → observer, `/ps` PUT then GET; on a gateway connected to
/// the broker on `port`.
async fn put_observe_and_pubsub(gw: &sluice::server::Server, port: u16) {
    let sub = Sub::start(port, "dev/t", 1);
    let out = coap_client(&["-m", "put", "-e", "21.5", &url(gw, "mqtt/dev/t?c=d1")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    assert_eq!(sub.lines(), vec!["dev/t 21.5"]);

    let observer = coap_client_spawn(&["-m", "get", "-s", "6", "-B", "8", "-o", "-", &url(gw, "mqtt/cmd/d2?c=d2")]);
    assert!(eventually(|| gw.gateway().observer_count() == 1).await, "the observer was not registered");
    for n in 1..=3 {
        mqtt_pub(port, "cmd/d2", &format!("go-{n}"), &[]);
    }
    // coap-client writes the notifications' payloads one after the other, at its exit (-s 6).
    let out = tokio::time::timeout(Duration::from_secs(20), observer.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("go-").count(), 3, "three notifications, none twice: {stdout:?}");
    let at = |m: &str| stdout.find(m).unwrap_or_else(|| panic!("no {m} in {stdout:?}"));
    assert!(at("go-1") < at("go-2") && at("go-2") < at("go-3"), "out of order: {stdout:?}");

    let out = coap_client(&["-m", "put", "-e", "{\"t\":7}", &url(gw, "ps/v/d3?c=d3")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let out = coap_client(&["-m", "get", &url(gw, "ps/v/d3?c=d4")]).await;
    assert!(out.stdout.contains("{\"t\":7}"), "the value was not read back: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_is_found_to_speak_3_1_1_and_serves_put_observe_and_pubsub() {
    let nats = Nats::start();
    let gw = connected_gateway(&nats.url(), None).await;
    let text = metrics_answer(gw.admin_addr.unwrap()).await;
    assert!(text.contains("sluice_mqtt_protocol{version=\"3.1.1\"} 1"), "{text}");
    put_observe_and_pubsub(&gw, nats.port).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_spoken_to_in_3_1_1_serves_the_same() {
    let broker = Mosquitto::start();
    let gw = connected_gateway(&broker.url(), Some("v3.1.1")).await;
    let text = metrics_answer(gw.admin_addr.unwrap()).await;
    assert!(text.contains("sluice_mqtt_protocol{version=\"3.1.1\"} 1"), "{text}");
    put_observe_and_pubsub(&gw, broker.port).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_on_auto_speaks_5() {
    let broker = Mosquitto::start();
    let gw = connected_gateway(&broker.url(), None).await;
    let text = metrics_answer(gw.admin_addr.unwrap()).await;
    assert!(text.contains("sluice_mqtt_protocol{version=\"5\"} 1"), "{text}");
    gw.shutdown().await;
}

/// On MQTT 3.1.1 the broker cannot expire a retained value: the gateway clears it itself
/// once its Max-Age has passed, as for the embedded broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_with_max_age_expires_on_3_1_1() {
    let nats = Nats::start();
    let gw = connected_gateway(&nats.url(), None).await;
    let out = coap_client(&["-m", "put", "-e", "soon-gone", "-O", "14,0x01", &url(&gw, "ps/v/short?c=d5")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let out = coap_client(&["-m", "get", &url(&gw, "ps/v/short?c=d5")]).await;
    assert!(out.stdout.contains("soon-gone"), "{out:?}");
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let out = coap_client(&["-m", "get", &url(&gw, "ps/v/short?c=d5")]).await;
        if out.all().contains("4.04") {
            gone = true;
            break;
        }
    }
    assert!(gone, "the value outlived its Max-Age of 1 s");
    // And the broker stops holding it once the gateway's upkeep (every 5 s) clears it: a new
    // subscriber then gets no retained message.
    let mut retained = true;
    for _ in 0..12 {
        let sub = std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &nats.port.to_string(), "-t", "v/short", "-v", "-C", "1", "-W", "1"])
            .output()
            .unwrap();
        retained = String::from_utf8_lossy(&sub.stdout).contains("soon-gone");
        if !retained {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!retained, "still retained at the broker long after its Max-Age of 1 s");
    gw.shutdown().await;
}

/// `sluice run` as a user starts it: `--mqtt mqtt://NATS` connects on 3.1.1 (logged); with
/// `mqtt.protocol: v5` fixed the log names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_logs_the_protocol_and_a_refused_version_with_its_fix() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &str| {
        let file = dir.path().join(format!("sluice{}.yaml", extra.len()));
        let text = format!(
            "coap:\n  bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {}\n{extra}rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
            nats.url()
        );
        std::fs::write(&file, text).unwrap();
        tokio::process::Command::new(SLUICE)
            .args(["run", "--config", file.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    for (extra, wanted) in [("", "mqtt=3.1.1"), ("  protocol: v5\n", "set mqtt.protocol: v3.1.1")] {
        let mut child = run(extra);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) if line.contains(wanted) => break,
                Ok(Ok(Some(line))) => seen.push(line),
                other => panic!("no {wanted:?} in the log ({other:?}):\n{}", seen.join("\n")),
            }
        }
        child.kill().await.unwrap();
    }
}

/// A broker that allows QoS 0 only: a CON PUT (QoS 1) is refused 5.02 with the setting that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_qos_1_names_the_fix_to_the_device() {
    let broker = Mosquitto::start_with(free_tcp_port(), "max_qos 0\n");
    let gw = connected_gateway(&broker.url(), None).await;
    let out = coap_client(&["-m", "put", "-e", "{\"t\":21.5,\"room\":\"kitchen\"}", &url(&gw, "mqtt/q/t?c=q1")]).await;
    assert!(out.all().contains("5.02"), "{out:?}");
    assert!(out.all().contains("set mqtt.publish_qos: 0"), "the answer names the fix: {out:?}");
    gw.shutdown().await;
}

/// amqtt (PyPI), a broker that speaks MQTT 3.1.1 only and never answers an MQTT 5 CONNECT.
struct Amqtt {
    port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Amqtt {
    async fn start() -> Amqtt {
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let file = dir.path().join("amqtt.yaml");
        std::fs::write(
            &file,
            format!(
                "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\nplugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("amqtt")
            .arg("-c")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("amqtt: {e} (the README's test command installs it: pip install amqtt)"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "amqtt did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Amqtt { port, _child: child, _dir: dir }
    }
}

/// With `mqtt.protocol: v5` fixed, the gateway says amqtt's silence may be a 3.1.1-only broker
/// and names the fix, and a device meanwhile is told the gateway is not connected (not that the
/// broker was slow); on `auto` it falls back to 3.1.1 by itself and a PUT reaches amqtt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqtt_that_never_answers_mqtt_5_is_reported_with_the_fix_and_auto_falls_back() {
    use common::process::Sluice;
    let amqtt = Amqtt::start().await;
    let rules = "rules:\n  - rule: builtin:emqx\n    config: {anonymous: true}\n";
    let fixed = format!("mqtt:\n  protocol: v5\n  publish_timeout: 1s\n{rules}");
    let mut gw = Sluice::start(amqtt.port, Some(&fixed), &[], "CoAP listening on UDP").await;
    let out = coap_client(&["-m", "put", "-e", "1", &gw.url("mqtt/am/t?c=a1")]).await;
    assert!(out.all().contains("5.03") && out.all().contains("not connected to the MQTT broker"), "{out:?}");
    gw.wait_for("no CONNACK within 10 s", Duration::from_secs(30)).await;
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("no CONNACK within 10 s")).unwrap();
    assert!(line.contains("try mqtt.protocol: v3.1.1 (or auto)"), "the fix is named: {line}");
    drop(gw);

    let sub = tokio::process::Command::new(common::find("mosquitto_sub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &amqtt.port.to_string(),
            "-V",
            "mqttv311",
            "-t",
            "am/t",
            "-v",
            "-C",
            "1",
            "-W",
            "40",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut gw = Sluice::start(amqtt.port, Some(rules), &[], "CoAP listening on UDP").await;
    gw.wait_for("mqtt=3.1.1", Duration::from_secs(30)).await;
    let out = coap_client(&["-m", "put", "-e", "hello-amqtt", &gw.url("mqtt/am/t?c=a2")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let got = tokio::time::timeout(Duration::from_secs(40), sub.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "am/t hello-amqtt");
}
