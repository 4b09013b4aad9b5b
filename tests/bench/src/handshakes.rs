//! The `handshakes` scenario: complete DTLS 1.2 PSK handshakes (webrtc-dtls as the client, the
//! same library the gateway serves with), each from a fresh UDP socket (a source port of its
//! own), `concurrency` at a time, for a duration or a count. After each handshake one CON
//! request goes over the session and its answer is awaited (unless `request` is off), so that a
//! handshake counted is a session that works; then the client sends close_notify.
//!
//! A handshake the gateway refuses (beyond its `dtls.max_handshakes` in progress or
//! `dtls.max_sessions` peers it drops the ClientHello without a word) shows up as a slow
//! handshake (the client retransmits its flight after 1 s) or, past `timeout`, as a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use coap_lite::RequestType;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::net::UdpSocket;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::Config as DtlsConfig;
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::Conn;

use crate::coap::{self, Kind, Template};
use crate::procfs::Process;
use crate::report::{Report, histogram, percentiles, round2};
use crate::stop::Stop;

/// The longest a run may last.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The most handshakes a run may do.
pub const MAX_COUNT: u64 = 10_000_000;
/// Handshakes in flight at most (each holds a socket).
pub const MAX_CONCURRENCY: usize = 4096;
/// Distinct failure reasons kept (the rest are counted as `other`).
const MAX_REASONS: usize = 16;

/// What `handshakes` does.
#[derive(Clone, Debug)]
pub struct HandshakesConfig {
    /// The gateway's DTLS address (loopback only).
    pub target: SocketAddr,
    /// The PSK identity the client sends.
    pub identity: String,
    /// The key: the bytes of the text after `identity:` in the gateway's PSK file.
    pub key: String,
    /// Handshakes in flight at once, each on its own socket.
    pub concurrency: usize,
    /// How long to keep starting handshakes.
    pub duration: Duration,
    /// Stop after this many handshakes (started).
    pub count: Option<u64>,
    /// Send one CON request over each session and wait for its answer.
    pub request: bool,
    /// The request: a CON GET of this path (and query).
    pub request_path: String,
    /// A handshake (and then the request) that takes longer fails.
    pub timeout: Duration,
    /// The gateway process (for CPU and memory).
    pub gateway: Option<Process>,
}

impl HandshakesConfig {
    /// Defaults: identity `bench`, 32 in flight, 10 s, a GET of `/.well-known/core` after each.
    pub fn new(target: SocketAddr) -> HandshakesConfig {
        HandshakesConfig {
            target,
            identity: "bench".into(),
            key: "bench-psk-key".into(),
            concurrency: 32,
            duration: Duration::from_secs(10),
            count: None,
            request: true,
            request_path: "/.well-known/core".into(),
            timeout: Duration::from_secs(5),
            gateway: None,
        }
    }

    fn dtls(&self) -> DtlsConfig {
        let key = self.key.as_bytes().to_vec();
        DtlsConfig {
            psk: Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))),
            // webrtc-dtls's client sends its `psk_identity_hint` as the PSK identity.
            psk_identity_hint: Some(self.identity.as_bytes().to_vec()),
            // RFC 7252's mandatory suite, offered first by the gateway too.
            cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
            ..DtlsConfig::default()
        }
    }
}

/// What the workers share.
struct Shared {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    handshake: Mutex<Histogram<u64>>,
    request: Mutex<Histogram<u64>>,
}

impl Shared {
    fn fail(&self, reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::unwrap_used)] // never poisoned: no panics while held
        let mut f = self.failures.lock().unwrap();
        let reason = if f.len() >= MAX_REASONS && !f.contains_key(&reason) { "other".into() } else { reason };
        *f.entry(reason).or_default() += 1;
    }
}

/// How one attempt ended; a failure's reason is a few words, so that reasons group.
enum Outcome {
    Ok { handshake: Duration, request: Option<Duration> },
    Failed(String),
}

/// One DTLS session on a fresh socket: handshake, the CON request of `cfg` (if `cfg.request`)
/// with token and Message-ID from `n`, close_notify. Ok(handshake time, request round trip), or
/// the reason it failed in a few words.
pub async fn session(
    cfg: &HandshakesConfig,
    template: &Template,
    n: u64,
) -> Result<(Duration, Option<Duration>), String> {
    match attempt(cfg, template, n).await {
        Outcome::Ok { handshake, request } => Ok((handshake, request)),
        Outcome::Failed(reason) => Err(reason),
    }
}

/// One handshake (and request) on a fresh socket.
async fn attempt(cfg: &HandshakesConfig, template: &Template, n: u64) -> Outcome {
    let socket = match UdpSocket::bind(SocketAddr::new(cfg.target.ip(), 0)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("socket: {}", e.kind())),
    };
    if let Err(e) = socket.connect(cfg.target).await {
        return Outcome::Failed(format!("socket: {}", e.kind()));
    }
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(socket);
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    let dtls = match tokio::time::timeout(cfg.timeout, DTLSConn::new(conn.clone(), cfg.dtls(), true, None)).await {
        Ok(Ok(dtls)) => dtls,
        Ok(Err(e)) => {
            let _ = conn.close().await;
            return Outcome::Failed(format!("handshake: {e}"));
        }
        Err(_) => {
            let _ = conn.close().await;
            return Outcome::Failed("handshake timeout (refused? see dtls.max_handshakes)".into());
        }
    };
    let handshake = start.elapsed();
    let mut outcome = Outcome::Ok { handshake, request: None };
    if cfg.request {
        outcome = match exchange(&dtls, template, n, deadline).await {
            Ok(rtt) => Outcome::Ok { handshake, request: Some(rtt) },
            Err(reason) => Outcome::Failed(reason),
        };
    }
    // close_notify, so that the gateway ends the session now rather than at its idle timeout.
    let _ = tokio::time::timeout(Duration::from_secs(1), dtls.close()).await;
    outcome
}

/// A CON GET over the session; Ok(round trip) if a 2.xx answer came.
async fn exchange(dtls: &DTLSConn, template: &Template, n: u64, deadline: Instant) -> Result<Duration, String> {
    let mid = (n & 0xffff) as u16;
    let token = coap::token(0x4853, n); // "HS"
    let mut out = Vec::with_capacity(64);
    template.stamp(&mut out, true, mid, &token, &[]);
    let sent = Instant::now();
    if let Err(e) = dtls.write(&out, Some(deadline.saturating_duration_since(sent))).await {
        return Err(format!("request write: {e}"));
    }
    let mut buf = vec![0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("request timeout".into());
        }
        let len = match tokio::time::timeout(left, dtls.read(&mut buf, None)).await {
            Err(_) => return Err("request timeout".into()),
            Ok(Err(e)) => return Err(format!("request read: {e}")),
            Ok(Ok(len)) => len,
        };
        let Some(r) = coap::parse(&buf[..len]) else { continue };
        if r.token != token.as_slice() && !(r.kind == Kind::Rst && r.mid == mid) {
            continue;
        }
        if r.kind == Kind::Rst {
            return Err("request reset".into());
        }
        if r.code == 0 {
            continue; // an empty ACK: the answer follows separately
        }
        if r.kind == Kind::Con {
            let _ = dtls.write(&coap::empty_ack(r.mid), None).await;
        }
        return if r.code >> 5 == 2 {
            Ok(sent.elapsed())
        } else {
            Err(format!("answer {}", coap::code_string(r.code)))
        };
    }
}

/// One handshake with a short timeout before the run: a gateway that does not answer, or that
/// refuses the key, is named at once.
async fn probe(cfg: &HandshakesConfig, template: &Template) -> anyhow::Result<()> {
    let mut probe = cfg.clone();
    probe.timeout = cfg.timeout.min(Duration::from_secs(3));
    if let Outcome::Failed(reason) = attempt(&probe, template, 0).await {
        bail!(
            "no DTLS PSK session with {} ({reason}): start the gateway with a dtls: section \
             (sluice run --config tests/bench/gateway.yaml serves 127.0.0.1:25684) and check that \
             --identity/--key match a line identity:key of its psk_file",
            cfg.target
        );
    }
    Ok(())
}

/// Runs `handshakes` and reports it.
pub async fn run(cfg: &HandshakesConfig, stop: &Stop) -> anyhow::Result<Report> {
    crate::pool::check_loopback(cfg.target)?;
    if cfg.duration > MAX_DURATION {
        bail!("--duration is at most {} s", MAX_DURATION.as_secs());
    }
    if cfg.concurrency == 0 || cfg.concurrency > MAX_CONCURRENCY {
        bail!("--concurrency must be 1..={MAX_CONCURRENCY}");
    }
    if cfg.identity.is_empty() || cfg.key.is_empty() {
        bail!("--identity and --key must not be empty");
    }
    let template = Arc::new(Template::new(RequestType::Get, &cfg.request_path, None)?);
    probe(cfg, &template).await?;

    let count = cfg.count.unwrap_or(MAX_COUNT).min(MAX_COUNT);
    let shared = Arc::new(Shared {
        started: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        failures: Mutex::new(BTreeMap::new()),
        handshake: Mutex::new(histogram()),
        request: Mutex::new(histogram()),
    });
    let generator = Process::current();
    let gen_before = generator.sample().ok();
    let before = cfg.gateway.and_then(|g| g.sample().ok());
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut workers = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency.min(count as usize) {
        let (cfg, shared, template, stop) = (cfg.clone(), shared.clone(), template.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut hs = histogram();
            let mut rq = histogram();
            while Instant::now() < end && !stop.raised() {
                let n = shared.started.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                match attempt(&cfg, &template, n + 1).await {
                    Outcome::Ok { handshake, request } => {
                        shared.completed.fetch_add(1, Ordering::Relaxed);
                        let _ = hs.record((handshake.as_nanos() as u64).max(1));
                        if let Some(r) = request {
                            let _ = rq.record((r.as_nanos() as u64).max(1));
                        }
                    }
                    Outcome::Failed(reason) => shared.fail(reason),
                }
            }
            #[allow(clippy::unwrap_used)] // never poisoned
            {
                let _ = shared.handshake.lock().unwrap().add(&hs);
                let _ = shared.request.lock().unwrap().add(&rq);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed();
    let after = cfg.gateway.and_then(|g| g.sample().ok());
    let gen_after = generator.sample().ok();

    let completed = shared.completed.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let mut r = Report::new("handshakes");
    r.set("target", cfg.target.to_string());
    r.set("identity", cfg.identity.clone());
    r.set("concurrency", cfg.concurrency as u64);
    r.set("request", if cfg.request { Value::String(format!("CON GET {}", cfg.request_path)) } else { Value::Null });
    r.set("attempted", completed + failed);
    r.set("completed", completed);
    r.set("failed", failed);
    #[allow(clippy::unwrap_used)] // never poisoned
    let failures = shared.failures.lock().unwrap().clone();
    r.set("failures", serde_json::to_value(failures).unwrap_or(Value::Null));
    r.set("elapsed_s", round2(elapsed.as_secs_f64()));
    r.set("handshakes_per_s", round2(completed as f64 / elapsed.as_secs_f64().max(1e-9)));
    #[allow(clippy::unwrap_used)] // never poisoned
    {
        r.set("handshake", percentiles(&shared.handshake.lock().unwrap()));
        r.set("request_rtt", percentiles(&shared.request.lock().unwrap()));
    }
    match (cfg.gateway, before, after) {
        (Some(g), Some(b), Some(a)) => {
            r.set("gateway_pid", g.pid());
            let cpu_us = (a.cpu_s - b.cpu_s) * 1e6;
            r.set("gateway_cpu_s", round2(a.cpu_s - b.cpu_s));
            r.set(
                "gateway_cpu_us_per_handshake",
                if completed == 0 { Value::Null } else { round2(cpu_us / completed as f64).into() },
            );
            r.set("gateway_rss_mib_before", round2(b.rss as f64 / 1048576.0));
            r.set("gateway_rss_mib_after", round2(a.rss as f64 / 1048576.0));
        }
        _ => {
            r.set("gateway_pid", Value::Null);
            r.set("gateway_cpu_us_per_handshake", Value::Null);
        }
    }
    if let (Some(b), Some(a)) = (gen_before, gen_after) {
        r.set("generator_cpu_s", round2(a.cpu_s - b.cpu_s));
    }
    r.set("interrupted", stop.raised());
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn only_loopback_targets_and_sane_bounds_are_accepted() {
        let err = run(&HandshakesConfig::new("192.0.2.1:5684".parse().unwrap()), &Stop::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("not a loopback address"), "{err:#}");
        let mut cfg = HandshakesConfig::new("127.0.0.1:9".parse().unwrap());
        cfg.concurrency = 0;
        assert!(run(&cfg, &Stop::new()).await.is_err());
        cfg.concurrency = 1;
        cfg.duration = MAX_DURATION * 2;
        assert!(format!("{:#}", run(&cfg, &Stop::new()).await.unwrap_err()).contains("--duration"));
    }

    #[tokio::test]
    async fn a_silent_target_is_named_before_the_run() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = HandshakesConfig::new(silent.local_addr().unwrap());
        cfg.timeout = Duration::from_millis(300);
        let err = run(&cfg, &Stop::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("no DTLS PSK session"), "{err:#}");
    }
}
