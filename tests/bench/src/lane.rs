//! A request lane: one UDP socket (one source port) that sends one kind of request at a paced
//! rate for a bounded time, and counts what comes back. A Confirmable lane waits for each answer
//! (or `timeout`) before the next request, so it has one request in flight; a Non-confirmable lane
//! sends on its schedule and counts the answers that arrive in between.
//!
//! Message-IDs are per socket and start on [`pool::mid_clock`]; a lane must send fewer than
//! [`MAX_LANE_RATE`] per second so that they never repeat within the gateway's de-duplication
//! lifetime (~247 s), however long it runs. `soak` uses lanes for every CoAP kind of its mix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

use crate::coap::{self, Kind, Template};
use crate::counter;
use crate::pool;
use crate::report::{histogram, percentiles, round2};
use crate::stop::Stop;

/// The most requests per second one lane (one source port) sends: below the 262/s at which its
/// Message-IDs would come round within the gateway's de-duplication lifetime.
pub const MAX_LANE_RATE: f64 = 200.0;

/// What the payload of a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// No payload (GET).
    None,
    /// The counting subscriber's `RUN:SEQ:SEND_TIME` ([`counter::payload`]), run = the lane's tag.
    Counted,
    /// `soak:SEQ`.
    Text,
}

/// One kind of request, shared by the lanes that send it.
#[derive(Debug)]
pub struct Spec {
    /// The kind's name in reports (`con_publish`, …).
    pub name: &'static str,
    /// The first two bytes of every token of this kind (and the run of counted payloads).
    pub tag: u16,
    /// Confirmable (wait for each answer) or Non-confirmable.
    pub con: bool,
    /// The requests; message `seq` uses template `seq % len`.
    pub templates: Vec<Template>,
    /// The payload.
    pub payload: Payload,
    /// The next sequence number (shared by the lanes of the kind).
    pub seq: AtomicU64,
    /// No sequence number at or above this is sent (it bounds the counting subscriber).
    pub max_seq: u64,
    /// An unanswered CON counts as timed out after this long.
    pub timeout: Duration,
}

/// What the lanes of one kind counted.
#[derive(Debug)]
pub struct Stats {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests the socket refused to send.
    pub send_errors: AtomicU64,
    /// Answers with a 2.xx code.
    pub answered: AtomicU64,
    /// Answers with any other code (by code in `codes`).
    pub failed: AtomicU64,
    /// Confirmable requests without an answer within the timeout.
    pub timeouts: AtomicU64,
    /// 4.01 answers with an Echo value, answered by repeating the request with it.
    pub echo_challenges: AtomicU64,
    /// Answer codes, `"2.04"` → count.
    pub codes: Mutex<BTreeMap<String, u64>>,
    /// Request → answer, ns (Confirmable only).
    pub rtt: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            echo_challenges: AtomicU64::new(0),
            codes: Mutex::new(BTreeMap::new()),
            rtt: Mutex::new(histogram()),
        }
    }
}

impl Stats {
    fn answer(&self, code: u8, rtt: Option<Duration>) {
        if code >> 5 == 2 {
            self.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut codes) = self.codes.lock() {
            *codes.entry(coap::code_string(code)).or_default() += 1;
        }
        if let (Some(rtt), Ok(mut h)) = (rtt, self.rtt.lock()) {
            let _ = h.record((rtt.as_nanos() as u64).max(1));
        }
    }

    /// `{sent, answered, failed, codes, timeouts, rtt}` (the last two for Confirmable kinds).
    pub fn to_json(&self, con: bool) -> Value {
        let mut v = json!({
            "sent": self.sent.load(Ordering::Relaxed),
            "send_errors": self.send_errors.load(Ordering::Relaxed),
            "answered": self.answered.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "codes": self.codes.lock().map(|c| c.clone()).unwrap_or_default(),
        });
        if con {
            v["timeouts"] = self.timeouts.load(Ordering::Relaxed).into();
            v["echo_challenges"] = self.echo_challenges.load(Ordering::Relaxed).into();
            v["rtt"] = self.rtt.lock().map(|h| percentiles(&h)).unwrap_or(Value::Null);
        }
        v
    }
}

/// Binds a socket on the target's loopback, connected to it.
pub async fn socket(target: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(target.ip(), 0)).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Sends `spec`'s requests from `socket` at `rate` per second (at most [`MAX_LANE_RATE`]) until
/// `end`, `stop`, `limit` requests or the kind's last sequence number.
pub async fn run(
    spec: Arc<Spec>,
    stats: Arc<Stats>,
    socket: UdpSocket,
    rate: f64,
    end: Instant,
    limit: Option<u64>,
    stop: Stop,
) {
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.01, MAX_LANE_RATE));
    let mut mid = pool::mid_clock();
    let (mut out, mut buf, mut payload) = (Vec::with_capacity(256), vec![0u8; 2048], Vec::with_capacity(64));
    let mut due = Instant::now();
    let mut n = 0u64;
    while due < end && !stop.raised() && limit.is_none_or(|l| n < l) {
        // Until the next request is due, count what arrives (answers to NON requests).
        while let Ok(r) = timeout_at(due, socket.recv(&mut buf)).await {
            match r {
                Ok(len) => stray(&spec, &stats, &socket, &buf[..len]),
                // ICMP port unreachable while the gateway is away: keep the schedule.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        let seq = spec.seq.fetch_add(1, Ordering::Relaxed);
        if seq >= spec.max_seq {
            break;
        }
        let token = coap::token(spec.tag, seq);
        match spec.payload {
            Payload::None => payload.clear(),
            Payload::Counted => counter::payload(&mut payload, spec.tag, seq, 0),
            Payload::Text => {
                payload.clear();
                payload.extend_from_slice(format!("soak:{seq}").as_bytes());
            }
        }
        let Some(template) = spec.templates.get((seq % spec.templates.len().max(1) as u64) as usize) else { break };
        template.stamp(&mut out, spec.con, mid, &token, &payload);
        mid = mid.wrapping_add(1);
        let sent = Instant::now();
        if socket.send(&out).await.is_err() {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        n += 1;
        if spec.con {
            let request = Request { template, token: &token, payload: &payload, sent };
            await_answer(&spec, &stats, &socket, &mut buf, &request, &mut mid).await;
        }
        // Behind by more than a second (a long wait for an answer): start afresh rather than
        // send a burst to catch up.
        due += period;
        let now = Instant::now();
        if due + Duration::from_secs(1) < now {
            due = now;
        }
    }
    if !spec.con {
        // The answers to the last NON requests.
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(len)) = timeout_at(until, socket.recv(&mut buf)).await {
            stray(&spec, &stats, &socket, &buf[..len]);
        }
    }
}

/// A Confirmable request waiting for its answer.
struct Request<'a> {
    template: &'a Template,
    token: &'a [u8; coap::TOKEN_LEN],
    payload: &'a [u8],
    sent: Instant,
}

/// Waits for the answer carrying the request's token (after an empty ACK if the gateway answers
/// separately); a 4.01 with an Echo value (RFC 9175: the gateway has not seen this source port
/// receive yet) is answered by repeating the request with it, with the next Message-ID.
async fn await_answer(
    spec: &Spec,
    stats: &Stats,
    socket: &UdpSocket,
    buf: &mut [u8],
    req: &Request<'_>,
    mid: &mut u16,
) {
    let (token, sent) = (req.token, req.sent);
    let deadline = sent + spec.timeout;
    let mut echoed = false;
    loop {
        let len = match timeout_at(deadline, socket.recv(buf)).await {
            Err(_) => {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Ok(Ok(len)) => len,
        };
        let Some(r) = coap::parse(&buf[..len]) else { continue };
        if r.kind == Kind::Con {
            let _ = socket.try_send(&coap::empty_ack(r.mid));
        }
        if r.code != 0 && r.token == token.as_slice() {
            if let Some(echo) = coap::echo_challenge(&r).filter(|_| !echoed) {
                echoed = true;
                stats.echo_challenges.fetch_add(1, Ordering::Relaxed);
                let mut out = Vec::with_capacity(256);
                req.template.with_echo(echo).stamp(&mut out, true, *mid, token, req.payload);
                *mid = mid.wrapping_add(1);
                let _ = socket.send(&out).await;
                continue;
            }
            stats.answer(r.code, Some(sent.elapsed()));
            return;
        }
        if r.code != 0 && r.kind != Kind::Rst {
            count_late(spec, stats, r.token, r.code);
        }
    }
}

/// A datagram outside a wait: a NON request's answer, or a late answer.
fn stray(spec: &Spec, stats: &Stats, socket: &UdpSocket, buf: &[u8]) {
    let Some(r) = coap::parse(buf) else { return };
    if r.kind == Kind::Con {
        let _ = socket.try_send(&coap::empty_ack(r.mid));
    }
    if r.code != 0 {
        count_late(spec, stats, r.token, r.code);
    }
}

/// Counts the answer to a NON request of this kind (a CON's late answer was already counted as
/// a timeout).
fn count_late(spec: &Spec, stats: &Stats, token: &[u8], code: u8) {
    if !spec.con && coap::parse_token(token).is_some_and(|(tag, _)| tag == spec.tag) {
        stats.answer(code, None);
    }
}

/// `part` of `whole` in percent, two decimals (0 of 0 is 0 %).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { round2(part as f64 * 100.0 / whole as f64) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_of_nothing_are_zero() {
        assert_eq!(pct(0, 0), 0.0);
        assert_eq!(pct(1, 3), 33.33);
    }
}
