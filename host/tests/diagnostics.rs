//! What devices and operators are told, checked on the text: `sluice run` as a process, the
//! log it writes and the answers libcoap's client prints.
//!
//! - the CoAP port answers at once while the broker is unreachable, and a device that needs
//!   the broker is told the gateway is not connected (not that the broker was slow);
//! - a DTLS handshake with a known identity and a wrong key is logged with the identity and
//!   the likely cause, never a key;
//! - `sluice check` says who a file lets in, and a file without `rules:` does what it says.
//!
//! (The 4.01 Echo challenge's diagnostic: `host/tests/clients.rs`; a broker that refuses a
//! QoS or a protocol version: `host/tests/brokers.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::process::Sluice;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coap_port_answers_at_once_while_the_broker_is_unreachable() {
    let dead = DeadPort::new();
    let config = "mqtt:\n  publish_timeout: 1s\n  retry_after: 2\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n";
    let mut gw = Sluice::start(dead.port, Some(config), &[], "CoAP listening on UDP").await;
    // Discovery needs no broker: answered while the gateway still waits for it (it reports
    // the broker unreachable 5 s after start).
    let out = coap_client(&["-m", "get", &gw.url(".well-known/core")]).await;
    assert!(out.stdout.contains("</ps>"), "{out:?}");
    assert!(!gw.log().contains("not reachable yet"), "answered before the wait for the broker ended:\n{}", gw.log());
    // A publish waits for the broker, then the device is told what is wrong.
    let out = coap_client(&["-m", "put", "-e", "21", &gw.url("mqtt/t?c=d1")]).await;
    assert!(out.all().contains("5.03"), "{out:?}");
    assert!(out.all().contains("not connected to the MQTT broker"), "the 5.03 says why: {out:?}");
    assert!(!out.all().contains("did not answer in time"), "{out:?}");
    gw.wait_for("The MQTT broker is not reachable yet", Duration::from_secs(15)).await;
    gw.wait_for("Sluice is serving.", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_psk_is_logged_with_the_identity_and_the_likely_cause() {
    const KEY: &str = "secretkey1";
    let broker = Mosquitto::start();
    let dtls = common::process::free_udp_port();
    let config = format!(
        "dtls:\n  bind: 127.0.0.1:{dtls}\n  psk_file: psk.txt\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n"
    );
    let mut gw =
        Sluice::start(broker.port, Some(&config), &[("psk.txt", &format!("dev1:{KEY}\n"))], "Sluice is serving.").await;
    let target = format!("coaps://127.0.0.1:{dtls}/.well-known/core");
    let good = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", KEY, &target]).await;
    assert!(good.stdout.contains("</ps>"), "{good:?}");
    let wrong = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", "wrongkey1", &target]).await;
    assert!(!wrong.stdout.contains("</ps>"), "{wrong:?}");
    gw.wait_for("DTLS handshake failed after the client offered a PSK identity", Duration::from_secs(10)).await;
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("DTLS handshake failed after")).unwrap();
    assert!(line.contains("dev1"), "the identity is named: {line}");
    assert!(line.contains("does not match") && line.contains("dtls.psk_file"), "the likely cause: {line}");
    assert!(!log.contains(KEY) && !log.contains("wrongkey1"), "no key in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_check_says_who_a_file_lets_in_and_run_agrees() {
    use std::process::Command;
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let check = |path: &std::path::Path| {
        let out = Command::new(sluice).args(["check", "--config"]).arg(path).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let example = cli::workspace().join("examples/sluice.yaml");
    let text = check(&example);
    assert!(text.contains("Access: builtin:emqx with anonymous: true: any device is let in"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "coap:\n  ack_timeout: 2s\n").unwrap();
    let text = check(&bare);
    assert!(text.contains("no rules: section") && text.contains("anonymous: false"), "{text}");
    assert!(text.contains("refuses every device with 4.01") && text.contains("anonymous: true"), "{text}");

    // And so it does: a device is refused by a gateway on that file, let in by one on none.
    let broker = Mosquitto::start();
    let gw = Sluice::start(broker.port, Some("coap:\n  ack_timeout: 2s\n"), &[], "Sluice is serving.").await;
    let out = coap_client(&["-m", "put", "-e", "1", &gw.url("mqtt/t?c=d1")]).await;
    assert!(out.all().contains("4.01"), "{out:?}");
    drop(gw);
    let gw = Sluice::start(broker.port, None, &[], "Sluice is serving.").await;
    let out = coap_client(&["-m", "put", "-e", "1", &gw.url("mqtt/t?c=d1")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
}
