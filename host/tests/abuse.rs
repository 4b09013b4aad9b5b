//! Overload and abuse limits against a real gateway and a real mosquitto: floods from many
//! source addresses get no amplified answers and leave no state, one device over its rate is
//! refused while others are served, Observe and block-wise state is bounded per device and in
//! all, and every limit shows in `/metrics`.
//!
//! Many source addresses: Linux routes all of 127.0.0.0/8 to loopback, so sockets bound to
//! 127.x.y.z stand in for spoofed sources (a flood whose answers go elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use coap_lite::{CoapOption, Packet, RequestType};
use common::*;
use tokio::io::AsyncReadExt;

const ANON: &str = "anonymous: true";

/// The value of one series (`name{labels}` exactly as rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// A socket on the `i`-th loopback address 127.1.0.1, 127.1.0.2, …
fn source(i: u32) -> UdpSocket {
    let [_, a, b, c] = (0x7f01_0001 + i).to_be_bytes();
    let socket = UdpSocket::bind(SocketAddr::from(([127, a, b, c], 0))).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket
}

fn observe(mid: u16, path: &str) -> Packet {
    let mut get = request(RequestType::Get, true, mid, &mid.to_be_bytes(), path);
    get.add_option(CoapOption::Observe, vec![]);
    get
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_from_many_addresses_get_no_amplified_answers_and_leave_no_observers() {
    let broker = Mosquitto::start();
    let gw = gateway(config(&broker.url(), ANON)).await;
    let admin = gw.admin_addr.unwrap();
    // A device stores a 900-byte value: worth reading, and worth abusing.
    let device = Raw::verified(gw.coap_addr);
    let mut put = request(RequestType::Put, true, 1, b"v", "ps/big?c=dev");
    put.payload = vec![b'x'; 900];
    device.send(&put.to_bytes().unwrap());
    assert_eq!(code(&device.recv_packet().unwrap()), "2.01");

    // 5,000 sources each ask to observe it, and 200 read it; every 50th source reads its answer.
    let (mut sent, mut received, mut challenges) = (0usize, 0usize, 0usize);
    for i in 0..5_200u32 {
        let socket = source(i);
        let packet = if i < 5_000 {
            observe(i as u16, "ps/big?c=spoof")
        } else {
            request(RequestType::Get, true, i as u16, b"r", "ps/big?c=spoof")
        };
        let bytes = packet.to_bytes().unwrap();
        socket.send_to(&bytes, gw.coap_addr).unwrap();
        if i % 50 == 0 || i >= 5_000 {
            let mut buf = [0u8; 2048];
            let (n, _) = socket.recv_from(&mut buf).expect("an answer");
            let answer = Packet::from_bytes(&buf[..n]).unwrap();
            assert_eq!(code(&answer), "4.01", "an unverified source gets an Echo challenge");
            assert!(answer.get_option(CoapOption::Unknown(252)).is_some());
            assert!(n <= 3 * bytes.len(), "answer of {n} bytes to a request of {}", bytes.len());
            sent += bytes.len();
            received += n;
            challenges += 1;
        }
    }
    println!("{challenges} sampled answers: {received} bytes for {sent} bytes of requests");
    let text = metrics_answer(admin).await;
    assert_eq!(value(&text, "sluice_observers"), 0.0, "no observer was registered for a flood");
    assert!(value(&text, "sluice_coap_echo_challenges_total") >= 5_200.0);
    assert_eq!(value(&text, "sluice_coap_peers_verified_total"), 1.0, "only the real device");

    // A real device, which repeats the Echo like libcoap does, observes and reads it.
    let out = coap_client(&["-m", "get", &url(&gw, "ps/big?c=dev")]).await;
    assert!(out.stdout.contains(&"x".repeat(900)), "{out:?}");
    let mut observer = coap_client_spawn(&["-m", "get", "-s", "3", "-o", "-", &url(&gw, "ps/big?c=dev2")]);
    assert!(eventually(|| gw.gateway().observer_count() == 1).await, "libcoap's observer registered");
    let mut first = String::new();
    let mut stdout = observer.stdout.take().unwrap();
    let mut buf = vec![0u8; 4096];
    while first.len() < 900 {
        let n = tokio::time::timeout(Duration::from_secs(5), stdout.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the observer ended early");
        first.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(first.contains(&"x".repeat(900)));
    observer.kill().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_is_refused_while_another_is_served() {
    let broker = Mosquitto::start();
    let mut cfg = config(&broker.url(), ANON);
    cfg.coap.peer_rate = 20;
    cfg.coap.peer_burst = 20;
    let gw = gateway(cfg).await;
    let admin = gw.admin_addr.unwrap();
    let sub = Sub::start(broker.port, "good/t", 1);

    // 300 CON PUTs as fast as the answers can be read (in rounds of 25, so that no answer is
    // lost to the test socket's own receive buffer).
    let noisy = Raw::new(gw.coap_addr);
    let (mut ok, mut busy) = (0, 0);
    for round in 0..12u16 {
        for mid in round * 25..(round + 1) * 25 {
            let mut put = request(RequestType::Put, true, mid, &mid.to_be_bytes(), "mqtt/noisy/t?c=noisy");
            put.payload = b"n".to_vec();
            noisy.send(&put.to_bytes().unwrap());
        }
        for _ in 0..25 {
            let answer = noisy.recv_packet().expect("every CON is answered");
            match code(&answer).as_str() {
                "2.04" => ok += 1,
                "5.03" => {
                    assert_eq!(uint_option(&answer, CoapOption::MaxAge), Some(1), "a retry hint");
                    busy += 1;
                }
                other => panic!("unexpected {other}"),
            }
        }
    }
    println!("noisy device: {ok} × 2.04, {busy} × 5.03");
    // At most the burst and what 20/s refills meanwhile; fewer when its requests take long
    // enough to be charged extra (a debug build).
    assert!(ok >= 1 && busy >= 200, "the burst is served, the rest refused");

    // Another device is served meanwhile.
    let out = coap_client(&["-m", "put", "-e", "hello", &url(&gw, "mqtt/good/t?c=good")]).await;
    assert!(!out.all().contains("5.03"), "{out:?}");
    assert_eq!(sub.lines(), vec!["good/t hello"]);
    let text = metrics_answer(admin).await;
    assert_eq!(value(&text, "sluice_drops_total{reason=\"rate_limit\"}"), busy as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_and_block_wise_state_is_bounded() {
    let broker = Mosquitto::start();
    let mut cfg = config(&broker.url(), ANON);
    cfg.coap.max_observers_per_peer = 3;
    cfg.coap.max_block_transfers = 10;
    cfg.coap.max_body_size = 4096;
    let gw = gateway(cfg).await;
    let admin = gw.admin_addr.unwrap();

    // One device, five topics: three relations, then plain answers.
    let device = Raw::verified(gw.coap_addr);
    let mut with_observe = 0;
    for i in 0..5u16 {
        device.send(&observe(10 + i, &format!("ps/o{i}?c=dev")).to_bytes().unwrap());
        let answer = device.recv_packet().unwrap();
        if answer.get_option(CoapOption::Observe).is_some() {
            with_observe += 1;
        }
    }
    assert_eq!(with_observe, 3);
    assert!(eventually(|| gw.gateway().observer_count() == 3).await);

    // Twenty devices start uploads and never finish: ten transfers are kept at most.
    for i in 0..20u32 {
        let socket = source(i);
        let mut put = request(RequestType::Put, true, 1, b"b", "mqtt/up?c=up");
        put.add_option(CoapOption::Block1, vec![0x0a]); // num 0, more, 64 bytes
        put.payload = vec![b'u'; 64];
        socket.send_to(&put.to_bytes().unwrap(), gw.coap_addr).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(code(&Packet::from_bytes(&buf[..n]).unwrap()), "2.31");
    }
    // A body over max_body_size is refused at once, by its Size1.
    let mut put = request(RequestType::Put, true, 2, b"c", "mqtt/up?c=up");
    put.add_option(CoapOption::Block1, vec![0x0a]);
    put.add_option(CoapOption::Size1, 8192u16.to_be_bytes().to_vec());
    put.payload = vec![b'u'; 64];
    device.send(&put.to_bytes().unwrap());
    assert_eq!(code(&device.recv_packet().unwrap()), "4.13");

    let text = metrics_answer(admin).await;
    assert_eq!(value(&text, "sluice_observers"), 3.0);
    assert_eq!(value(&text, "sluice_drops_total{reason=\"observer_limit\"}"), 2.0);
    assert_eq!(value(&text, "sluice_drops_total{reason=\"block_eviction\"}"), 10.0);
}
