//! Overload and abuse limits against a real gateway and a real mosquitto: floods from many
//! source addresses get at most the amplification budget and leave no state, one device over its rate is
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

/// The default `coap.amplification_budget` and `amplification_budget_per_prefix` (bytes/s).
const BUDGET: f64 = 1_048_576.0;
const BUDGET_PER_PREFIX: f64 = 65_536.0;
/// Forged sources: 32 /24 prefixes (more than the endpoint's budget covers at the per-prefix
/// rate) of 8 addresses each.
const PREFIXES: usize = 32;
const PER_PREFIX: usize = 8;

/// What the forged sources sent and were sent, per prefix.
#[derive(Default)]
struct Flood {
    sent: Vec<usize>,
    received: Vec<usize>,
    /// Per prefix, the bytes of each datagram received beyond 3 × the request it answers (by
    /// token; a retransmission counts as an answer to it again).
    beyond: Vec<usize>,
    answers: usize,
    full: usize,
    challenges: usize,
    requests: usize,
}

fn read(mid: u16) -> Packet {
    request(RequestType::Get, true, mid, &mid.to_be_bytes(), "ps/big?c=spoof")
}

/// Every forged source sends CON reads of the 900-byte value and, every fourth round, an
/// Observe registration, as fast as the gateway answers, for `seconds`; then the sources keep
/// reading (they never acknowledge anything) until `quiet` passes without a datagram. Returns
/// the counts and how long it all took, first request to last datagram.
fn flood(gateway: SocketAddr, seconds: u64, quiet: Duration) -> (Flood, Duration) {
    let sockets: Vec<UdpSocket> = (0..PREFIXES * PER_PREFIX)
        .map(|i| {
            let (p, a) = ((i / PER_PREFIX) as u8, (i % PER_PREFIX) as u8 + 1);
            let socket = UdpSocket::bind(SocketAddr::from(([127, 2, p, a], 0))).unwrap();
            socket.set_nonblocking(true).unwrap();
            socket
        })
        .collect();
    let mut f =
        Flood { sent: vec![0; PREFIXES], received: vec![0; PREFIXES], beyond: vec![0; PREFIXES], ..Flood::default() };
    let request_len = |mid: u16| {
        let round = mid / 1024;
        let packet = if round.is_multiple_of(4) { observe(mid, "ps/big?c=spoof") } else { read(mid) };
        packet.to_bytes().unwrap().len()
    };
    let start = std::time::Instant::now();
    let mut last = start;
    let mut buf = [0u8; 2048];
    let mut drain = |f: &mut Flood, last: &mut std::time::Instant| {
        let mut got = false;
        for (i, socket) in sockets.iter().enumerate() {
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                got = true;
                *last = std::time::Instant::now();
                f.received[i / PER_PREFIX] += n;
                let Ok(answer) = Packet::from_bytes(&buf[..n]) else { continue };
                if let Ok(token) = <[u8; 2]>::try_from(answer.get_token()) {
                    f.beyond[i / PER_PREFIX] += n.saturating_sub(3 * request_len(u16::from_be_bytes(token)));
                }
                f.answers += 1;
                match code(&answer).as_str() {
                    "4.01" => f.challenges += 1,
                    "2.05" if answer.payload.len() >= 900 => f.full += 1,
                    _ => {}
                }
            }
        }
        got
    };
    let mut round = 0u16;
    while start.elapsed() < Duration::from_secs(seconds) && round < 60 {
        for (i, socket) in sockets.iter().enumerate() {
            let mid = round.wrapping_mul(1024).wrapping_add(i as u16);
            let packet = if round.is_multiple_of(4) { observe(mid, "ps/big?c=spoof") } else { read(mid) };
            let bytes = packet.to_bytes().unwrap();
            if socket.send_to(&bytes, gateway).is_ok() {
                f.sent[i / PER_PREFIX] += bytes.len();
                f.requests += 1;
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(5));
        drain(&mut f, &mut last);
    }
    let mut idle_since = std::time::Instant::now();
    while idle_since.elapsed() < quiet {
        if drain(&mut f, &mut last) {
            idle_since = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (f, last.duration_since(start))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_from_many_addresses_get_at_most_the_amplification_budget_and_leave_no_observers() {
    let broker = Mosquitto::start();
    let mut cfg = config(&broker.url(), ANON);
    // Forged relations end when their registration answer goes unacknowledged: sooner with a
    // short ACK timeout (the budget does not depend on it).
    cfg.coap.ack_timeout = Duration::from_millis(200);
    assert_eq!(
        (cfg.coap.amplification_budget as f64, cfg.coap.amplification_budget_per_prefix as f64),
        (BUDGET, BUDGET_PER_PREFIX)
    );
    let gw = gateway(cfg).await;
    let admin = gw.admin_addr.unwrap();
    // A device stores a 900-byte value: worth reading, and worth abusing.
    let device = Raw::new(gw.coap_addr);
    let mut put = request(RequestType::Put, true, 1, b"v", "ps/big?c=dev");
    put.payload = vec![b'x'; 900];
    device.send(&put.to_bytes().unwrap());
    assert_eq!(code(&device.recv_packet().unwrap()), "2.01");

    let coap = gw.coap_addr;
    let (f, took) = tokio::task::spawn_blocking(move || flood(coap, 4, Duration::from_secs(3))).await.unwrap();
    let secs = took.as_secs_f64();
    let (sent, received) = (f.sent.iter().sum::<usize>(), f.received.iter().sum::<usize>());
    let beyond = f.beyond.iter().sum::<usize>() as f64;
    println!(
        "{} requests ({sent} bytes) from {} forged addresses in {PREFIXES} /24s over {secs:.1} s: {} answers \
         ({received} bytes; {} full 900-byte values, {} Echo challenges); beyond 3 × the requests: {beyond:.0} \
         bytes = {:.0} bytes/s (budget {BUDGET} bytes/s)",
        f.requests,
        PREFIXES * PER_PREFIX,
        f.answers,
        f.full,
        f.challenges,
        beyond / secs
    );
    // The bound: 3 × what the flood sent, plus the budget for the time it took and the one
    // second's worth a bucket starts with — in all, and for each prefix.
    assert!(beyond <= BUDGET * (secs + 1.0), "{beyond} bytes beyond 3 × in {secs:.1} s");
    for p in 0..PREFIXES {
        let over = f.beyond[p] as f64;
        assert!(over <= BUDGET_PER_PREFIX * (secs + 1.0), "prefix {p}: {over} bytes beyond 3 ×");
    }
    assert!(f.full > 0, "the budget pays for ordinary answers to unverified addresses");
    let asked = (f.requests as f64) * 850.0 / secs;
    if asked > 2.0 * BUDGET {
        assert!(f.challenges > 0, "a flood asking {asked:.0} bytes/s ran the budget dry: challenged");
    }
    let text = metrics_answer(admin).await;
    assert!(value(&text, "sluice_coap_amplification_budget_bytes_total") <= BUDGET * (secs + 1.0));
    assert!(value(&text, "sluice_coap_amplification_budget_bytes_total") > 0.0);
    assert!(
        eventually(|| gw.gateway().observer_count() == 0).await,
        "forged relations end when their answers go unacknowledged"
    );
    let text = metrics_answer(admin).await;
    assert_eq!(value(&text, "sluice_observers"), 0.0);
    assert_eq!(value(&text, "sluice_coap_peers_verified_total"), 0.0, "no forged address was verified");

    // Once the flood stops, the budget refills: a device without Echo reads and observes the
    // value with no challenge, and libcoap's clients work as ever.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let plain = Raw::new(gw.coap_addr);
    plain.send(&request(RequestType::Get, true, 7, b"g", "ps/big?c=dev3").to_bytes().unwrap());
    let answer = plain.recv_packet().unwrap();
    assert_eq!((code(&answer).as_str(), answer.payload.len()), ("2.05", 900));
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
async fn strict_echo_challenges_every_larger_answer_and_registration() {
    let broker = Mosquitto::start();
    let mut cfg = config(&broker.url(), ANON);
    cfg.coap.amplification_budget = 0;
    let gw = gateway(cfg).await;
    let admin = gw.admin_addr.unwrap();
    let device = Raw::verified(gw.coap_addr);
    let mut put = request(RequestType::Put, true, 1, b"v", "ps/big?c=dev");
    put.payload = vec![b'x'; 900];
    device.send(&put.to_bytes().unwrap());
    assert_eq!(code(&device.recv_packet().unwrap()), "2.01");
    // 1,000 sources each ask to observe it, and 200 read it; every 20th source reads its answer.
    let (mut sent, mut received, mut challenges) = (0usize, 0usize, 0usize);
    for i in 0..1_200u32 {
        let socket = source(i);
        let packet = if i < 1_000 {
            observe(i as u16, "ps/big?c=spoof")
        } else {
            request(RequestType::Get, true, i as u16, b"r", "ps/big?c=spoof")
        };
        let bytes = packet.to_bytes().unwrap();
        socket.send_to(&bytes, gw.coap_addr).unwrap();
        if i % 20 == 0 || i >= 1_000 {
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
    assert!(value(&text, "sluice_coap_echo_challenges_total") >= 1_200.0);
    assert_eq!(value(&text, "sluice_coap_peers_verified_total"), 1.0, "only the real device");
    assert_eq!(value(&text, "sluice_coap_amplification_budget_bytes_total"), 0.0);
    let out = coap_client(&["-m", "get", &url(&gw, "ps/big?c=dev")]).await;
    assert!(out.stdout.contains(&"x".repeat(900)), "libcoap repeats the Echo by itself: {out:?}");
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
