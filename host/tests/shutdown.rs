//! Graceful shutdown as an operator does it: SIGTERM to the `sluice` binary while devices keep
//! sending. Every request sent during the shutdown is counted and found answered: the ones in
//! progress (CON publishes waiting for the broker's PUBACK) with their own answer when the
//! broker acknowledges within `coap.drain_timeout`, else 5.03; the ones that arrive after the
//! signal with 5.03 and the retry hint as Max-Age. Real peers: Debian's mosquitto (frozen with
//! SIGSTOP to hold the PUBACKs), `mosquitto_sub`, the `sluice` binary, raw CoAP datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, RequestType};
use common::faults::{Broker, GatewayOptions, Sluice};
use common::{Raw, Sub, code, request, uint_option};

/// CON publishes waiting for their PUBACK when the signal comes.
const IN_FLIGHT: u16 = 20;
/// CON publishes sent after the signal.
const LATE: u16 = 10;
/// `mqtt.retry_after` of the gateway under test.
const RETRY_AFTER: u32 = 3;

fn put(raw: &Raw, mid: u16) {
    let mut req = request(RequestType::Put, true, mid, &mid.to_be_bytes(), &format!("mqtt/drain/{mid}?c=dev1"));
    req.payload = format!("m{mid}").into_bytes();
    raw.send(&req.to_bytes().unwrap());
}

/// The answers to `mids`, by Message-ID (code and Max-Age), collected until each has one or
/// `within` passes.
fn answers(raw: &Raw, mids: &[u16], within: Duration) -> BTreeMap<u16, (String, Option<u32>)> {
    let deadline = Instant::now() + within;
    let mut got = BTreeMap::new();
    while got.len() < mids.len() && Instant::now() < deadline {
        let Some(packet) = raw.recv_packet() else { continue };
        let mid = packet.header.message_id;
        if mids.contains(&mid) {
            let answer = (code(&packet), uint_option(&packet, CoapOption::MaxAge));
            assert!(got.insert(mid, answer).is_none(), "a second answer to {mid}");
        }
    }
    got
}

fn start(broker: &Broker) -> Sluice {
    // Piggybacked answers only: a waiting request is answered in its ACK, by Message-ID.
    let options = GatewayOptions { separate_response_after: "30s", retry_after: RETRY_AFTER, ..Default::default() };
    Sluice::start(&broker.url(), &options)
}

#[test]
fn requests_in_progress_finish_and_later_ones_get_5_03_during_a_shutdown() {
    let broker = Broker::start();
    let mut sluice = start(&broker);
    let sub = Sub::start(broker.port, "drain/#", usize::from(IN_FLIGHT));
    let raw = Raw::new(sluice.coap);
    broker.freeze();
    let in_flight: Vec<u16> = (1..=IN_FLIGHT).collect();
    for &mid in &in_flight {
        put(&raw, mid);
    }
    std::thread::sleep(Duration::from_millis(300));
    sluice.terminate();
    std::thread::sleep(Duration::from_millis(300));
    let late: Vec<u16> = (1000..1000 + LATE).collect();
    for &mid in &late {
        put(&raw, mid);
    }
    let refused = answers(&raw, &late, Duration::from_secs(3));
    // The broker acknowledges within the drain time (5 s by default).
    broker.thaw();
    let finished = answers(&raw, &in_flight, Duration::from_secs(5));
    let clean = sluice.wait_stopped();
    println!("in progress: {finished:?}\nafter the signal: {refused:?}");
    assert_eq!(finished.len(), in_flight.len(), "every request in progress is answered: {finished:?}");
    assert!(finished.values().all(|(c, _)| c == "2.04"), "each with its own answer: {finished:?}");
    assert_eq!(refused.len(), late.len(), "every request after the signal is answered: {refused:?}");
    assert!(
        refused.values().all(|a| *a == ("5.03".to_string(), Some(RETRY_AFTER))),
        "5.03 with the retry hint: {refused:?}"
    );
    let mut lines = sub.lines();
    lines.sort();
    assert_eq!(lines.len(), in_flight.len(), "every acknowledged publish reached the broker: {lines:?}");
    assert!(clean, "the gateway exits with success:\n{}", sluice.log());
    assert!(sluice.log().contains("Sluice stopped."), "{}", sluice.log());
}

#[test]
fn at_the_drain_deadline_what_is_still_waiting_gets_5_03() {
    let broker = Broker::start();
    let mut sluice = start(&broker);
    let raw = Raw::new(sluice.coap);
    broker.freeze();
    let in_flight: Vec<u16> = (1..=IN_FLIGHT).collect();
    for &mid in &in_flight {
        put(&raw, mid);
    }
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    sluice.terminate();
    // The broker never answers: after the drain time (5 s), each gets 5.03.
    let refused = answers(&raw, &in_flight, Duration::from_secs(10));
    let waited = signalled.elapsed();
    sluice.wait_stopped();
    broker.thaw();
    println!("answered after {waited:?}: {refused:?}");
    assert_eq!(refused.len(), in_flight.len(), "every request in progress is answered: {refused:?}");
    assert!(refused.values().all(|a| *a == ("5.03".to_string(), Some(RETRY_AFTER))), "{refused:?}");
    assert!(sluice.log().contains("drain time ran out"), "{}", sluice.log());
}
