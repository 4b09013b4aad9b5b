//! CoAP over DTLS end to end: libcoap's OpenSSL and GnuTLS clients against the real gateway,
//! mosquitto on the MQTT side. PSK (good key, wrong key, unknown identity), X.509 one-way and
//! mutual (good, missing and rogue client certificates), the identity reaching the rules,
//! PUT/Observe/PubSub/block-wise over DTLS, and the listener's robustness (plaintext, garbage,
//! a stalled ClientHello). coap-client exits 0 even when the handshake fails, so every check is
//! on what it prints (or on what reaches the broker).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use coap_lite::RequestType;
use common::*;
use sluice::transport::dtls::certs;

/// Only DTLS devices: no c/u/p anywhere, the identity is the client id.
const IDENTITY_ONLY: &str = "anonymous: false\nclientid_from_identity: true";
/// What `/.well-known/core` answers (no credentials needed): proof that a request got through.
const DISCOVERY: &str = "</mqtt>";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    /// A PSK file (dev1:secretkey1), development certificates (client CN dev1) and a rogue set.
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("psk.txt"), "dev1:secretkey1\ndev2:otherkey2\n").unwrap();
        certs::write_dev(dir.path(), "dev1").unwrap();
        certs::write_dev(&dir.path().join("rogue"), "dev1").unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    fn psk(&self) -> String {
        format!("psk_file: {}", self.path("psk.txt"))
    }

    fn x509(&self) -> String {
        format!("cert_file: {}\nkey_file: {}", self.path("server.crt"), self.path("server.key"))
    }

    fn mutual(&self) -> String {
        format!("{}\nca_file: {}\nverify: peer\nfail_if_no_peer_cert: true", self.x509(), self.path("ca.crt"))
    }
}

/// The client printed a DTLS alert and got no answer: the gateway refused the handshake.
fn refused(out: &ClientOutput) -> bool {
    !out.stdout.contains(DISCOVERY) && out.all().to_lowercase().contains("alert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_put_reaches_mqtt_with_the_identity_as_client_id_over_both_clients() {
    let files = Files::new();
    let broker = Mosquitto::start();
    let gw = gateway(dtls_config(&broker.url(), &files.psk(), IDENTITY_ONLY)).await;
    for bin in DTLS_CLIENTS {
        let sub = Sub::start(broker.port, "sensors/temp", 1);
        let out = coap_client_bin(
            bin,
            &["-m", "put", "-e", "21.5", "-u", "dev1", "-k", "secretkey1", &coaps_url(&gw, "mqtt/sensors/temp")],
        )
        .await;
        assert!(!out.all().contains("4."), "{bin}: {out:?}");
        assert_eq!(sub.lines(), vec!["sensors/temp 21.5"], "{bin}: {out:?}");
    }
    // Plain CoAP to the same gateway still needs credentials: the identity came from DTLS.
    let out = coap_client(&["-m", "put", "-e", "x", &url(&gw, "mqtt/sensors/temp")]).await;
    assert!(out.all().contains("4.00"), "{out:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_wrong_key_and_unknown_identity_are_refused_by_both_clients() {
    let files = Files::new();
    let gw = gateway(dtls_config("embedded", &files.psk(), IDENTITY_ONLY)).await;
    let target = coaps_url(&gw, ".well-known/core");
    for bin in DTLS_CLIENTS {
        let good = coap_client_bin(bin, &["-u", "dev2", "-k", "otherkey2", &target]).await;
        assert!(good.stdout.contains(DISCOVERY), "{bin} good key: {good:?}");
        let wrong = coap_client_bin(bin, &["-u", "dev1", "-k", "wrongkey", &target]).await;
        assert!(refused(&wrong), "{bin} wrong key got through: {wrong:?}");
        let unknown = coap_client_bin(bin, &["-u", "nobody", "-k", "secretkey1", &target]).await;
        assert!(refused(&unknown), "{bin} unknown identity got through: {unknown:?}");
        // Both fail alike (unknown_psk_identity): nobody can probe which identities exist.
        for out in [&wrong, &unknown] {
            assert!(out.all().to_lowercase().contains("psk"), "{bin}: {out:?}");
        }
        println!("{bin}: wrong key: {}\nunknown identity: {}", wrong.all().trim(), unknown.all().trim());
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_psk_file_takes_effect_without_a_restart() {
    let files = Files::new();
    let gw = gateway(dtls_config("embedded", &files.psk(), IDENTITY_ONLY)).await;
    let target = coaps_url(&gw, ".well-known/core");
    std::fs::write(files.path("psk.txt"), "dev1:rotated-key\n").unwrap();
    let mut rotated = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", "rotated-key", &target]).await;
        if out.stdout.contains(DISCOVERY) {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the new key was not accepted");
    let old = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", "secretkey1", &target]).await;
    assert!(refused(&old), "the old key still works: {old:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_one_way_serves_clients_that_check_the_ca_and_psk_on_the_same_port() {
    let files = Files::new();
    let broker = Mosquitto::start();
    let dtls = format!("{}\n{}", files.x509(), files.psk());
    let gw = gateway(dtls_config(&broker.url(), &dtls, "anonymous: true\nclientid_from_identity: true")).await;
    let ca = files.path("ca.crt");
    let rogue_ca = files.path("rogue/ca.crt");
    for bin in DTLS_CLIENTS {
        let sub = Sub::start(broker.port, "x509/t", 1);
        let out =
            coap_client_bin(bin, &["-m", "put", "-e", "signed", "-R", &ca, &coaps_url(&gw, "mqtt/x509/t?c=one-way")])
                .await;
        assert_eq!(sub.lines(), vec!["x509/t signed"], "{bin}: {out:?}");
        let psk = coap_client_bin(bin, &["-u", "dev1", "-k", "secretkey1", &coaps_url(&gw, ".well-known/core")]).await;
        assert!(psk.stdout.contains(DISCOVERY), "{bin} PSK beside X.509: {psk:?}");
        // A client that trusts another CA refuses the gateway.
        let refused = coap_client_bin(bin, &["-R", &rogue_ca, &coaps_url(&gw, ".well-known/core")]).await;
        assert!(!refused.stdout.contains(DISCOVERY), "{bin} accepted a server it cannot verify: {refused:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_auth_takes_the_client_id_from_the_certificate_and_refuses_missing_and_rogue_ones() {
    let files = Files::new();
    let broker = Mosquitto::start();
    let dtls = format!("{}\n{}", files.mutual(), files.psk());
    let gw = gateway(dtls_config(&broker.url(), &dtls, IDENTITY_ONLY)).await;
    let (ca, crt, key) = (files.path("ca.crt"), files.path("client.crt"), files.path("client.key"));
    let (rogue_crt, rogue_key) = (files.path("rogue/client.crt"), files.path("rogue/client.key"));
    let discovery = coaps_url(&gw, ".well-known/core");
    for bin in DTLS_CLIENTS {
        let sub = Sub::start(broker.port, "mutual/t", 1);
        let out = coap_client_bin(
            bin,
            &["-m", "put", "-e", "by-cert", "-c", &crt, "-j", &key, "-R", &ca, &coaps_url(&gw, "mqtt/mutual/t")],
        )
        .await;
        assert_eq!(sub.lines(), vec!["mutual/t by-cert"], "{bin}: {out:?}");
        let missing = coap_client_bin(bin, &["-R", &ca, &discovery]).await;
        assert!(refused(&missing), "{bin} got in without a certificate: {missing:?}");
        let rogue = coap_client_bin(bin, &["-c", &rogue_crt, "-j", &rogue_key, "-R", &ca, &discovery]).await;
        assert!(refused(&rogue), "{bin} got in with a rogue certificate: {rogue:?}");
        let psk = coap_client_bin(bin, &["-u", "dev1", "-k", "secretkey1", &discovery]).await;
        assert!(psk.stdout.contains(DISCOVERY), "{bin} PSK beside mutual X.509: {psk:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_pubsub_and_block_wise_work_over_dtls() {
    let files = Files::new();
    let broker = Mosquitto::start();
    let gw = gateway(dtls_config(&broker.url(), &files.psk(), IDENTITY_ONLY)).await;
    for bin in DTLS_CLIENTS {
        let topic = format!("obs/{bin}");
        let target = coaps_url(&gw, &format!("mqtt/{topic}"));
        let args = ["-u", "dev1", "-k", "secretkey1", "-m", "get", "-s", "4", "-B", "6", "-o", "-", &target];
        let before = gw.gateway().observer_count();
        let child = coap_client_bin_spawn(bin, &args);
        assert!(eventually(|| gw.gateway().observer_count() == before + 1).await, "{bin}: observer not registered");
        mqtt_pub(broker.port, &topic, "first", &[]);
        mqtt_pub(broker.port, &topic, "second", &[]);
        let out = child.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("first") && stdout.contains("second"), "{bin}: {stdout:?} {:?}", out.stderr);

        // PubSub: a value set over DTLS is read back over DTLS.
        let value = coaps_url(&gw, &format!("ps/value/{}", bin.len()));
        coap_client_bin(bin, &["-u", "dev1", "-k", "secretkey1", "-m", "put", "-e", "v1", &value]).await;
        let read = coap_client_bin(bin, &["-u", "dev1", "-k", "secretkey1", &value]).await;
        assert!(read.stdout.contains("v1"), "{bin}: {read:?}");

        // Block-wise: a 3000-byte PUT in 64-byte blocks arrives whole.
        let body: String = (0..3000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let input = files.dir.path().join("body.txt");
        std::fs::write(&input, &body).unwrap();
        let sub = Sub::start(broker.port, "blocks/t", 1);
        let out = coap_client_bin(
            bin,
            &[
                "-u",
                "dev1",
                "-k",
                "secretkey1",
                "-m",
                "put",
                "-b",
                "64",
                "-f",
                input.to_str().unwrap(),
                &coaps_url(&gw, "mqtt/blocks/t"),
            ],
        )
        .await;
        assert_eq!(sub.lines(), vec![format!("blocks/t {body}")], "{bin}: {out:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_coap_to_the_dtls_port_gets_no_answer() {
    let files = Files::new();
    let gw = gateway(dtls_config("embedded", &files.psk(), IDENTITY_ONLY)).await;
    let raw = Raw::new(gw.coaps_addr.unwrap());
    let req = request(RequestType::Get, true, 7, &[1], ".well-known/core");
    raw.send(&req.to_bytes().unwrap());
    raw.send(&req.to_bytes().unwrap());
    assert_eq!(raw.recv(), None, "plaintext CoAP was answered on the DTLS port");
    // The same peer can still handshake afterwards: the plaintext left no session behind.
    let out = coap_client_bin(
        "coap-client-openssl",
        &["-u", "dev1", "-k", "secretkey1", &coaps_url(&gw, ".well-known/core")],
    )
    .await;
    assert!(out.stdout.contains(DISCOVERY), "{out:?}");
    gw.shutdown().await;
}

/// A syntactically valid DTLS 1.2 ClientHello offering the PSK suites.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend([7u8; 32]);
    body.extend([0, 0]); // session id, cookie
    body.extend([0, 6, 0xc0, 0xa8, 0xc0, 0xa4, 0x00, 0xa8]);
    body.extend([1, 0]);
    let len = body.len() as u32;
    let mut handshake = vec![1];
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend([0, 0, 0, 0, 0]);
    handshake.extend(&len.to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_handshakes_within_a_second_despite_stalled_hellos_and_garbage() {
    let files = Files::new();
    let dtls = format!("{}\nhandshake_timeout: 30s", files.psk());
    let gw = gateway(dtls_config("embedded", &dtls, IDENTITY_ONLY)).await;
    let server = gw.coaps_addr.unwrap();
    // Stalled handshakes: ClientHellos from sockets that never answer.
    let stalled: Vec<_> = (0..20).map(|_| Raw::new(server)).collect();
    for s in &stalled {
        s.send(&client_hello());
    }
    // A flood of garbage from another socket, while the real client connects.
    let flood = tokio::task::spawn_blocking(move || {
        let raw = Raw::new(server);
        for i in 0..20_000u32 {
            let mut junk = vec![0x40, 0x01];
            junk.extend(i.to_be_bytes());
            raw.send(&junk);
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for bin in DTLS_CLIENTS {
        let started = Instant::now();
        let out = coap_client_bin(bin, &["-u", "dev1", "-k", "secretkey1", &coaps_url(&gw, ".well-known/core")]).await;
        let took = started.elapsed();
        println!("{bin}: {took:?}");
        assert!(out.stdout.contains(DISCOVERY), "{bin}: {out:?}");
        assert!(took < Duration::from_secs(1), "{bin} took {took:?} with stalled handshakes pending");
    }
    flood.await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_slots_taken_by_silent_hellos_are_freed_within_seconds() {
    let files = Files::new();
    let dtls = format!("{}\nmax_handshakes: 4\nhandshake_timeout: 60s", files.psk());
    let gw = gateway(dtls_config("embedded", &dtls, IDENTITY_ONLY)).await;
    let server = gw.coaps_addr.unwrap();
    let silent: Vec<_> = (0..4).map(|_| Raw::new(server)).collect();
    for s in &silent {
        s.send(&client_hello());
    }
    // Each gets a HelloVerifyRequest it never answers; its slot is freed after 2 s, not 60.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let out = coap_client_bin(
        "coap-client-openssl",
        &["-u", "dev1", "-k", "secretkey1", &coaps_url(&gw, ".well-known/core")],
    )
    .await;
    assert!(out.stdout.contains(DISCOVERY), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    gw.shutdown().await;
}

/// The README's commands against each example config (its own PSK file and certificates),
/// with the listeners moved to ephemeral ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtls_example_serves_the_readme_commands() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let certs = examples.join("certs");
    let (ca, crt, key) = (certs.join("ca.crt"), certs.join("client.crt"), certs.join("client.key"));
    let (ca, crt, key) = (ca.to_str().unwrap(), crt.to_str().unwrap(), key.to_str().unwrap());
    for example in ["dtls-psk", "dtls-x509", "dtls-mutual"] {
        let mut config = sluice::config::Config::load(&examples.join(format!("{example}.yaml")))
            .unwrap_or_else(|p| panic!("{example}: {p}"));
        config.coap.bind = "127.0.0.1:0".parse().unwrap();
        config.dtls.bind = "127.0.0.1:0".parse().unwrap();
        config.mqtt.embedded_bind = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let port = config.mqtt.embedded_bind.port();
        let gw = gateway(config).await;
        let temp = coaps_url(&gw, "mqtt/sensors/temp");
        let login = coaps_url(&gw, "mqtt/sensors/temp?c=dev1&u=tom&p=secret");
        let discovery = coaps_url(&gw, ".well-known/core");
        for bin in DTLS_CLIENTS {
            let sub = Sub::start(port, "sensors/#", 1);
            let put: Vec<&str> = match example {
                "dtls-psk" => vec!["-m", "put", "-e", "21.5", "-u", "dev1", "-k", "secretkey1", &temp],
                "dtls-x509" => vec!["-m", "put", "-e", "21.5", "-R", ca, &login],
                _ => vec!["-m", "put", "-e", "21.5", "-c", crt, "-j", key, "-R", ca, &temp],
            };
            let out = coap_client_bin(bin, &put).await;
            assert_eq!(sub.lines(), vec!["sensors/temp 21.5"], "{example} {bin}: {out:?}");
            let refusals: Vec<Vec<&str>> = match example {
                "dtls-psk" => vec![
                    vec!["-u", "dev1", "-k", "wrongkey", &discovery],
                    vec!["-u", "nobody", "-k", "secretkey1", &discovery],
                ],
                "dtls-mutual" => vec![vec!["-R", ca, &discovery]],
                _ => vec![],
            };
            for args in refusals {
                let out = coap_client_bin(bin, &args).await;
                assert!(refused(&out), "{example} {bin} {args:?}: {out:?}");
            }
        }
        gw.shutdown().await;
    }
}

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn certs_dev_writes_pem_files_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let run = std::process::Command::new(SLUICE)
        .args(["certs", "dev", "--out", out.to_str().unwrap(), "--client-cn", "sensor-7"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    for name in certs::DEV_FILES {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{name}: {text}");
    }
    let client = std::fs::read(out.join("client.crt")).unwrap();
    let der = rustls_pemfile::certs(&mut client.as_slice()).next().unwrap().unwrap();
    assert_eq!(certs::identity(&[der.to_vec()]).cert_subject.as_deref(), Some("sensor-7"));
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        "dtls:\n  cert_file: certs/server.crt\n  key_file: certs/server.key\n  ca_file: certs/ca.crt\n  verify: peer\n",
    )
    .unwrap();
    let check =
        std::process::Command::new(SLUICE).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn coaps_bind_without_credentials_names_the_fix() {
    let run = std::process::Command::new(SLUICE).args(["run", "--coaps-bind", "127.0.0.1:0"]).output().unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--coaps-bind") && stderr.contains("psk_file"), "{stderr}");
}
