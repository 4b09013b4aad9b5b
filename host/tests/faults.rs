//! Faults survived: the broker stopped, killed and restarted under a CON load with every
//! message counted; observers that get notifications again after the broker comes back; and
//! the gateway itself crashed and restarted on the same port while devices retransmit. Real
//! peers throughout: Debian's mosquitto (with persistence) and `mosquitto_sub`, the `sluice`
//! binary, and raw CoAP datagrams for exact Message-IDs, tokens and answer codes.
//!
//! Run with `--nocapture` to see the counts of each run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use common::faults::{Broker, ConLoad, GatewayOptions, Outcome, Sluice, Subscriber, wait_until};
use common::{Raw, code, mqtt_pub, request, uint_option};

/// The load tests share two cores with everything else: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// CON requests kept outstanding by the load.
const WINDOW: usize = 16;
/// Requests answered before the broker goes down.
const BEFORE_FAULT: usize = 500;
/// 2.04 answers wanted for requests first sent after the broker is back.
const AFTER_RESTART: usize = 300;
/// How long the broker stays down: longer than the gateway's `publish_timeout` (1 s here), so
/// the requests waiting for it must end in 5.03.
const DOWNTIME: Duration = Duration::from_secs(3);
/// Generous bound for anything that only has to happen eventually.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGTERM: mosquitto saves its sessions and queued messages before it exits.
    Stop,
    /// SIGKILL: mosquitto loses everything since its last save.
    Kill,
}

/// What a load across a broker fault produced.
struct Run {
    outcomes: Vec<Outcome>,
    /// Requests numbered from here were first sent after the broker was gone.
    after_fault: usize,
    /// Requests numbered from here were first sent after the broker was back.
    after_restart: usize,
    /// Every payload the persistent subscriber received (load requests' numbers).
    received: Vec<usize>,
}

impl Run {
    fn with_code(&self, code: &str) -> BTreeSet<usize> {
        self.outcomes.iter().enumerate().filter(|(_, o)| o.code.as_deref() == Some(code)).map(|(n, _)| n).collect()
    }

    fn report(&self, fault: Fault) {
        let distinct: BTreeSet<usize> = self.received.iter().copied().collect();
        let unanswered = self.outcomes.iter().filter(|o| o.code.is_none()).count();
        let retransmissions: u32 = self.outcomes.iter().map(|o| o.retransmissions).sum();
        let lost = self.with_code("2.04").difference(&distinct).count();
        println!(
            "broker {fault:?} under load: sent {}, 2.04 {}, 5.03 {}, unanswered {unanswered}, received {} \
             ({} distinct, {} duplicates), acknowledged but not received {lost}, client retransmissions \
             {retransmissions}; fault at request {}, restart at request {}",
            self.outcomes.len(),
            self.with_code("2.04").len(),
            self.with_code("5.03").len(),
            self.received.len(),
            distinct.len(),
            self.received.len() - distinct.len(),
            self.after_fault,
            self.after_restart,
        );
    }
}

/// A CON load against the gateway (publish_qos `coap`: CON → QoS 1, answered after the
/// PUBACK) while the broker goes down for [`DOWNTIME`] and comes back on the same port. A
/// persistent QoS 1 subscriber counts what reached the broker.
fn load_across_a_broker_fault(fault: Fault) -> Run {
    let mut broker = Broker::start();
    let sub = Subscriber::start(broker.port, &format!("{fault:?}"), "load/#", "load/probe");
    if fault == Fault::Kill {
        // The subscriber's session must outlive the crash, or the restarted broker would have
        // nobody to queue messages for until mosquitto_sub reconnects.
        broker.save();
    }
    let options = GatewayOptions { publish_timeout: "1s", ..GatewayOptions::default() };
    let gw = Sluice::start(&broker.url(), &options);
    // The subscriber reads nothing until the broker is back: what the broker acknowledged
    // before the fault reaches the subscriber only if the broker kept it.
    sub.freeze();
    let load = ConLoad::start(gw.coap, WINDOW, |_| "mqtt/load/t?c=load".into());
    let progress = load.progress.clone();

    let answered = || progress.answered.load(Ordering::Acquire);
    assert!(wait_until(PATIENCE, || answered() >= BEFORE_FAULT), "only {} answers with the broker up", answered());
    match fault {
        Fault::Stop => broker.stop(),
        Fault::Kill => broker.kill(),
    }
    let after_fault = progress.claimed.load(Ordering::Acquire);
    std::thread::sleep(DOWNTIME);
    broker.restart();
    let after_restart = progress.claimed.load(Ordering::Acquire);
    sub.thaw();
    let ok = wait_until(PATIENCE, || progress.count_from(after_restart, "2.04") >= AFTER_RESTART);
    assert!(
        ok,
        "the gateway did not publish again after the broker restart: {} × 2.04 since\n{}",
        progress.count_from(after_restart, "2.04"),
        gw.log()
    );
    let outcomes = load.finish();

    // Everything the test requires to arrive, then a moment for duplicates still on the way.
    let wanted: BTreeSet<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(n, o)| o.code.as_deref() == Some("2.04") && (fault == Fault::Stop || *n >= after_fault))
        .map(|(n, _)| n)
        .collect();
    let received = || -> Vec<usize> { sub.payloads("load/t").iter().map(|p| p.parse().unwrap()).collect() };
    wait_until(PATIENCE, || {
        let got: BTreeSet<usize> = received().into_iter().collect();
        wanted.is_subset(&got)
    });
    Run { outcomes, after_fault, after_restart, received: received() }
}

/// Every answer is 2.04, or 5.03 with a Max-Age (the device's retry hint: `mqtt.retry_after`
/// when the broker is away, 1 s when the per-device rate limit refuses a request).
fn assert_only_204_or_503(run: &Run) {
    let wrong: BTreeMap<usize, &Outcome> = run
        .outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| match o.code.as_deref() {
            None | Some("2.04") => false,
            Some("5.03") => o.max_age.is_none_or(|s| s == 0),
            Some(_) => true,
        })
        .collect();
    assert!(wrong.is_empty(), "answers other than 2.04, and 5.03 with a Max-Age: {wrong:?}");
}

#[test]
fn a_broker_restart_under_load_loses_no_acknowledged_message() {
    let _serial = serial();
    let run = load_across_a_broker_fault(Fault::Stop);
    run.report(Fault::Stop);
    assert_only_204_or_503(&run);
    // A stopped broker keeps what it acknowledged (persistence), so every 2.04 arrives.
    let received: BTreeSet<usize> = run.received.iter().copied().collect();
    let lost: Vec<usize> = run.with_code("2.04").difference(&received).copied().collect();
    assert!(lost.is_empty(), "answered 2.04 but never delivered: {lost:?}");
    // Nothing arrives that was not sent.
    assert!(received.iter().all(|n| *n < run.outcomes.len()), "received a message nobody sent");
    // The broker was down longer than the publish timeout while requests waited for it.
    assert!(!run.with_code("5.03").is_empty(), "no request was answered 5.03 while the broker was down");
}

/// A killed broker may lose what it acknowledged since its last save (mosquitto writes its
/// database at exit or on SIGUSR1, not per message), so a 2.04 for a request the old broker
/// acknowledged before the crash proves nothing about delivery. What must hold: the answers
/// are still only 2.04 or 5.03, and every request first sent after the broker died that was
/// answered 2.04 arrives — only the restarted broker can have acknowledged it, and it keeps
/// the message for the subscriber's session (saved before the crash). Requests in flight at
/// the crash are in that set when the gateway sent them again (DUP) after reconnecting. The
/// subscriber reads nothing until the restart, so the killed broker loses what it had queued
/// for it: the report shows how many 2.04 answers that was.
#[test]
fn a_killed_broker_loses_nothing_acknowledged_after_its_restart() {
    let _serial = serial();
    let run = load_across_a_broker_fault(Fault::Kill);
    run.report(Fault::Kill);
    assert_only_204_or_503(&run);
    let received: BTreeSet<usize> = run.received.iter().copied().collect();
    let lost: Vec<usize> =
        run.with_code("2.04").difference(&received).copied().filter(|n| *n >= run.after_fault).collect();
    assert!(lost.is_empty(), "sent after the crash, answered 2.04, never delivered: {lost:?}");
    assert!(!run.with_code("5.03").is_empty(), "no request was answered 5.03 while the broker was down");
}

/// A device holding an Observe relation on a raw socket: it acknowledges CON notifications.
struct Observer {
    raw: Raw,
    token: Vec<u8>,
}

impl Observer {
    /// GET Observe=0 on `path`; asserts the 2.05 with an Observe option.
    fn register(gw: &Sluice, mid: u16, token: &[u8], path: &str) -> Observer {
        let raw = Raw::new(gw.coap);
        raw.socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut req = request(RequestType::Get, true, mid, token, path);
        req.set_observe_value(0);
        let observer = Observer { raw, token: token.to_vec() };
        for attempt in 1..20u16 {
            observer.raw.send(&req.to_bytes().unwrap());
            let Some(answer) = observer.next(Duration::from_secs(2)) else { continue };
            if let Some(echo) = echo_challenge(&answer) {
                // An unverified address repeats the request with the Echo value (RFC 9175 §2.4).
                req.header.message_id = mid.wrapping_add(attempt);
                req.set_option(CoapOption::Unknown(ECHO), [echo].into());
                continue;
            }
            assert_eq!(code(&answer), "2.05", "{path}: {:?}", String::from_utf8_lossy(&answer.payload));
            assert!(answer.get_observe_value().is_some(), "{path}: registered without Observe");
            return observer;
        }
        panic!("no answer to the Observe registration of {path}");
    }

    /// The next response or notification with our token within `wait` (acknowledging CONs).
    fn next(&self, wait: Duration) -> Option<Packet> {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            let Some(packet) = self.raw.recv_packet() else { continue };
            if packet.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.code = MessageClass::Empty;
                ack.header.message_id = packet.header.message_id;
                self.raw.send(&ack.to_bytes().unwrap());
            }
            if packet.get_token() == self.token.as_slice() && packet.header.code != MessageClass::Empty {
                return Some(packet);
            }
        }
        None
    }

    /// Publishes `prefix-N` to `topic` (N = 0, 1, …) until a notification carrying one
    /// arrives; returns its payload. Retrying covers the moment between the broker accepting
    /// connections and the gateway's subscription being restored.
    fn publish_until_notified(&self, port: u16, topic: &str, prefix: &str) -> String {
        for n in 0..40 {
            mqtt_pub(port, topic, &format!("{prefix}-{n}"), &[]);
            while let Some(packet) = self.next(Duration::from_millis(500)) {
                let payload = String::from_utf8_lossy(&packet.payload).into_owned();
                assert!(packet.get_observe_value().is_some(), "a notification without Observe: {payload}");
                if payload.starts_with(prefix) {
                    return payload;
                }
            }
        }
        panic!("no notification for {topic} with {prefix}-N");
    }
}

#[test]
fn observers_get_notifications_again_after_the_broker_restarts() {
    let _serial = serial();
    let mut broker = Broker::start();
    let gw = Sluice::start(&broker.url(), &GatewayOptions::default());
    let mqtt_mode = Observer::register(&gw, 1, b"om", "mqtt/obs/m?c=o1");
    let pubsub = Observer::register(&gw, 2, b"op", "ps/obs/p?c=o2");
    let observers = || gw.metric("sluice_observers");
    assert!(wait_until(PATIENCE, || observers() == Some(2.0)), "observers: {:?}", observers());
    let before_m = mqtt_mode.publish_until_notified(broker.port, "obs/m", "before");
    let before_p = pubsub.publish_until_notified(broker.port, "obs/p", "before");
    let mut seen = vec![before_m, before_p];
    for (round, fault) in [Fault::Stop, Fault::Kill].into_iter().enumerate() {
        match fault {
            Fault::Stop => broker.stop(),
            Fault::Kill => broker.kill(),
        }
        broker.restart();
        let prefix = format!("after-{fault:?}");
        seen.push(mqtt_mode.publish_until_notified(broker.port, "obs/m", &prefix));
        seen.push(pubsub.publish_until_notified(broker.port, "obs/p", &prefix));
        assert_eq!(observers(), Some(2.0), "round {round}: an observer was dropped");
    }
    let reconnects = gw.metric("sluice_mqtt_reconnects_total");
    println!(
        "observers across two broker restarts (SIGTERM, SIGKILL): notified with {seen:?}; reconnects {reconnects:?}"
    );
    assert_eq!(reconnects, Some(2.0), "{}", gw.log());
}

/// The Echo option (RFC 9175).
const ECHO: u16 = 252;

/// The Echo value of a 4.01 that asks the device to prove its address, if it is one.
fn echo_challenge(answer: &Packet) -> Option<Vec<u8>> {
    if code(answer) != "4.01" {
        return None;
    }
    answer.get_option(CoapOption::Unknown(ECHO))?.front().cloned()
}

/// One CON request on `raw`; the answer to it (ACK or separate response), skipping empty ACKs.
fn exchange(raw: &Raw, bytes: &[u8]) -> Packet {
    raw.send(bytes);
    loop {
        let packet = raw.recv_packet().expect("no answer");
        if packet.header.code != MessageClass::Empty {
            return packet;
        }
    }
}

/// Like [`exchange`], repeating the request with the Echo value (and the next Message-ID)
/// when the gateway asks an unverified address for one.
fn ask(raw: &Raw, mut req: Packet) -> Packet {
    let answer = exchange(raw, &req.to_bytes().unwrap());
    let Some(echo) = echo_challenge(&answer) else { return answer };
    req.header.message_id = req.header.message_id.wrapping_add(1);
    req.set_option(CoapOption::Unknown(ECHO), [echo].into());
    exchange(raw, &req.to_bytes().unwrap())
}

/// Waits (bounded) for `payload` to reach the subscriber at least `count` times; returns how
/// many times it did.
fn copies(sub: &Subscriber, topic: &str, payload: &str, count: usize) -> usize {
    let n = || sub.payloads(topic).iter().filter(|p| *p == payload).count();
    wait_until(Duration::from_secs(10), || n() >= count);
    n()
}

#[test]
fn a_device_retransmitting_across_a_gateway_restart_is_served() {
    let _serial = serial();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "retx", "retx/#", "retx/probe");
    // No empty ACK and no 5.03 while the broker is frozen: the device keeps retransmitting.
    let options =
        GatewayOptions { publish_timeout: "60s", separate_response_after: "60s", ..GatewayOptions::default() };
    let mut gw = Sluice::start(&broker.url(), &options);
    let raw = Raw::new(gw.coap);

    // 1. Crashed before answering: the broker is frozen, so the gateway holds the request
    //    waiting for its PUBACK when it is killed.
    broker.freeze();
    let mut first = request(RequestType::Put, true, 0x1001, b"r1", "mqtt/retx/t?c=dev");
    first.payload = b"unanswered".to_vec();
    let first = first.to_bytes().unwrap();
    raw.send(&first);
    let puts = r#"sluice_coap_requests_total{transport="udp",method="PUT"}"#;
    assert!(wait_until(PATIENCE, || gw.metric(puts) == Some(1.0)), "the gateway never got the request");
    raw.socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(raw.recv().is_none(), "answered before the broker acknowledged");
    gw.kill();
    raw.send(&first); // a retransmission while nothing listens: lost
    broker.thaw();
    gw.restart();
    raw.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = exchange(&raw, &first); // the same datagram: same Message-ID, same token
    assert_eq!(code(&answer), "2.04", "{:?}", String::from_utf8_lossy(&answer.payload));
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!((answer.header.message_id, answer.get_token()), (0x1001, &b"r1"[..]));
    let unanswered = copies(&sub, "retx/t", "unanswered", 1);
    assert!(unanswered >= 1, "the retransmitted request never reached the broker");

    // 2. Stopped after answering, the answer lost on the way: the device retransmits to the
    //    restarted gateway, which has no memory of the exchange and carries it out again.
    let mut second = request(RequestType::Put, true, 0x1002, b"r2", "mqtt/retx/t?c=dev");
    second.payload = b"answered".to_vec();
    let second = second.to_bytes().unwrap();
    assert_eq!(code(&exchange(&raw, &second)), "2.04");
    assert_eq!(copies(&sub, "retx/t", "answered", 1), 1);
    gw.stop();
    gw.restart();
    let again = exchange(&raw, &second);
    assert_eq!(code(&again), "2.04", "{:?}", String::from_utf8_lossy(&again.payload));
    assert_eq!((again.header.message_id, again.get_token()), (0x1002, &b"r2"[..]));
    let answered = copies(&sub, "retx/t", "answered", 2);
    assert!(answered >= 1);

    // 3. Stopped gracefully (SIGTERM) before answering, the broker frozen again: the gateway
    //    must still stop, and the device that retransmits to the restarted one is served.
    broker.freeze();
    let mut third = request(RequestType::Put, true, 0x1003, b"r3", "mqtt/retx/t?c=dev");
    third.payload = b"stopping".to_vec();
    let third = third.to_bytes().unwrap();
    let before = gw.metric(puts).unwrap();
    raw.send(&third);
    assert!(wait_until(PATIENCE, || gw.metric(puts) == Some(before + 1.0)), "the gateway never got the request");
    let stopping = std::time::Instant::now();
    gw.stop();
    let stop_took = stopping.elapsed();
    raw.socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let during = raw.recv_packet().map(|p| code(&p));
    assert!(matches!(during.as_deref(), None | Some("5.03")), "answered {during:?} while the broker was frozen");
    broker.thaw();
    gw.restart();
    raw.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = exchange(&raw, &third);
    assert_eq!(code(&answer), "2.04", "{:?}", String::from_utf8_lossy(&answer.payload));
    assert_eq!((answer.header.message_id, answer.get_token()), (0x1003, &b"r3"[..]));
    let stopped = copies(&sub, "retx/t", "stopping", 2);
    assert!(stopped >= 1, "the retransmitted request never reached the broker");
    println!(
        "gateway restarts: crashed before answering → {unanswered} cop(ies) delivered; stopped after answering, \
         retransmitted → {answered} cop(ies); stopped before answering (took {stop_took:?}, device got {during:?}) → \
         {stopped} cop(ies) (at-least-once)"
    );
}

/// `a_gateway_restart_keeps_pubsub_values` (gateway.rs) covers a graceful in-process restart
/// and a plain read. This one crashes the `sluice` process (SIGKILL: nothing flushed) and
/// checks what the restarted gateway learns from the broker: the payload, its Content-Format
/// and remaining Max-Age, that the value exists (2.04, not 2.01), and that a deletion sticks.
#[test]
fn pubsub_values_survive_a_gateway_crash() {
    let _serial = serial();
    let broker = Broker::start();
    let mut gw = Sluice::start(&broker.url(), &GatewayOptions::default());
    let raw = Raw::new(gw.coap);
    raw.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut mid = 0x2000u16;
    let mut send = |method, payload: &[u8]| {
        mid += 2;
        let mut req = request(method, true, mid, &mid.to_be_bytes(), "ps/crash/v?c=dev");
        if !payload.is_empty() {
            req.payload = payload.to_vec();
            req.set_content_format(coap_lite::ContentFormat::TextPlain);
            req.add_option(CoapOption::MaxAge, vec![60]);
        }
        ask(&raw, req)
    };
    assert_eq!(code(&send(RequestType::Put, b"21.5")), "2.01");
    gw.kill();
    gw.restart();
    let read = send(RequestType::Get, b"");
    assert_eq!(code(&read), "2.05", "{:?}", String::from_utf8_lossy(&read.payload));
    assert_eq!(read.payload, b"21.5");
    assert_eq!(read.get_content_format(), Some(coap_lite::ContentFormat::TextPlain));
    let max_age = uint_option(&read, CoapOption::MaxAge);
    assert!(max_age.is_some_and(|s| (1..=60).contains(&s)), "remaining Max-Age {max_age:?}");
    assert_eq!(code(&send(RequestType::Put, b"22.0")), "2.04", "the restarted gateway did not know the value");
    assert_eq!(code(&send(RequestType::Delete, b"")), "2.02");
    gw.kill();
    gw.restart();
    assert_eq!(code(&send(RequestType::Get, b"")), "4.04", "a deleted value came back after a crash");
}

/// Connects to the broker with the gateway's client id (the broker drops the gateway's session,
/// and the gateway reconnects: a short outage with the broker up) and publishes a retained
/// `payload` to `topic` (empty: deletes the retained value) while the gateway is away.
fn take_over_and_retain(port: u16, client_id: &str, topic: &str, payload: &str) {
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", client_id, "-q", "1", "-r"])
        .args(["-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub failed");
}

/// A PUT or GET of a PubSub value; the answer.
fn pubsub(raw: &Raw, mid: u16, method: RequestType, path: &str, payload: &[u8]) -> Packet {
    let mut req = request(method, true, mid, &mid.to_be_bytes(), path);
    req.payload = payload.to_vec();
    ask(raw, req)
}

/// The gateway caches PubSub values and keeps them current from its subscriptions. While it is
/// disconnected it misses changes; after reconnecting it must not serve a value the broker no
/// longer has (another gateway deleted it meanwhile): a fresh gateway would answer 4.04.
#[test]
fn a_value_deleted_while_the_gateway_was_away_is_not_served_after_it_reconnects() {
    let _serial = serial();
    let broker = Broker::start();
    let options = GatewayOptions::default();
    let gw = Sluice::start(&broker.url(), &options);
    let raw = Raw::new(gw.coap);
    raw.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(code(&pubsub(&raw, 10, RequestType::Put, "ps/away/v?c=d", b"old")), "2.01");
    assert_eq!(pubsub(&raw, 12, RequestType::Get, "ps/away/v?c=d", b"").payload, b"old");
    take_over_and_retain(broker.port, &options.client_id, "away/v", "");
    let reconnects = || gw.metric("sluice_mqtt_reconnects_total").unwrap_or(0.0);
    assert!(wait_until(PATIENCE, || reconnects() >= 1.0), "the gateway did not reconnect:\n{}", gw.log());
    // A gateway that starts now asks the broker: the value is gone.
    let fresh = Sluice::start(&broker.url(), &GatewayOptions::default());
    let fresh_raw = Raw::new(fresh.coap);
    fresh_raw.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(code(&pubsub(&fresh_raw, 14, RequestType::Get, "ps/away/v?c=d", b"")), "4.04");
    let mut mid = 20;
    let mut read = || {
        mid += 2;
        code(&pubsub(&raw, mid, RequestType::Get, "ps/away/v?c=d", b""))
    };
    assert!(wait_until(Duration::from_secs(10), || read() == "4.04"), "still serving the deleted value");
}

/// RFC 7641 §1.3: an observer eventually has the current state. A PubSub value that changed
/// while the gateway was disconnected comes back with the restored subscription (as a retained
/// message); the observer must be told.
#[test]
fn a_pubsub_observer_learns_a_value_changed_while_the_gateway_was_away() {
    let _serial = serial();
    let broker = Broker::start();
    let options = GatewayOptions::default();
    let gw = Sluice::start(&broker.url(), &options);
    let raw = Raw::new(gw.coap);
    raw.socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(code(&pubsub(&raw, 10, RequestType::Put, "ps/away/w?c=d", b"old")), "2.01");
    let observer = Observer::register(&gw, 30, b"ow", "ps/away/w?c=o");
    take_over_and_retain(broker.port, &options.client_id, "away/w", "new");
    // The restored subscription brought the new value to the gateway: a read returns it.
    let mut mid = 40;
    let mut read = || {
        mid += 2;
        pubsub(&raw, mid, RequestType::Get, "ps/away/w?c=d", b"").payload
    };
    assert!(wait_until(PATIENCE, || read() == b"new"), "the gateway never got the new value");
    let notification = observer.next(Duration::from_secs(15)).map(|p| String::from_utf8_lossy(&p.payload).into_owned());
    assert_eq!(notification.as_deref(), Some("new"), "the observer still holds the old value");
}

/// The gateway reads what its consumer of the MQTT client's incoming channel maintains (the
/// PubSub value cache, the buffer of an Observe registration) as soon as `subscribe` returns:
/// the first read of a value after a gateway restart, a retained value delivered on Observe.
/// So `subscribe` must return only once the retained messages that came with the SUBACK were
/// handled by that consumer, not merely queued for it; a slow consumer makes the gap visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_returns_after_its_retained_messages_were_handled() {
    let broker = Broker::start();
    mqtt_pub(broker.port, "handled/t", "stored", &["-r", "-q", "1"]);
    let config = sluice::mqtt::ClientConfig {
        url: broker.url(),
        client_id: format!("handled-{}", std::process::id()),
        track_processing: true,
        ..sluice::mqtt::ClientConfig::default()
    };
    let (client, mut incoming) = sluice::mqtt::try_connect(config).unwrap();
    assert!(client.wait_connected(PATIENCE).await, "no connection to {}", broker.url());
    let handled = std::sync::Arc::new(Mutex::new(Vec::new()));
    let consumer = {
        let (handled, client) = (handled.clone(), client.clone());
        tokio::spawn(async move {
            while let Some(msg) = incoming.recv().await {
                tokio::time::sleep(Duration::from_millis(300)).await; // a busy consumer
                handled.lock().unwrap().push(String::from_utf8_lossy(&msg.payload).into_owned());
                client.processed();
            }
        })
    };
    tokio::time::timeout(PATIENCE, client.subscribe("handled/t", 1)).await.unwrap().unwrap();
    let seen = handled.lock().unwrap().clone();
    assert_eq!(seen, vec!["stored"], "subscribe returned before its retained message was handled");
    client.close().await;
    consumer.abort();
}
