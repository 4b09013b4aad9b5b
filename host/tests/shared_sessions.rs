//! Connection-mode sessions shared by the gateways of a deployment (`sessions.secret`): a token
//! opened on one gateway works on another (a device its balancer moved, or whose gateway
//! died), and logging in again or out voids the old token on every gateway, through the
//! broker's retained revocation records. Two real gateways on one real broker (mosquitto on
//! MQTT 5, NATS on 3.1.1), libcoap's client on the CoAP side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use sluice::server::Server;

const USERS: &str = "anonymous: false
users:
  - username: tom
    password: secret
    publish: [\"devices/${clientid}/#\", \"sluice/#\"]
    subscribe: [\"devices/${clientid}/#\"]";

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A gateway on `broker` whose sessions are signed with `secret`.
async fn gateway_with(broker: &str, secret: Option<&str>) -> Server {
    let mut config = config(broker, USERS);
    if let Some(secret) = secret {
        let text = format!("sessions:\n  secret: {secret}\n");
        config.sessions = sluice::config::Config::parse(&text, "test.yaml").unwrap().sessions;
    }
    let gw = gateway(config).await;
    wait_broker_connected(&gw).await;
    gw
}

async fn login(gw: &Server) -> String {
    let out =
        coap_client(&["-m", "post", &url(gw, "mqtt/connection?clientid=dev1&username=tom&password=secret")]).await;
    let token = out.stdout.trim().to_string();
    assert!(!token.is_empty() && !out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    token
}

/// The answer to a PUT with `token` on `gw`: empty when it was 2.04.
async fn put(gw: &Server, token: &str, payload: &str) -> String {
    let path = format!("mqtt/devices/dev1/t?clientid=dev1&token={token}");
    coap_client(&["-m", "put", "-e", payload, &url(gw, &path)]).await.all()
}

/// Waits until a PUT with `token` on `gw` is refused 4.01 (a revocation travels through the
/// broker); false after 10 s.
async fn refused_soon(gw: &Server, token: &str) -> bool {
    for _ in 0..50 {
        if put(gw, token, "x").await.contains("4.01") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn two_gateways_share_sessions(broker: &str, port: u16) {
    let a = gateway_with(broker, Some(SECRET)).await;
    let b = gateway_with(broker, Some(SECRET)).await;

    // Opened on A, used on B: the message reaches the broker.
    let first = login(&a).await;
    assert_ne!(first.len(), 32, "a signed token, not a random one: {first}");
    let sub = Sub::start(port, "devices/dev1/t", 1);
    let answer = put(&b, &first, "on-b").await;
    assert!(!answer.contains("4.") && !answer.contains("5."), "B did not take A's token: {answer}");
    assert_eq!(sub.lines(), vec!["devices/dev1/t on-b"]);
    let heartbeat = format!("mqtt/connection?clientid=dev1&token={first}");
    let out = coap_client(&["-m", "put", &url(&b, &heartbeat)]).await;
    assert!(!out.all().contains("4."), "heartbeat on B: {out:?}");

    // Logging in again on A voids the first token on B too.
    let second = login(&a).await;
    assert!(refused_soon(&b, &first).await, "B still takes the replaced token");
    let answer = put(&b, &second, "second").await;
    assert!(!answer.contains("4.") && !answer.contains("5."), "{answer}");

    // Closing on B voids the token on A.
    let close = format!("mqtt/connection?clientid=dev1&token={second}");
    let out = coap_client(&["-m", "delete", &url(&b, &close)]).await;
    assert!(!out.all().contains("4."), "{out:?}");
    assert!(refused_soon(&a, &second).await, "A still takes the closed token");
    assert!(put(&b, &second, "x").await.contains("4.01"));

    // A gateway that starts later learns the revocations from the retained records.
    let c = gateway_with(broker, Some(SECRET)).await;
    assert!(refused_soon(&c, &second).await, "a new gateway takes a closed token");
    let third = login(&c).await;
    let answer = put(&a, &third, "third").await;
    assert!(!answer.contains("4.") && !answer.contains("5."), "{answer}");

    // Devices may not write the records, even when their rules would let them.
    let forged = format!("mqtt/sluice/sessions/x?clientid=dev1&token={third}");
    let out = coap_client(&["-m", "put", "-e", "{}", &url(&a, &forged)]).await;
    assert!(out.all().contains("4.03") && out.all().contains("reserved"), "{out:?}");

    // Without the secret (or with another one) the token is nobody's.
    let other = gateway_with(broker, Some("another deployment's secret")).await;
    assert!(put(&other, &third, "x").await.contains("4.01"));
    let unsigned = gateway_with(broker, None).await;
    assert!(put(&unsigned, &third, "x").await.contains("4.01"));

    for gw in [a, b, c, other, unsigned] {
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_mosquitto_share_signed_sessions() {
    let broker = Mosquitto::start();
    two_gateways_share_sessions(&broker.url(), broker.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_nats_share_signed_sessions() {
    let nats = Nats::start();
    two_gateways_share_sessions(&nats.url(), nats.port).await;
}

#[test]
fn a_short_or_doubled_secret_is_refused_with_the_fix() {
    let problems = sluice::config::Config::parse("sessions:\n  secret: short\n", "gw.yaml").unwrap_err().to_string();
    assert!(problems.contains("sessions.secret") && problems.contains("at least 16"), "{problems}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    let problems =
        sluice::config::Config::parse("sessions:\n  secret_file: missing.key\n", file.to_str().unwrap()).unwrap_err();
    assert!(problems.to_string().contains("sessions.secret_file"), "{problems}");
    std::fs::write(dir.path().join("s.key"), format!("{SECRET}\n")).unwrap();
    let config = sluice::config::Config::parse("sessions:\n  secret_file: s.key\n", file.to_str().unwrap()).unwrap();
    assert_eq!(config.sessions.key.as_deref(), Some(SECRET.as_bytes()), "read relative to the config, newline dropped");
}
