//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and of their replay in
//! `host/tests/fuzz_regressions.rs` (stable, in CI). Not an API: hidden from the docs, and
//! free to change with the targets (see `fuzz/README.md`). Compiled only with the `fuzzing`
//! feature and in tests. It is over the ~500 lines the code keeps to: four harnesses and the
//! generators of their inputs (a conversation script, Wasm modules written byte by byte) that
//! only make sense together; split it by target when one more is added.
//!
//! Each function takes the fuzzer's bytes, drives one part of the gateway with them and
//! panics when a property fails; a panic anywhere below is a finding.
//!
//! - [`coap_message`]: the CoAP decoder on arbitrary bytes; what decodes encodes back to the
//!   same bytes and decodes to the same message, and request parsing gives a verdict.
//! - [`endpoint`]: the sans-IO endpoint on a conversation (datagrams from four peers, the
//!   app's answers and notifications, Echo retries, a fake clock); its state stays within the
//!   configured limits, every datagram it sends decodes and fits a block, and an unverified
//!   peer never gets more than `amplification_factor` times what it sent.
//! - [`config`]: YAML text through the loader `sluice run` and `sluice check` use.
//! - [`rule_abi`]: a Wasm rule generated from the bytes calls the host imports with chosen
//!   fields, indices, pointers and lengths; every hook answers with a verdict the host can act
//!   on, or its fail policy.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)] // a harness: a panic is the report

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coap_lite::CoapOption;
use sluice_sdk::abi::{self, Hook, field, import};
use sluice_sdk::{
    Access, Auth, Authz, Code, Config as RuleConfig, Downlink, Identity, MessageType, Method, Principal, Request,
    Route, Rule, Transform, Uplink, topic,
};

use crate::coap::{Endpoint, EndpointConfig, Event, Notification, ObserverId, RequestId, Response};
use crate::rules::module::write_uleb128;
use crate::rules::{Engine, Limits, WasmRule};

/// The fuzzer's bytes, read front to back; reads past the end give zeros / nothing.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u8(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn i32(&mut self) -> i32 {
        i32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn i64(&mut self) -> i64 {
        i64::from(self.i32()) << 32 | i64::from(self.i32().cast_unsigned())
    }
}

// ---------------------------------------------------------------------------------------------
// coap_message

/// Decodes `data` as a datagram; a message that decodes must re-encode to the same bytes.
pub fn coap_message(data: &[u8]) {
    let packet = match Endpoint::decode_datagram(data) {
        Ok(packet) => packet,
        Err(_) => return,
    };
    let [b0, code, m0, m1, ..] = *data else { panic!("a message shorter than its header decoded") };
    assert_eq!(u8::from(packet.header.code), code);
    assert_eq!(packet.header.message_id, u16::from_be_bytes([m0, m1]));
    assert_eq!(packet.header.get_type() as u8, (b0 >> 4) & 3);
    match Endpoint::check_request(&packet) {
        Ok(method) => assert!((1..=7).contains(&method)),
        Err(answer) => assert!(matches!(answer >> 5, 4 | 5), "answered {answer:#x}"),
    }
    let bytes = Endpoint::encode_datagram(&packet).expect("a decoded message encodes");
    let again = Endpoint::decode_datagram(&bytes).expect("a re-encoded message decodes");
    assert_eq!(again, packet, "decode(encode(m)) != m");
    assert_eq!(bytes, data, "the decoder accepted an encoding it does not produce");
}

// ---------------------------------------------------------------------------------------------
// endpoint

/// The peers of a conversation (two share an address, one is IPv6).
const PEERS: [&str; 4] = ["192.0.2.1:5683", "192.0.2.2:5683", "192.0.2.1:40000", "[2001:db8::1]:5683"];
/// The largest payload the harness's app answers with (255 × 16 bytes).
const MAX_APP_PAYLOAD: usize = 4080;
/// Options and token a datagram of the endpoint may add to a block of payload.
const MAX_OVERHEAD: usize = 128;
/// The longest diagnostic payload the endpoint writes itself (it may exceed a small block).
const MAX_DIAGNOSTIC: usize = 64;
/// The Echo option (RFC 9175).
const ECHO: u16 = 252;
/// Bytes per second of amplification budget, when the config has one.
const FUZZ_BUDGET: u32 = 2_000;

/// The endpoint's config from the first byte: block size, small limits, and which of the
/// abuse checks (Echo, rate limit) are on.
fn endpoint_config(select: u8) -> EndpointConfig {
    EndpointConfig {
        block_size: 16 << (select & 7).min(6),
        max_body_size: if select & 8 != 0 { 256 } else { 4096 },
        amplification_factor: if select & 16 != 0 { 3 } else { 0 },
        // With the small body limit, the Echo checks run with a budget (the default mode);
        // else strictly (every larger answer challenged).
        amplification_budget: if select & 8 != 0 { FUZZ_BUDGET } else { 0 },
        amplification_budget_per_prefix: FUZZ_BUDGET,
        peer_rate: if select & 32 != 0 { 5 } else { 0 },
        peer_burst: 10,
        max_observers: if select & 64 != 0 { 2 } else { 8 },
        max_observers_per_peer: if select & 64 != 0 { 1 } else { 4 },
        ack_random_factor: if select & 128 != 0 { 1.0 } else { 1.5 },
        max_retransmit: if select & 128 != 0 { 1 } else { 4 },
        max_dedup_entries: 32,
        max_block_transfers: 3,
        observe_queue: 2,
        max_verified_peers: 2,
        ..EndpointConfig::default()
    }
}

/// An endpoint, a fake clock, and the app's view of it.
struct Conversation {
    ep: Endpoint,
    config: EndpointConfig,
    peers: [SocketAddr; 4],
    start: Instant,
    now: Instant,
    /// Requests delivered and not answered yet, oldest first.
    requests: VecDeque<RequestId>,
    /// Relations registered and not gone.
    observers: Vec<ObserverId>,
    /// Each peer's last datagram, and the last Echo value the endpoint sent it.
    last: [Vec<u8>; 4],
    echo: [Option<Vec<u8>>; 4],
    /// The size of each request body delivered.
    bodies: Vec<usize>,
    /// Each unanswered request's peer and the size of the datagram that completed it.
    origin: std::collections::HashMap<RequestId, (usize, usize)>,
    /// Bytes of answers to unverified peers beyond the factor, with a budget.
    excess: usize,
}

/// Drives an endpoint with a conversation; the first byte picks the config, then operations:
///
/// | byte % 8 | operation | then |
/// |---|---|---|
/// | 0, 6, 7 | a datagram | peer, u16 length, bytes |
/// | 1 | the clock advances, timers run | b: b × 50 ms below 200, else (b − 199) minutes |
/// | 2 | the app answers the oldest request | flags (1 observe, 2 busy, 4 format, 8 max-age, 16 location), code, payload / 16 |
/// | 3 | the app notifies an observer | which, payload / 16, flags (1 CON, 2 cancel instead) |
/// | 4 | a peer repeats its last datagram with the Echo value it was given | peer |
/// | 5 | the clock advances by one retransmission step | – |
pub fn endpoint(data: &[u8]) {
    converse(data);
}

fn converse(data: &[u8]) -> Conversation {
    let mut input = Input(data);
    let config = endpoint_config(input.u8());
    let start = Instant::now();
    let mut c = Conversation {
        ep: Endpoint::new(config.clone(), start),
        config,
        peers: PEERS.map(|p| p.parse().expect("a literal address")),
        start,
        now: start,
        requests: VecDeque::new(),
        observers: Vec::new(),
        last: Default::default(),
        echo: Default::default(),
        bodies: Vec::new(),
        origin: std::collections::HashMap::new(),
        excess: 0,
    };
    while let Some(op) = input.byte() {
        match op % 8 {
            1 => {
                let b = input.u8();
                let step = if b < 200 {
                    Duration::from_millis(50 * u64::from(b))
                } else {
                    Duration::from_secs(60 * u64::from(b - 199))
                };
                c.advance(step);
            }
            2 => {
                let (flags, code, len) = (input.u8(), input.u8(), input.u8());
                c.respond(flags, code, usize::from(len) * 16);
            }
            3 => {
                let (which, len, flags) = (input.u8(), input.u8(), input.u8());
                c.notify(which, usize::from(len) * 16, flags);
            }
            4 => {
                let peer = usize::from(input.u8() % 4);
                c.echo_retry(peer);
            }
            5 => c.advance(c.config.ack_timeout),
            _ => {
                let peer = usize::from(input.u8() % 4);
                let len = usize::from(input.u16());
                let bytes = input.take(len).to_vec();
                c.datagram(peer, bytes);
            }
        }
        c.check();
    }
    c
}

impl Conversation {
    fn datagram(&mut self, peer: usize, bytes: Vec<u8>) {
        let addr = self.peers[peer];
        self.ep.handle_datagram(addr, &bytes, self.now);
        self.last[peer] = bytes;
        let sent = self.drain();
        self.check_amplification(peer, self.last[peer].len(), &sent);
    }

    /// An unverified peer gets at most `amplification_factor` times the datagram it sent.
    fn check_amplification(&mut self, peer: usize, request: usize, sent: &[crate::coap::Transmit]) {
        let factor = self.config.amplification_factor as usize;
        let addr = self.peers[peer];
        let unverified = factor > 0 && !self.ep.is_verified(addr, self.now);
        if !unverified {
            return;
        }
        let limit = request.saturating_mul(factor).max(4);
        if self.config.amplification_budget > 0 {
            // With a budget, what goes beyond the factor is bounded in all: the budget's
            // rate over the conversation, plus the second's worth a bucket starts with.
            let over: usize = sent.iter().filter(|t| t.peer == addr).map(|t| t.bytes.len().saturating_sub(limit)).sum();
            self.excess += over;
            let elapsed = self.now.duration_since(self.start).as_secs_f64();
            let bound = f64::from(self.config.amplification_budget) * (elapsed + 1.0);
            assert!(self.excess as f64 <= bound, "{} bytes beyond the factor in {elapsed:.1} s", self.excess);
            return;
        }
        for sent in sent.iter().filter(|t| t.peer == addr) {
            assert!(
                sent.bytes.len() <= limit,
                "{} bytes sent to an unverified peer for a datagram of {request} bytes (factor {factor}): {} \
                 (last datagram {}; {} peers verified so far, {:?} into the conversation)",
                sent.bytes.len(),
                hex::encode(&sent.bytes),
                hex::encode(&self.last[peer]),
                self.ep.stats().peers_verified,
                self.now.duration_since(self.start),
            );
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.ep.poll_timeout().is_some_and(|at| at <= self.now) {
            self.ep.handle_timeout(self.now);
        }
        if let Some(at) = self.ep.poll_timeout() {
            assert!(at > self.now, "a timer is still due after handle_timeout: the driver would spin");
        }
        self.drain();
    }

    fn respond(&mut self, flags: u8, code: u8, len: usize) {
        let Some(id) = self.requests.pop_front() else { return };
        // The app answers with response codes (2.xx, 4.xx, 5.xx) only; rules cannot give others.
        let code = if matches!(code >> 5, 2 | 4 | 5) { code } else { 0x40 | (code & 0x1f) };
        let origin = self.origin.remove(&id);
        if flags & 2 != 0 {
            self.ep.respond_busy(id, self.now);
        } else {
            let response = Response {
                code,
                content_format: (flags & 4 != 0).then_some(50),
                max_age: (flags & 8 != 0).then_some(60),
                location_path: if flags & 16 != 0 { vec!["ps".into(), "t".into()] } else { Vec::new() },
                payload: vec![b'v'; len],
                observe: flags & 1 != 0,
                secret: flags & 32 != 0,
            };
            if let Some(observer) = self.ep.respond(id, response, self.now) {
                assert!(!self.observers.contains(&observer), "an observer id was given twice");
                self.observers.push(observer);
            }
        }
        let sent = self.drain();
        if let Some((peer, request)) = origin {
            self.check_amplification(peer, request, &sent);
        }
    }

    fn notify(&mut self, which: u8, len: usize, flags: u8) {
        if self.observers.is_empty() {
            return;
        }
        let index = usize::from(which) % self.observers.len();
        let id = self.observers[index];
        if flags & 2 != 0 {
            self.ep.cancel_observer(id);
            self.observers.swap_remove(index);
        } else {
            let n = Notification { payload: vec![b'n'; len], confirmable: flags & 1 != 0, ..Notification::default() };
            assert!(self.ep.notify(id, n, self.now), "an observer the app holds is unknown to the endpoint");
        }
        self.drain();
    }

    fn echo_retry(&mut self, peer: usize) {
        let Some(echo) = self.echo[peer].clone() else { return };
        let Ok(mut packet) = Endpoint::decode_datagram(&self.last[peer]) else { return };
        packet.clear_option(CoapOption::from(ECHO));
        packet.add_option(CoapOption::from(ECHO), echo);
        packet.header.message_id = packet.header.message_id.wrapping_add(1);
        if let Some(bytes) = Endpoint::encode_datagram(&packet) {
            self.datagram(peer, bytes);
        }
    }

    /// Takes what the endpoint produced: events into the app's view, datagrams checked.
    fn drain(&mut self) -> Vec<crate::coap::Transmit> {
        let mut sent = Vec::new();
        while let Some(t) = self.ep.poll_transmit() {
            let packet = Endpoint::decode_datagram(&t.bytes).expect("the endpoint sent a datagram it cannot decode");
            assert!(
                packet.payload.len() <= self.config.block_size.max(MAX_DIAGNOSTIC),
                "a payload of {} bytes with block_size {}",
                packet.payload.len(),
                self.config.block_size
            );
            assert!(
                t.bytes.len() <= packet.payload.len() + MAX_OVERHEAD,
                "{} bytes of header and options",
                t.bytes.len() - packet.payload.len()
            );
            if let Some(peer) = self.peers.iter().position(|p| *p == t.peer)
                && let Some(echo) = packet.get_first_option(CoapOption::from(ECHO))
            {
                self.echo[peer] = Some(echo.clone());
            }
            sent.push(t);
        }
        while let Some(event) = self.ep.poll_event() {
            match event {
                Event::Request(request) => {
                    assert!(self.peers.contains(&request.peer));
                    assert!(request.payload.len() <= self.config.max_body_size, "body over max_body_size");
                    self.requests.push_back(request.id);
                    self.bodies.push(request.payload.len());
                    if let Some(peer) = self.peers.iter().position(|p| *p == request.peer) {
                        self.origin.insert(request.id, (peer, self.last[peer].len()));
                    }
                }
                Event::ObserverGone { id, .. } => {
                    let index = self.observers.iter().position(|o| *o == id).expect("gone: an observer never given");
                    self.observers.swap_remove(index);
                }
            }
        }
        sent
    }

    /// The state stays within the configured limits.
    fn check(&self) {
        let config = &self.config;
        let held = self.ep.footprint();
        assert!(held.block_transfers <= config.max_block_transfers, "block-wise state over its limit");
        let largest = held.largest_block_body;
        assert!(largest <= config.max_body_size.max(MAX_APP_PAYLOAD), "a block-wise body of {largest} bytes");
        let touches = held.block_touches;
        assert!(touches <= 2 * held.block_transfers + 1025, "{touches} block-wise touches queued");
        assert!(held.observers <= config.max_observers, "observers over max_observers");
        assert_eq!(held.observers, self.observers.len(), "the endpoint and the app disagree on observers");
        for peer in &self.peers {
            assert!(self.ep.observers_of(*peer) <= config.max_observers_per_peer);
        }
        assert!(held.verified_peers <= config.max_verified_peers, "verified peers over the limit");
        assert!(held.unanswered <= self.requests.len(), "the endpoint holds requests the app never got");
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// Parses `data` (when UTF-8) as a config file; problems must name a key or the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match crate::config::Config::parse(text, "/nonexistent/sluice-fuzz/config.yaml") {
        Ok(config) => {
            let chain = config.rule_chain();
            assert!(!chain.is_empty());
            for rule in &chain {
                let _ = crate::config::flatten(&rule.config);
            }
        }
        Err(problems) => {
            assert!(!problems.0.is_empty(), "an error without a problem");
            for problem in &problems.0 {
                assert!(!problem.message.is_empty(), "a problem without a message: {problem:?}");
            }
            let _ = problems.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rule_abi

/// Every field id of ABI v1, and some that are not.
const FIELDS: &[i32] = &[
    field::METHOD,
    field::MESSAGE_TYPE,
    field::PATH_SEGMENT,
    field::QUERY,
    field::CONTENT_FORMAT,
    field::ACCEPT,
    field::OBSERVE,
    field::MAX_AGE,
    field::PEER,
    field::PAYLOAD,
    field::PSK_IDENTITY,
    field::CERT_SUBJECT,
    field::CERT_SAN,
    field::CERT_FINGERPRINT,
    field::CLIENT_ID,
    field::USERNAME,
    field::ATTRIBUTE,
    field::ACCESS,
    field::TOPIC,
    field::CONTENT_TYPE,
    field::USER_PROPERTY,
    field::CONFIG_ENTRY,
    field::NOW_MS,
    field::OUT_CLIENT_ID,
    field::OUT_USERNAME,
    field::OUT_ATTRIBUTE,
    field::OUT_TOKEN,
    field::OUT_TOPIC,
    field::OUT_QOS,
    field::OUT_RETAIN,
    field::OUT_EXPIRY,
    field::OUT_USER_PROPERTY,
    field::OUT_CODE,
    field::OUT_REASON,
    field::OUT_PAYLOAD,
    field::OUT_CONTENT_FORMAT,
    0,
    -1,
    99,
    113,
    i32::MAX,
    i32::MIN,
];

/// The rule's memory cap: small, so that `memory.grow` reaches it.
const RULE_MEMORY: usize = 1 << 20;

fn pick_field(input: &mut Input) -> i32 {
    let b = input.u8();
    FIELDS.get(usize::from(b)).copied().unwrap_or_else(|| i32::from(b as i8))
}

/// A guest pointer: mostly inside the first page, else near its end, or anything.
fn pick_ptr(input: &mut Input) -> i32 {
    let b = input.u8();
    let low = i32::from(b & 63);
    match b >> 6 {
        0 => low * 64,
        1 => 65536 - low,
        2 => input.i32(),
        _ => [-1, i32::MIN, i32::MAX, 65536, 65535, 1 << 20, -65536, 4096][(b & 7) as usize],
    }
}

/// A length or capacity: mostly small, else large or negative.
fn pick_len(input: &mut Input) -> i32 {
    let b = input.u8();
    let low = i32::from(b & 63);
    match b >> 6 {
        0 => low,
        1 => low * 64,
        2 => input.i32(),
        _ => [-1, i32::MIN, i32::MAX, 65536, 65535, 1 << 20, 0, 70_000][(b & 7) as usize],
    }
}

/// Appends `v` as signed LEB128.
fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

fn i32_const(out: &mut Vec<u8>, v: i32) {
    out.push(0x41);
    sleb(out, i64::from(v));
}

fn call(out: &mut Vec<u8>, func: u8, drop: bool) {
    out.push(0x10);
    out.push(func);
    if drop {
        out.push(0x1a);
    }
}

/// The body of one hook: up to 15 import calls and memory operations, then a verdict.
fn hook_body(input: &mut Input, init: bool) -> Vec<u8> {
    let mut code = vec![0]; // no locals
    for _ in 0..input.u8() % 16 {
        match input.u8() % 9 {
            0 => {
                for v in [pick_field(input), i32::from(input.u8() % 4), pick_ptr(input), pick_len(input)] {
                    i32_const(&mut code, v);
                }
                call(&mut code, 0, true);
            }
            1 => {
                i32_const(&mut code, pick_field(input));
                i32_const(&mut code, i32::from(input.u8() as i8));
                call(&mut code, 1, true);
            }
            2 => {
                for v in [pick_field(input), pick_ptr(input), pick_len(input)] {
                    i32_const(&mut code, v);
                }
                call(&mut code, 2, true);
            }
            3 => {
                i32_const(&mut code, pick_field(input));
                let b = input.u8();
                let value = if b & 0x80 == 0 { i64::from(b) - 8 } else { input.i64() };
                code.push(0x42);
                sleb(&mut code, value);
                call(&mut code, 3, true);
            }
            4 => {
                for v in [pick_ptr(input), pick_len(input), pick_ptr(input), pick_len(input)] {
                    i32_const(&mut code, v);
                }
                call(&mut code, 4, true);
            }
            5 => {
                for v in [i32::from(input.u8() % 6), pick_ptr(input), pick_len(input)] {
                    i32_const(&mut code, v);
                }
                call(&mut code, 5, false);
            }
            6 => {
                i32_const(&mut code, i32::from(input.u8()));
                code.extend_from_slice(&[0x40, 0x00, 0x1a]); // memory.grow, drop
            }
            7 => {
                i32_const(&mut code, pick_ptr(input));
                i32_const(&mut code, pick_len(input));
                call(&mut code, 6, true);
            }
            _ => {
                i32_const(&mut code, pick_ptr(input));
                i32_const(&mut code, i32::from(input.u8()));
                code.extend_from_slice(&[0x3a, 0x00, 0x00]); // i32.store8
            }
        }
    }
    let b = input.u8();
    let verdict = if init && b & 0x80 == 0 { 0 } else { i32::from(b as i8) % 16 };
    i32_const(&mut code, verdict);
    code.push(0x0b);
    code
}

fn section(module: &mut Vec<u8>, id: u8, count: usize, items: &[u8]) {
    let mut body = Vec::new();
    write_uleb128(&mut body, count as u64);
    body.extend_from_slice(items);
    module.push(id);
    write_uleb128(module, body.len() as u64);
    module.extend_from_slice(&body);
}

fn name(out: &mut Vec<u8>, text: &str) {
    write_uleb128(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A rule module built from the input: the `sluice1` imports, one page of memory whose start
/// holds input bytes, the ABI marker, and the six hooks with generated bodies.
fn rule_module(input: &mut Input) -> Vec<u8> {
    let len = usize::from(input.u8());
    let data = input.take(len).to_vec();
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 get/config, 1 get_i64, 2 set, 3 set_i64, 4 log, 5 hook, 6 marker, 7 inputs.
    let types: &[&[u8]] = &[
        &[0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f],
        &[0x60, 2, 0x7f, 0x7f, 1, 0x7e],
        &[0x60, 3, 0x7f, 0x7f, 0x7f, 1, 0x7f],
        &[0x60, 2, 0x7f, 0x7e, 1, 0x7f],
        &[0x60, 3, 0x7f, 0x7f, 0x7f, 0],
        &[0x60, 0, 1, 0x7f],
        &[0x60, 0, 0],
        &[0x60, 2, 0x7f, 0x7f, 1, 0x7f],
    ];
    section(&mut m, 1, types.len(), &types.concat());
    let imports = [
        (import::GET, 0),
        (import::GET_I64, 1),
        (import::SET, 2),
        (import::SET_I64, 3),
        (import::CONFIG, 0),
        (import::LOG, 4),
        (import::INPUTS, 7),
    ];
    let mut items = Vec::new();
    for (field, ty) in imports {
        name(&mut items, abi::IMPORT_MODULE);
        name(&mut items, field);
        items.extend_from_slice(&[0x00, ty]);
    }
    section(&mut m, 2, imports.len(), &items);
    section(&mut m, 3, 7, &[6, 5, 5, 5, 5, 5, 5]);
    section(&mut m, 5, 1, &[0x00, 1]);
    let mut exports = Vec::new();
    name(&mut exports, "memory");
    exports.extend_from_slice(&[0x02, 0]);
    name(&mut exports, abi::EXPORT_MARKER);
    // Functions are numbered after the imports: the marker, then the hooks.
    let marker = imports.len() as u8;
    exports.extend_from_slice(&[0x00, marker]);
    for (i, hook) in Hook::ALL.iter().enumerate() {
        name(&mut exports, hook.export());
        exports.extend_from_slice(&[0x00, marker + 1 + i as u8]);
    }
    section(&mut m, 7, 2 + Hook::ALL.len(), &exports);
    let mut bodies = vec![2, 0, 0x0b]; // the marker: no locals, end
    for i in 0..Hook::ALL.len() {
        let body = hook_body(input, i == 0);
        write_uleb128(&mut bodies, body.len() as u64);
        bodies.extend_from_slice(&body);
    }
    section(&mut m, 10, 1 + Hook::ALL.len(), &bodies);
    let mut segment = vec![0x00, 0x41, 0x00, 0x0b];
    write_uleb128(&mut segment, data.len() as u64);
    segment.extend_from_slice(&data);
    section(&mut m, 11, 1, &segment);
    m
}

fn text(input: &mut Input) -> String {
    let len = usize::from(input.u8() % 32);
    String::from_utf8_lossy(input.take(len)).into_owned()
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(None).expect("the Wasm engine starts"))
}

/// Builds a rule from `data`, loads it as the gateway does and runs every hook on a request
/// made of the rest of the input; each answer must be a verdict the gateway can act on.
pub fn rule_abi(data: &[u8]) {
    run_rule(data);
}

/// What the hooks answered, twice each (the second time on the same or a new instance).
#[derive(Debug, Default)]
struct Answers {
    auth: Vec<Auth>,
    route: Vec<Route>,
    authz: Vec<Authz>,
    uplink: Vec<Transform>,
    downlink: Vec<Transform>,
}

fn run_rule(data: &[u8]) -> Option<Answers> {
    let mut input = Input(data);
    let wasm = rule_module(&mut input);
    let compiled = engine().compile(&wasm).expect("the generated module compiles");
    let config =
        RuleConfig::from_entries(vec![("users.0.username".into(), text(&mut input)), ("a".into(), "b".into())]);
    let limits = Limits { memory_bytes: RULE_MEMORY, memory_recycle_bytes: RULE_MEMORY / 2, ..Limits::default() };
    let rule = WasmRule::new(engine(), &compiled, "fuzz", "0.0.0", &config, limits).ok()?;
    let methods =
        [Method::Get, Method::Post, Method::Put, Method::Delete, Method::Fetch, Method::Patch, Method::IPatch];
    let request = Request {
        method: methods[usize::from(input.u8() % 7)],
        message_type: if input.u8() & 1 == 0 { MessageType::Confirmable } else { MessageType::NonConfirmable },
        path: vec![text(&mut input), text(&mut input)],
        query: vec![text(&mut input)],
        content_format: Some(input.u16()),
        accept: None,
        observe: Some(u32::from(input.u8() % 2)),
        max_age: Some(60),
        peer: "192.0.2.1:5683".into(),
        identity: Identity { psk_identity: Some(text(&mut input)), ..Identity::default() },
        payload: input.take(64).to_vec(),
    };
    let who = Principal { client_id: text(&mut input), username: Some(text(&mut input)), attributes: Vec::new() };
    let mut answers = Answers::default();
    for _ in 0..2 {
        answers.auth.push(check_auth(rule.authenticate(&request)));
        answers.route.push(check_route(rule.route(&request, &who)));
        answers.authz.push(rule.authorize(&who, Access::Publish, "a/b"));
        answers.authz.push(rule.authorize(&who, Access::Subscribe, "a/+"));
        let uplink = Uplink { topic: "a/b".into(), payload: request.payload.clone(), content_format: Some(0) };
        answers.uplink.push(check_transform(rule.uplink(&uplink, &who)));
        let downlink = Downlink {
            topic: "a/b".into(),
            payload: request.payload.clone(),
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
        };
        answers.downlink.push(check_transform(rule.downlink(&downlink, &who)));
    }
    let stats = rule.stats();
    assert!(stats.failures <= stats.calls && stats.traps + stats.timeouts <= stats.failures, "{stats:?}");
    Some(answers)
}

fn error_code(code: Code) -> bool {
    matches!(code.class(), 4 | 5)
}

fn check_auth(auth: Auth) -> Auth {
    match &auth {
        Auth::Allow(p) => assert!(!p.client_id.contains('\0'), "{auth:?}"),
        Auth::Session { client_id, token } => assert!(!client_id.contains('\0') && !token.contains('\0')),
        Auth::Deny(reject) => assert!(error_code(reject.code), "{auth:?}"),
        _ => {}
    }
    auth
}

fn check_route(route: Route) -> Route {
    let ok = match &route {
        Route::Publish(p) | Route::SetValue(p) => topic::valid_topic(&p.topic) && p.qos.is_none_or(|q| q <= 2),
        Route::Subscribe { filter, qos } => topic::valid_filter(filter) && qos.is_none_or(|q| q <= 2),
        Route::Unsubscribe { filter } => topic::valid_filter(filter),
        Route::Read { topic } | Route::Delete { topic } | Route::ObserveValue { topic, .. } => {
            topic::valid_topic(topic)
        }
        Route::Respond { code, .. } => matches!(code.class(), 2 | 4 | 5),
        Route::Reject(reject) => error_code(reject.code),
        _ => true,
    };
    assert!(ok, "the host acted on an invalid route: {route:?}");
    route
}

fn check_transform(transform: Transform) -> Transform {
    if let Transform::Reject(reject) = &transform {
        assert!(error_code(reject.code), "{transform:?}");
    }
    transform
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Publish, Reject};

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn libcoap_block1_upload_is_reassembled_in_the_endpoint_harness() {
        let c = converse(&seed("endpoint", "block1_put"));
        assert_eq!(c.bodies, [200], "one request with the whole 200-byte body");
        assert_eq!(c.ep.stats().malformed, 0);
        assert_eq!(c.ep.footprint().block_transfers, 0);
    }

    #[test]
    fn libcoap_observe_registers_a_relation_in_the_endpoint_harness() {
        let c = converse(&seed("endpoint", "observe_mqtt"));
        assert_eq!(c.ep.stats().notifications_sent, 1);
    }

    #[test]
    fn generated_rule_publishes_what_its_bytes_say() {
        let answers = run_rule(&seed("rule_abi", "publish")).unwrap();
        assert_eq!(answers.auth[0], Auth::Allow(Principal::new("dev1")));
        let publish =
            Publish { topic: "a/b".into(), qos: Some(1), retain: false, expiry: None, user_properties: vec![] };
        assert_eq!(answers.route[0], Route::Publish(publish));
        assert_eq!(answers.authz[0], Authz::Allow);
        assert_eq!(answers.uplink[0], Transform::Continue);
        assert_eq!(answers.downlink[0], Transform::Replace { payload: b"a/b".to_vec(), content_format: None });
        assert_eq!(answers.route[1], answers.route[0], "a warm instance answers the same");
    }

    #[test]
    fn generated_rule_faults_get_each_hooks_fail_policy() {
        let answers = run_rule(&seed("rule_abi", "faults")).unwrap();
        assert!(matches!(&answers.auth[0], Auth::Deny(r) if r.code == Code::UNAUTHORIZED), "{answers:?}");
        assert!(
            matches!(&answers.route[0], Route::Reject(Reject { code: Code::INTERNAL_SERVER_ERROR, .. })),
            "{answers:?}"
        );
        assert_eq!(answers.authz[0], Authz::Deny);
        assert_eq!(answers.uplink[0], crate::rules::uplink_failed());
        assert_eq!(answers.downlink[0], Transform::Drop);
    }

    #[test]
    fn leb128_matches_the_wasm_spec_examples() {
        let mut out = Vec::new();
        write_uleb128(&mut out, 624_485);
        assert_eq!(out, [0xe5, 0x8e, 0x26]);
        out.clear();
        sleb(&mut out, -123_456);
        assert_eq!(out, [0xc0, 0xbb, 0x78]);
        out.clear();
        sleb(&mut out, 64);
        assert_eq!(out, [0xc0, 0x00]);
    }
}
