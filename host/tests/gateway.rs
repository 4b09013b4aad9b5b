//! The gateway end to end: libcoap's `coap-client-notls` and raw datagrams against the real
//! gateway, Debian's mosquitto (or the embedded broker) on the MQTT side. Every row of the URL
//! model tables (DESIGN §3), Observe, block-wise, dedup, restarts and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use common::*;

const ANON: &str = "anonymous: true";
const USERS: &str = "anonymous: false
users:
  - username: tom
    password: secret
    publish: [\"devices/${clientid}/#\", \"a/#\", \"coap/#\"]
    subscribe: [\"commands/${clientid}/#\", \"a/#\", \"coap/#\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_in_mqtt_mode_publishes_to_the_broker() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let sub = Sub::start(broker.port, "a/b", 1);
    let out = coap_client(&["-m", "put", "-e", "hello", &url(&gw, "mqtt/a/b?c=c3&u=tom&p=secret")]).await;
    assert!(!out.all().contains("4."), "{out:?}");
    assert_eq!(sub.lines(), vec!["a/b hello"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_serves_mosquitto_clients() {
    let config = config("embedded", ANON);
    let port = config.mqtt.embedded_bind.port();
    let gw = gateway(config).await;
    let sub = Sub::start(port, "x/y", 1);
    coap_client(&["-m", "put", "-e", "via-embedded", &url(&gw, "mqtt/x/y?c=dev")]).await;
    assert_eq!(sub.lines(), vec!["x/y via-embedded"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_mode_answers_each_method_as_documented() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let raw = Raw::new(gw.coap_addr);
    let cases = [
        (RequestType::Put, "mqtt/a/b?c=d", "2.04"),
        (RequestType::Get, "mqtt/a/b?c=d", "2.05"),
        (RequestType::Post, "mqtt/a/b?c=d", "4.05"),
        (RequestType::Delete, "mqtt/a/b?c=d", "4.05"),
        (RequestType::Put, "mqtt?c=d", "4.00"),
        (RequestType::Put, "nowhere/a?c=d", "4.04"),
    ];
    for (i, (method, path, expected)) in cases.into_iter().enumerate() {
        let req = request(method, true, 100 + i as u16, &[i as u8], path);
        raw.send(&req.to_bytes().unwrap());
        let resp = raw.recv_packet().expect("no answer");
        assert_eq!(code(&resp), expected, "{method:?} {path}: {:?}", String::from_utf8_lossy(&resp.payload));
        assert_eq!(resp.header.message_id, 100 + i as u16);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_delivers_what_mosquitto_publishes_con_and_non() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    for (flag, topic) in [(None, "coap/observe"), (Some("-N"), "coap/observe-non")] {
        let target = url(&gw, &format!("mqtt/{topic}?c=client2&u=tom&p=secret"));
        let mut args = vec!["-m", "get", "-s", "4", "-B", "6", "-o", "-", "-T", "token"];
        args.extend(flag);
        args.push(&target);
        let child = coap_client_spawn(&args);
        assert!(eventually(|| gw.gateway().observer_count() == 1).await, "observer not registered");
        mqtt_pub(broker.port, topic, "first", &[]);
        mqtt_pub(broker.port, topic, "second", &[]);
        let out = child.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("first") && stdout.contains("second"), "{flag:?}: {stdout}");
        assert!(eventually(|| gw.gateway().observer_count() == 0).await, "observer not removed at the end");
    }
    gw.shutdown().await;
}

/// Observers whose filters overlap each get a message once: the broker sends one copy per
/// matching subscription of the gateway, and the Subscription Identifier of each copy says whose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_observers_each_get_a_message_once() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let mut observers = Vec::new();
    for (i, filter) in ["ov/#", "ov/+", "ov/x"].iter().enumerate() {
        let raw = Raw::verified(gw.coap_addr);
        let token = [b'o', i as u8];
        let mut req = request(RequestType::Get, false, 1, &token, &format!("mqtt/{filter}?c=o{i}"));
        req.set_observe_value(0);
        raw.send(&req.to_bytes().unwrap());
        let reg = raw.recv_packet().unwrap();
        assert!(reg.get_observe_value().is_some(), "{filter}: {}", code(&reg));
        observers.push(raw);
    }
    mqtt_pub(broker.port, "ov/x", "once", &[]);
    mqtt_pub(broker.port, "ov/x", "end", &[]);
    for (i, raw) in observers.iter().enumerate() {
        let mut got: Vec<String> = Vec::new();
        while let Some(n) = raw.recv_packet() {
            if n.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.code = MessageClass::Empty;
                ack.header.message_id = n.header.message_id;
                raw.send(&ack.to_bytes().unwrap());
            }
            got.push(String::from_utf8_lossy(&n.payload).into_owned());
            if got.last().is_some_and(|p| p == "end") {
                break;
            }
        }
        assert_eq!(got, ["once", "end"], "observer {i}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_notification_removes_the_observer() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let raw = Raw::verified(gw.coap_addr);
    let mut req = request(RequestType::Get, true, 1, b"ob", "mqtt/rst/t?c=d");
    req.set_observe_value(0);
    raw.send(&req.to_bytes().unwrap());
    let reg = raw.recv_packet().unwrap();
    assert_eq!(code(&reg), "2.05");
    assert!(reg.get_observe_value().is_some());
    mqtt_pub(broker.port, "rst/t", "one", &[]);
    let n = raw.recv_packet().expect("no notification");
    assert_eq!(n.payload, b"one");
    assert_eq!(n.get_token(), b"ob");
    let mut rst = Packet::new();
    rst.header.set_type(MessageType::Reset);
    rst.header.code = MessageClass::Empty;
    rst.header.message_id = n.header.message_id;
    raw.send(&rst.to_bytes().unwrap());
    assert!(eventually(|| gw.gateway().observer_count() == 0).await);
    mqtt_pub(broker.port, "rst/t", "two", &[]);
    assert!(raw.recv().is_none(), "notified after RST");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_values_are_created_read_and_deleted() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let raw = Raw::new(gw.coap_addr);
    let mut mid = 0u16;
    let mut send = |method, path: &str, payload: &[u8], cf: Option<u16>| {
        mid += 1;
        let mut req = request(method, true, mid, &mid.to_be_bytes(), path);
        req.payload = payload.to_vec();
        if let Some(cf) = cf {
            req.set_content_format(coap_lite::ContentFormat::try_from(cf as usize).unwrap());
        }
        raw.send(&req.to_bytes().unwrap());
        raw.recv_packet().expect("no answer")
    };
    let r = send(RequestType::Get, "ps/v/t?c=d", b"", None);
    assert_eq!(code(&r), "4.04");
    let r = send(RequestType::Put, "ps/v/t?c=d", b"{\"t\":21}", Some(50));
    assert_eq!(code(&r), "2.01");
    let location: Vec<_> = r.get_option(CoapOption::LocationPath).unwrap().iter().cloned().collect();
    assert_eq!(location, vec![b"ps".to_vec(), b"v".to_vec(), b"t".to_vec()]);
    let r = send(RequestType::Post, "ps/v/t?c=d", b"{\"t\":22}", Some(50));
    assert_eq!(code(&r), "2.04");
    let r = send(RequestType::Get, "ps/v/t?c=d", b"", None);
    assert_eq!(code(&r), "2.05");
    assert_eq!(r.payload, b"{\"t\":22}");
    assert_eq!(r.get_content_format(), Some(coap_lite::ContentFormat::ApplicationJSON));
    let max_age = uint_option(&r, CoapOption::MaxAge).unwrap();
    assert!((55..=60).contains(&max_age), "{max_age}");
    let r = send(RequestType::Get, "ps/v/%2B?c=d", b"", None);
    assert_eq!(code(&r), "4.04", "a literal %2B segment is not a wildcard here: {:?}", r.payload);
    let r = send(RequestType::Get, "ps/v/+?c=d", b"", None);
    assert_eq!(code(&r), "4.00");
    let r = send(RequestType::Delete, "ps/v/t?c=d", b"", None);
    assert_eq!(code(&r), "2.02");
    let r = send(RequestType::Get, "ps/v/t?c=d", b"", None);
    assert_eq!(code(&r), "4.04");
    let r = send(RequestType::Delete, "ps/v/t?c=d", b"", None);
    assert_eq!(code(&r), "4.04");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_values_expire_after_max_age() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    coap_client(&["-m", "put", "-e", "brief", "-O", "14,0x01", &url(&gw, "ps/brief?c=d")]).await;
    let out = coap_client(&["-m", "get", &url(&gw, "ps/brief?c=d")]).await;
    assert!(out.stdout.contains("brief"), "{out:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = coap_client(&["-m", "get", &url(&gw, "ps/brief?c=d")]).await;
    assert!(!out.stdout.contains("brief") && out.all().contains("4.04"), "{out:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_observe_gets_the_current_value_first() {
    let broker = Mosquitto::start();
    mqtt_pub(broker.port, "ps/obs", "retained-before", &["-r"]);
    let gw = gateway(config(&broker.url(), ANON)).await;
    let target = url(&gw, "ps/ps/obs?c=d");
    let child = coap_client_spawn(&["-m", "get", "-s", "3", "-B", "5", "-o", "-", &target]);
    assert!(eventually(|| gw.gateway().observer_count() == 1).await);
    mqtt_pub(broker.port, "ps/obs", "live", &[]);
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.find("retained-before").expect(&stdout);
    let live = stdout.find("live").expect(&stdout);
    assert!(first < live, "{stdout}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_keeps_pubsub_values() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let out = coap_client(&["-m", "put", "-e", "kept", "-t", "text", &url(&gw, "ps/restart/t?c=d")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    gw.shutdown().await;
    let gw = gateway(config(&broker.url(), ANON)).await;
    let out = coap_client(&["-m", "get", &url(&gw, "ps/restart/t?c=d")]).await;
    assert!(out.stdout.contains("kept"), "{out:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_mode_gives_a_token_that_later_requests_use() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), USERS)).await;
    let out =
        coap_client(&["-m", "post", &url(&gw, "mqtt/connection?clientid=dev9&username=tom&password=secret")]).await;
    let token = out.stdout.trim().to_string();
    assert_eq!(token.len(), 32, "{out:?}");
    let sub = Sub::start(broker.port, "devices/dev9/t", 1);
    let out =
        coap_client(&["-m", "put", "-e", "42", &url(&gw, &format!("mqtt/devices/dev9/t?clientid=dev9&token={token}"))])
            .await;
    assert!(!out.all().contains("4."), "{out:?}");
    assert_eq!(sub.lines(), vec!["devices/dev9/t 42"]);
    let out = coap_client(&["-m", "put", &url(&gw, &format!("mqtt/connection?clientid=dev9&token={token}"))]).await;
    assert!(!out.all().contains("4."), "heartbeat: {out:?}");
    let out = coap_client(&["-m", "put", "-e", "x", &url(&gw, "mqtt/devices/dev9/t?clientid=dev9&token=0000")]).await;
    assert!(out.all().contains("4.01"), "{out:?}");
    let out = coap_client(&["-m", "delete", &url(&gw, &format!("mqtt/connection?clientid=dev9&token={token}"))]).await;
    assert!(!out.all().contains("4."), "{out:?}");
    let out =
        coap_client(&["-m", "put", "-e", "x", &url(&gw, &format!("mqtt/devices/dev9/t?clientid=dev9&token={token}"))])
            .await;
    assert!(out.all().contains("4.01"), "closed session still works: {out:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kilobytes_go_up_by_block1_and_come_back_by_block2() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let body: String = (0..10_240).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.txt");
    std::fs::write(&file, &body).unwrap();
    let sub = Sub::start(broker.port, "big/t", 1);
    let out = coap_client(&["-m", "put", "-b", "1024", "-f", file.to_str().unwrap(), &url(&gw, "ps/big/t?c=d")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let lines = sub.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), "big/t ".len() + body.len(), "MQTT got a different body");
    let out = coap_client(&["-m", "get", "-b", "512", &url(&gw, "ps/big/t?c=d")]).await;
    assert_eq!(out.stdout.trim_end(), body, "Block2 read back a different body");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_con_is_processed_once() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let sub = Sub::start(broker.port, "dup/t", 2);
    let raw = Raw::new(gw.coap_addr);
    let mut req = request(RequestType::Put, true, 777, b"d1", "mqtt/dup/t?c=d");
    req.payload = b"once".to_vec();
    let bytes = req.to_bytes().unwrap();
    raw.send(&bytes);
    let first = raw.recv().unwrap();
    raw.send(&bytes);
    let second = raw.recv().unwrap();
    assert_eq!(first, second, "the duplicate must get the same answer");
    let mut next = request(RequestType::Put, true, 778, b"d2", "mqtt/dup/t?c=d");
    next.payload = b"next".to_vec();
    raw.send(&next.to_bytes().unwrap());
    raw.recv().unwrap();
    assert_eq!(sub.lines(), vec!["dup/t once", "dup/t next"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_answer_and_the_gateway_keeps_serving() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), USERS)).await;
    let raw = Raw::verified(gw.coap_addr);
    // Truncated datagrams: no answer, no state.
    for bytes in [&[0x40u8][..], &[0x40, 0x01], &[0x40, 0x01, 0x00]] {
        raw.send(bytes);
    }
    // Token length 9 (a format error in the header): dropped.
    raw.send(&[0x49, 0x01, 0x00, 0x01]);
    assert!(raw.recv().is_none(), "a truncated datagram was answered");
    // Bad option delta (15 without a payload marker) and bad option length: RST for a CON.
    raw.send(&[0x40, 0x03, 0x00, 0x10, 0xf1, 0x00]);
    let rst = raw.recv_packet().expect("no RST for a bad option delta");
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    assert_eq!(rst.header.message_id, 0x10);
    raw.send(&[0x40, 0x03, 0x00, 0x11, 0xbf, 0x00]);
    let rst = raw.recv_packet().expect("no RST for a bad option length");
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    // Unknown critical option 9 → 4.02.
    let mut req = request(RequestType::Put, true, 0x20, b"k", "mqtt/a/b?c=d&u=tom&p=secret");
    req.add_option(CoapOption::Unknown(9), b"x".to_vec());
    raw.send(&req.to_bytes().unwrap());
    assert_eq!(code(&raw.recv_packet().unwrap()), "4.02");
    // Wrong password → 4.01, denied topic → 4.03, missing client id → 4.00.
    let cases = [
        ("mqtt/a/b?c=d&u=tom&p=wrong", "4.01"),
        ("mqtt/secret/b?c=d&u=tom&p=secret", "4.03"),
        ("mqtt/a/b?u=tom&p=secret", "4.00"),
        ("mqtt/a/b?c=d", "4.01"),
    ];
    for (i, (path, expected)) in cases.into_iter().enumerate() {
        let req = request(RequestType::Put, true, 0x30 + i as u16, b"k", path);
        raw.send(&req.to_bytes().unwrap());
        let resp = raw.recv_packet().unwrap();
        assert_eq!(code(&resp), expected, "{path}");
        assert!(!resp.payload.is_empty(), "{path}: no diagnostic");
        assert!(!String::from_utf8_lossy(&resp.payload).contains("wrong"), "the password leaked");
    }
    // Oversize body → 4.13 (libcoap sends it block-wise and is refused).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.bin");
    std::fs::write(&file, vec![b'x'; 1_100_000]).unwrap();
    let out =
        coap_client(&["-m", "put", "-f", file.to_str().unwrap(), &url(&gw, "ps/a/huge?c=d&u=tom&p=secret")]).await;
    assert!(out.all().contains("4.13"), "{out:?}");
    // And the next good request works.
    let sub = Sub::start(broker.port, "a/ok", 1);
    let out = coap_client(&["-m", "put", "-e", "fine", &url(&gw, "mqtt/a/ok?c=d&u=tom&p=secret")]).await;
    assert!(!out.all().contains("4."), "{out:?}");
    assert_eq!(sub.lines(), vec!["a/ok fine"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_core_lists_the_resources() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let out = coap_client(&["-m", "get", &url(&gw, ".well-known/core")]).await;
    assert!(out.stdout.contains("</mqtt>") && out.stdout.contains("</ps>"), "{out:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_con_publish_waits_for_the_broker_and_gets_5_03_when_it_is_down() {
    let dead = DeadPort::new();
    let port = dead.port;
    let gw = gateway(config(&format!("mqtt://127.0.0.1:{port}"), ANON)).await;
    let raw = Raw::new(gw.coap_addr);
    raw.socket.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let req = request(RequestType::Put, true, 5, b"q", "mqtt/down/t?c=d");
    raw.send(&req.to_bytes().unwrap());
    // An empty ACK first (the broker is slow), then the separate 5.03 with a retry hint.
    let mut got = raw.recv_packet().expect("no answer");
    if got.header.code == MessageClass::Empty {
        got = raw.recv_packet().expect("no separate response");
    }
    assert_eq!(code(&got), "5.03", "{:?}", String::from_utf8_lossy(&got.payload));
    assert_eq!(uint_option(&got, CoapOption::MaxAge), Some(2));
    gw.shutdown().await;
}

/// Requests that wait for the broker are bounded by `coap.request_queue`: beyond it a new
/// request is answered 5.03 at once (Max-Age 1), and the waiting ones get their own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_the_broker_are_bounded_by_request_queue() {
    let dead = DeadPort::new();
    let port = dead.port;
    let mut cfg = config(&format!("mqtt://127.0.0.1:{port}"), ANON);
    cfg.coap.request_queue = 2;
    let gw = gateway(cfg).await;
    let raw = Raw::new(gw.coap_addr);
    raw.socket.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    for mid in 1..=3u16 {
        let token = [mid as u8];
        let req = request(RequestType::Put, true, mid, &token, &format!("mqtt/down/{mid}?c=d{mid}"));
        raw.send(&req.to_bytes().unwrap());
    }
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let got = raw.recv_packet().expect("every request gets an answer");
        if got.header.code == MessageClass::Empty {
            continue; // the empty ACK before a separate response
        }
        answers.insert(got.get_token()[0], (code(&got), uint_option(&got, CoapOption::MaxAge)));
    }
    // The third found two requests waiting: 5.03 with Max-Age 1, at once. The first two wait
    // for the (down) broker and get the broker's 5.03 with the configured retry hint.
    assert_eq!(answers[&3], ("5.03".to_string(), Some(1)), "{answers:?}");
    assert_eq!(answers[&1], ("5.03".to_string(), Some(2)), "{answers:?}");
    assert_eq!(answers[&2], ("5.03".to_string(), Some(2)), "{answers:?}");
    gw.shutdown().await;
}
