//! The admin HTTP API against a real gateway: requests from libcoap's client, a raw socket and
//! mosquitto move the `/metrics` series by the expected amounts; `/healthz` follows the broker;
//! `/rules` lists the chain; a trapping Wasm rule shows under its version; no secret leaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use coap_lite::RequestType;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER_PASSWORD: &str = "pw-Zebra-4242";
const BROKER_PASSWORD: &str = "mqtt-Pass-7777";
const PSK: &str = "secretkey1";

fn users() -> String {
    format!(
        "anonymous: false\nusers:\n  - username: tom\n    password: {USER_PASSWORD}\n    publish: [\"a/#\", \"devices/${{clientid}}/#\"]\n    subscribe: [\"a/#\"]"
    )
}

/// One HTTP/1.1 request; (status, head, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

async fn metrics(addr: SocketAddr) -> String {
    let (status, head, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body
}

/// The value of one series (`name{labels}` exactly as rendered); `None` when absent.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `series` reads `expected` (counters move after the answer is sent).
async fn settles(addr: SocketAddr, series: &str, expected: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(addr).await;
        if value(&text, series) == Some(expected) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} never read {expected}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_responses_publishes_notifications_and_drops() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), &users())).await;
    let admin = gw.admin_addr.expect("the admin API runs");
    assert!(admin.ip().is_loopback() && admin.port() != 0);

    // A CON PUT: a QoS 1 publish acknowledged by the broker, answered 2.04.
    let sub = Sub::start(broker.port, "a/t", 1);
    let target = url(&gw, &format!("mqtt/a/t?c=c1&u=tom&p={USER_PASSWORD}"));
    let out = coap_client(&["-m", "put", "-e", "hello", &target]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    assert_eq!(sub.lines(), vec!["a/t hello"]);
    // A wrong password: 4.01 before any route.
    let out = coap_client(&["-m", "put", "-e", "x", &url(&gw, "mqtt/a/t?c=c1&u=tom&p=wrong")]).await;
    assert!(out.all().contains("4.01"), "{out:?}");
    // An observer, then one message for it: a CON notification.
    let target = url(&gw, &format!("mqtt/a/obs?c=c2&u=tom&p={USER_PASSWORD}"));
    let mut observer = coap_client_spawn(&["-m", "get", "-s", "20", "-B", "20", "-o", "-", &target]);
    assert!(eventually(|| gw.gateway().observer_count() == 1).await, "the observer registered");
    mqtt_pub(broker.port, "a/obs", "n1", &[]);
    // A datagram that is not CoAP.
    let raw = Raw::new(gw.coap_addr);
    raw.send(&[0x40]);

    let text = settles(admin, "sluice_notifications_total{type=\"con\"}", 1.0).await;
    let text = if value(&text, "sluice_drops_total{reason=\"malformed\"}") == Some(1.0) {
        text
    } else {
        settles(admin, "sluice_drops_total{reason=\"malformed\"}", 1.0).await
    };
    println!("{text}");
    let expect = [
        ("sluice_coap_requests_total{transport=\"udp\",method=\"PUT\"}", 2.0),
        ("sluice_coap_requests_total{transport=\"udp\",method=\"GET\"}", 1.0),
        ("sluice_coap_requests_total{transport=\"udp\",method=\"POST\"}", 0.0),
        ("sluice_coap_responses_total{transport=\"udp\",code=\"2.04\",action=\"publish\"}", 1.0),
        ("sluice_coap_responses_total{transport=\"udp\",code=\"4.01\",action=\"none\"}", 1.0),
        ("sluice_coap_responses_total{transport=\"udp\",code=\"2.05\",action=\"subscribe\"}", 1.0),
        ("sluice_publishes_total{qos=\"1\",result=\"ok\"}", 1.0),
        ("sluice_publishes_total{qos=\"0\",result=\"ok\"}", 0.0),
        ("sluice_publishes_total{qos=\"1\",result=\"queue_full\"}", 0.0),
        ("sluice_notifications_total{type=\"con\"}", 1.0),
        ("sluice_notifications_total{type=\"non\"}", 0.0),
        ("sluice_drops_total{reason=\"malformed\"}", 1.0),
        ("sluice_drops_total{reason=\"mqtt_queue_full\"}", 0.0),
        ("sluice_drops_total{reason=\"uplink_rule\"}", 0.0),
        ("sluice_observers", 1.0),
        ("sluice_mqtt_connected", 1.0),
        ("sluice_mqtt_queue_depth", 0.0),
        ("sluice_mqtt_reconnects_total", 0.0),
        ("sluice_request_duration_seconds_count{action=\"publish\"}", 1.0),
        ("sluice_request_duration_seconds_bucket{action=\"publish\",le=\"+Inf\"}", 1.0),
        ("sluice_request_duration_seconds_count{action=\"none\"}", 1.0),
        ("sluice_request_duration_seconds_count{action=\"subscribe\"}", 1.0),
        ("sluice_rule_reloads_total{result=\"ok\"}", 0.0),
    ];
    for (series, expected) in expect {
        assert_eq!(value(&text, series), Some(expected), "{series}:\n{text}");
    }
    // Three requests, the malformed datagram, and the client's ACK of the CON notification.
    assert!(value(&text, "sluice_coap_datagrams_total{transport=\"udp\"}").unwrap() >= 4.0, "{text}");
    let version = &gw.chain().rules()[0].version;
    let failures = format!("sluice_rule_failures_total{{rule=\"builtin:emqx\",version=\"{version}\"}}");
    assert_eq!(value(&text, &failures), Some(0.0), "{text}");
    // Every family has its HELP and TYPE; no DTLS series without DTLS.
    for (name, kind) in [
        ("sluice_coap_requests_total", "counter"),
        ("sluice_coap_responses_total", "counter"),
        ("sluice_publishes_total", "counter"),
        ("sluice_notifications_total", "counter"),
        ("sluice_drops_total", "counter"),
        ("sluice_mqtt_queue_depth", "gauge"),
        ("sluice_mqtt_reconnects_total", "counter"),
        ("sluice_mqtt_connected", "gauge"),
        ("sluice_mqtt_protocol", "gauge"),
        ("sluice_observers", "gauge"),
        ("sluice_rule_calls_total", "counter"),
        ("sluice_rule_traps_total", "counter"),
        ("sluice_rule_timeouts_total", "counter"),
        ("sluice_rule_failures_total", "counter"),
        ("sluice_request_duration_seconds", "histogram"),
        ("sluice_rule_reloads_total", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
    assert!(!text.contains("sluice_dtls_"), "{text}");
    // The histogram's buckets are cumulative.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("sluice_request_duration_seconds_bucket{action=\"publish\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 15);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    observer.kill().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_rules_and_errors() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), "anonymous: true")).await;
    let admin = gw.admin_addr.unwrap();

    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    assert_eq!(http(admin, "GET", "/healthz").await.2, "ok\n");
    let (status, head, body) = http(admin, "HEAD", "/metrics").await;
    assert_eq!((status, body.as_str()), (200, ""), "{head}");

    let (status, head, body) = http(admin, "GET", "/rules").await;
    assert_eq!(status, 200);
    assert!(head.contains("application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rules = json["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{json}");
    assert_eq!(rules[0]["name"], "builtin:emqx");
    assert_eq!(rules[0]["kind"], "native");
    assert_eq!(rules[0]["version"], gw.chain().rules()[0].version.as_str());
    assert_eq!(json["last_reload"]["count"], 0);
    assert_eq!(json["last_reload"]["result"], "none");

    let (status, _, body) = http(admin, "GET", "/nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, head, _) = http(admin, "POST", "/metrics").await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, _, _) = http(admin, "DELETE", "/rules").await;
    assert_eq!(status, 405);

    // A malformed request line, and a head larger than the bound.
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream.write_all(b"nonsense\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));

    // The broker goes away: not healthy, and the gauge says so.
    drop(broker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, body) = http(admin, "GET", "/healthz").await;
        if status == 503 {
            assert!(body.contains("MQTT"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still healthy without a broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value(&metrics(admin).await, "sluice_mqtt_connected"), Some(0.0));
    gw.shutdown().await;
}

/// A package built by scripts/build-rules.sh.
fn package(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/rules").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run scripts/build-rules.sh first", path.display());
    path.canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_wasm_rule_shows_under_its_version() {
    let broker = Mosquitto::start();
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {}\n  publish_timeout: 3s\nrules:\n  - rule: {}\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
        broker.url(),
        package("fault").display()
    );
    let gw = gateway(sluice::config::Config::parse(&text, "test.yaml").unwrap()).await;
    let admin = gw.admin_addr.unwrap();
    let info = gw.chain().rules()[0].clone();
    assert_eq!(info.name, "fault");

    let raw = Raw::new(gw.coap_addr);
    let req = request(RequestType::Put, true, 7, b"t7", "trap");
    raw.send(&req.to_bytes().unwrap());
    assert_eq!(code(&raw.recv_packet().unwrap()), "5.00");

    let labels = format!("{{rule=\"fault\",version=\"{}\"}}", info.version);
    let text = settles(admin, &format!("sluice_rule_traps_total{labels}"), 1.0).await;
    assert_eq!(value(&text, &format!("sluice_rule_timeouts_total{labels}")), Some(0.0), "{text}");
    assert!(value(&text, &format!("sluice_rule_calls_total{labels}")).unwrap() >= 1.0, "{text}");
    assert!(value(&text, &format!("sluice_rule_failures_total{labels}")).unwrap() >= 1.0, "{text}");
    assert_eq!(
        value(&text, "sluice_coap_responses_total{transport=\"udp\",code=\"5.00\",action=\"none\"}"),
        Some(1.0),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&http(admin, "GET", "/rules").await.2).unwrap();
    let fault = &json["rules"][0];
    assert_eq!(fault["kind"], "wasm");
    assert_eq!(fault["version"], info.version.as_str());
    assert_eq!(fault["sha256"], info.sha256.clone().unwrap().as_str());
    assert_eq!(fault["traps"], 1);
    assert_eq!(json["rules"][1]["name"], "builtin:emqx");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_metrics_or_rules() {
    let broker = Mosquitto::start();
    let mut config = config(&broker.url(), &users());
    config.mqtt.username = Some("gateway".into());
    config.mqtt.password = Some(BROKER_PASSWORD.into());
    let gw = gateway(config).await;
    let admin = gw.admin_addr.unwrap();

    let out = coap_client(&[
        "-m",
        "post",
        &url(&gw, &format!("mqtt/connection?clientid=dev9&username=tom&password={USER_PASSWORD}")),
    ])
    .await;
    let token = out.stdout.trim().to_string();
    assert_eq!(token.len(), 32, "{out:?}");
    let out =
        coap_client(&["-m", "put", "-e", "42", &url(&gw, &format!("mqtt/devices/dev9/t?clientid=dev9&token={token}"))])
            .await;
    assert!(!out.all().contains("4."), "{out:?}");

    let text =
        settles(admin, "sluice_coap_responses_total{transport=\"udp\",code=\"2.01\",action=\"connect\"}", 1.0).await;
    let rules = http(admin, "GET", "/rules").await.2;
    for secret in [token.as_str(), USER_PASSWORD, BROKER_PASSWORD] {
        assert!(!text.contains(secret), "{secret} in /metrics");
        assert!(!rules.contains(secret), "{secret} in /rules");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_handshakes_and_sessions_are_counted_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let psk_file = dir.path().join("psk.txt");
    std::fs::write(&psk_file, format!("dev1:{PSK}\n")).unwrap();
    let dtls = format!("psk_file: {}", psk_file.display());
    let gw = gateway(dtls_config("embedded", &dtls, "anonymous: false\nclientid_from_identity: true")).await;
    let admin = gw.admin_addr.unwrap();
    let target = coaps_url(&gw, ".well-known/core");

    let good = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", PSK, &target]).await;
    assert!(good.stdout.contains("</mqtt>"), "{good:?}");
    let wrong = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", "wrongkey", &target]).await;
    assert!(!wrong.stdout.contains("</mqtt>"), "{wrong:?}");

    let text = settles(admin, "sluice_dtls_handshakes_total{result=\"failed\"}", 1.0).await;
    assert_eq!(value(&text, "sluice_dtls_handshakes_total{result=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "sluice_coap_requests_total{transport=\"dtls\",method=\"GET\"}"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "sluice_coap_responses_total{transport=\"dtls\",code=\"2.05\",action=\"well_known\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(value(&text, "sluice_dtls_sessions").is_some(), "{text}");
    assert!(!text.contains(PSK), "the PSK in /metrics");
    assert!(!http(admin, "GET", "/rules").await.2.contains(PSK), "the PSK in /rules");
    gw.shutdown().await;
}

/// `sluice run --admin-bind ADDR` serves the API there; `--admin-bind` with a bad address
/// names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_serves_the_admin_api_on_admin_bind() {
    const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
    let bad = std::process::Command::new(SLUICE).args(["run", "--admin-bind", "localhost"]).output().unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--admin-bind") && stderr.contains("127.0.0.1:9184"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
        free_tcp_port()
    );
    std::fs::write(&file, text).unwrap();
    let port = free_tcp_port();
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(SLUICE)
        .args(["run", "--config", file.to_str().unwrap(), "--admin-bind", &admin.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no admin API on {admin}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    assert!(metrics(admin).await.contains("sluice_mqtt_connected 1"));
    child.kill().await.unwrap();
}

/// Reloads are counted by result, and `/rules` shows the last one's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted_and_the_last_one_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let path = dir.path().join("sluice.yaml");
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nrules_dir: rules\nrules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
        free_tcp_port()
    );
    std::fs::write(&path, text).unwrap();
    let config = sluice::config::Config::load(&path).unwrap();
    let gw = sluice::server::start_from(config, Some(&path)).await.unwrap();
    let admin = gw.admin_addr.unwrap();
    let mut status = gw.rules_status();

    std::fs::copy(package("fault"), rules.join("fault.wasm")).unwrap();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.count >= 1)).await.unwrap().unwrap();
    settles(admin, "sluice_rule_reloads_total{result=\"ok\"}", 1.0).await;
    let json: serde_json::Value = serde_json::from_str(&http(admin, "GET", "/rules").await.2).unwrap();
    assert_eq!(json["last_reload"]["result"], "ok", "{json}");
    assert_eq!(json["last_reload"]["changes"][0]["change"], "added", "{json}");
    assert_eq!(json["last_reload"]["changes"][0]["rule"]["name"], "fault", "{json}");

    std::fs::copy(package("broken-rust-no-init"), rules.join("broken.wasm")).unwrap();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.count >= 2)).await.unwrap().unwrap();
    let text = settles(admin, "sluice_rule_reloads_total{result=\"refused\"}", 1.0).await;
    assert_eq!(value(&text, "sluice_rule_reloads_total{result=\"ok\"}"), Some(1.0), "{text}");
    let json: serde_json::Value = serde_json::from_str(&http(admin, "GET", "/rules").await.2).unwrap();
    assert_eq!(json["last_reload"]["result"], "refused", "{json}");
    assert_eq!(json["last_reload"]["changes"][0]["change"], "refused", "{json}");
    gw.shutdown().await;
}

/// `coap.drivers: 2`: two sockets share the port (`SO_REUSEPORT`); every device is answered
/// by the one the kernel gives it, Observe relations on both get their notifications, and the
/// admin API reports the listener as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_udp_drivers_share_the_port_and_serve_every_device() {
    let broker = Mosquitto::start();
    let mut config = config(&broker.url(), "anonymous: true");
    config.coap.drivers = 2;
    let gw = gateway(config).await;
    let admin = gw.admin_addr.expect("the admin API runs");
    let port = format!(":{:04X} ", gw.coap_addr.port());
    let udp = std::fs::read_to_string("/proc/net/udp").unwrap();
    let sockets = udp.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(port.trim()))).count();
    assert_eq!(sockets, 2, "two sockets on {port}:\n{udp}");

    // 32 devices (source ports): the kernel spreads them over both sockets.
    const DEVICES: usize = 32;
    let sub = Sub::start(broker.port, "multi/#", DEVICES);
    for i in 0..DEVICES {
        let raw = Raw::new(gw.coap_addr);
        let req = request(RequestType::Put, true, i as u16, &[i as u8], &format!("mqtt/multi/{i}?c=d{i}"));
        raw.send(&req.to_bytes().unwrap());
        let answer = raw.recv_packet().expect("no answer");
        assert_eq!(code(&answer), "2.04", "device {i}");
        assert_eq!(answer.header.message_id, i as u16);
    }
    let mut got = sub.lines();
    got.sort_by_key(|l| l.split(['/', ' ']).nth(1).and_then(|n| n.parse::<usize>().ok()));
    let want: Vec<String> = (0..DEVICES).map(|i| format!("multi/{i} ")).collect();
    assert_eq!(got.len(), DEVICES, "{got:?}");
    for (line, prefix) in got.iter().zip(&want) {
        assert!(line.starts_with(prefix), "{got:?}");
    }

    // Observers on whichever driver the kernel picks: each gets the notification.
    let observers: Vec<Raw> = (0..8)
        .map(|i| {
            let raw = Raw::verified(gw.coap_addr);
            let mut req = request(RequestType::Get, false, 1, &[b'o', i], &format!("mqtt/multi/obs?c=o{i}"));
            req.set_observe_value(0);
            raw.send(&req.to_bytes().unwrap());
            let reg = raw.recv_packet().expect("no registration answer");
            assert!(reg.get_observe_value().is_some(), "observer {i}: {}", code(&reg));
            raw
        })
        .collect();
    settles(admin, "sluice_observers", 8.0).await;
    mqtt_pub(broker.port, "multi/obs", "to-all", &[]);
    for (i, raw) in observers.iter().enumerate() {
        let n = raw.recv_packet().expect("no notification");
        assert_eq!(String::from_utf8_lossy(&n.payload), "to-all", "observer {i}");
    }
    // 32 PUTs, and per observer the verification (a registration, the ACK of its CON answer,
    // the deregistration: see `Raw::verified`) and the registration.
    settles(admin, "sluice_coap_datagrams_total{transport=\"udp\"}", (DEVICES + 8 * 4) as f64).await;
    gw.shutdown().await;
}

/// The README's "Operate" commands, run as one bash script with the binary under test on PATH.
/// Only the ports move (the gateway's 5683, 1883 and 9184), which other services may hold.
#[test]
fn the_readmes_operate_commands_work_as_written() {
    use common::cli::{SLUICE, text, workspace};
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let from = readme.find("### Operate").expect("the README's Operate section");
    let block = &readme[from..];
    let start = block.find("```sh\n").unwrap() + "```sh\n".len();
    let commands = &block[start..start + block[start..].find("\n```\n").unwrap()];
    assert!(commands.contains("sluice trace") && commands.contains("DELETE"), "{commands}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = commands
        .replace("127.0.0.1:5683", &format!("127.0.0.1:{udp}"))
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", free_tcp_port()))
        .replace("127.0.0.1:9184", &format!("127.0.0.1:{}", free_tcp_port()));
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
    let bin = std::path::Path::new(SLUICE).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new("bash").args(["-e", "-c", &script]).env("PATH", path).output().unwrap();
    let text = text(&out);
    assert!(out.status.success(), "the README's commands failed:\n{text}");
    // The listing, the observer, the refusal, the trace and the kick, in that order.
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"));
    let listed = at("\"client_id\": \"dev-42\"");
    let observer = at("\"filter\": \"sensors/t1\"");
    let refusal = at("wildcards are not allowed");
    let traced = at("2.04 PUT /ps/sensors/t1");
    let kicked = at("\"observers_ended\": 1");
    assert!(listed < observer && observer < refusal && refusal < traced && traced < kicked, "{text}");
    assert!(text.contains("authenticate: builtin:emqx → allow") && text.contains("mqtt: published"), "{text}");
    assert!(text.contains("4.04 ended by an operator"), "the watcher was not told:\n{text}");
}
