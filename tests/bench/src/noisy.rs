//! The `noisy` scenario: do a malicious rule's traps, endless loops and memory bombs for some
//! devices take service from the others?
//!
//! Against a gateway whose chain runs the fault rule (`tests/rules/fault`, built by
//! `scripts/build-rules.sh` to `target/rules/fault.wasm`) before `builtin:emqx`, it runs the
//! same CON load of the good devices ([`crate::put`]) twice: alone (the baseline), then while
//! attacker devices send CON requests to the fault rule's failing paths (`/loop`, `/memory`,
//! `/trap` by default) at a steady rate from sockets of their own, without waiting for answers.
//! The report puts the good devices' acks/s and round-trip percentiles of both runs side by
//! side with their ratios, and what the attackers got back (each attack should be answered by
//! the `route` hook's fail policy, 5.00).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use coap_lite::RequestType;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::coap::{self, Kind, Template};
use crate::lane::MAX_LANE_RATE;
use crate::pool::{self, Pool};
use crate::put::{Load, Phase};
use crate::report::{Report, round2};
use crate::stop::Stop;

/// What the attackers do.
#[derive(Clone, Debug)]
pub struct AbuseConfig {
    /// Attack requests per second, all paths together.
    pub rate: u64,
    /// The paths attacked in turn (with `?c=attacker{n}` appended).
    pub paths: Vec<String>,
    /// Wait after the attack starts before the good devices' run.
    pub settle: Duration,
}

impl AbuseConfig {
    /// 100 attacks/s on `/loop`, `/memory` and `/trap`, 1 s of settling.
    pub fn new() -> AbuseConfig {
        AbuseConfig {
            rate: 100,
            paths: vec!["/loop".into(), "/memory".into(), "/trap".into()],
            settle: Duration::from_secs(1),
        }
    }
}

impl Default for AbuseConfig {
    fn default() -> AbuseConfig {
        AbuseConfig::new()
    }
}

/// What the attackers sent and got back.
#[derive(Default)]
struct Tally {
    answers: AtomicU64,
    codes: Mutex<BTreeMap<String, u64>>,
}

/// Attacker devices sending at a steady rate until stopped.
struct Abuser {
    tally: Arc<Tally>,
    task: tokio::task::JoinHandle<u64>,
    stop: Stop,
    _receivers: pool::Receivers,
}

impl Abuser {
    async fn start(target: SocketAddr, cfg: &AbuseConfig) -> anyhow::Result<Abuser> {
        if cfg.paths.is_empty() || cfg.rate == 0 {
            bail!("--abuse-rate must be above 0 and --abuse-path given at least once");
        }
        // Few enough requests per source port that Message-IDs never repeat within the
        // gateway's de-duplication lifetime.
        let sockets = (cfg.rate as f64 / MAX_LANE_RATE).ceil().max(2.0) as usize;
        let pool = Arc::new(Pool::bind(target, sockets).await?);
        let templates = (0..sockets * cfg.paths.len())
            .map(|i| {
                let path = &cfg.paths[i % cfg.paths.len()];
                let sep = if path.contains('?') { '&' } else { '?' };
                Template::new(RequestType::Put, &format!("{path}{sep}c=attacker{i}"), None)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("building the attack requests from --abuse-path")?;
        let tally = Arc::new(Tally::default());
        let t = tally.clone();
        let receivers = pool.spawn_receivers(Arc::new(move |s: &UdpSocket, b: &[u8]| {
            let Some(r) = coap::parse(b) else { return };
            if r.kind == Kind::Con {
                let _ = s.try_send(&coap::empty_ack(r.mid));
            }
            if r.code != 0 {
                t.answers.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut c) = t.codes.lock() {
                    *c.entry(coap::code_string(r.code)).or_default() += 1;
                }
            }
        }));
        let stop = Stop::new();
        let (s, rate) = (stop.clone(), cfg.rate as f64);
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let tag = rand::random::<u16>();
            let mut buf = Vec::with_capacity(128);
            let mut n = 0u64;
            while !s.raised() {
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due).await;
                let i = (n % templates.len() as u64) as usize;
                let (k, socket) = pool.socket_of(n);
                templates[i].stamp(&mut buf, true, pool.next_mid(k), &coap::token(tag, n), b"x");
                let _ = socket.send(&buf).await;
                n += 1;
            }
            n
        });
        Ok(Abuser { tally, task, stop, _receivers: receivers })
    }

    /// Stops sending, waits a moment for the last answers and returns `(sent, answers, codes)`.
    async fn stop(self) -> (u64, u64, BTreeMap<String, u64>) {
        self.stop.raise();
        let sent = self.task.await.unwrap_or(0);
        // A loop or a bomb is answered after its deadline; give the last ones time.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let codes = self.tally.codes.lock().map(|c| c.clone()).unwrap_or_default();
        (sent, self.tally.answers.load(Ordering::Relaxed), codes)
    }
}

/// Runs the good devices' `phase` alone, then again under attack, and reports both.
pub async fn run(load: &mut Load, phase: &Phase, abuse: &AbuseConfig, stop: &Stop) -> anyhow::Result<Report> {
    if !phase.con {
        bail!("noisy measures the good devices' CON round trips: --con is implied");
    }
    let baseline = load.run(phase, stop).await?;
    let abuser = Abuser::start(load.config().target, abuse).await?;
    tokio::time::sleep(abuse.settle).await;
    let attacked = load.run(phase, stop).await;
    let (sent, answers, codes) = abuser.stop().await;
    let attacked = attacked?;

    let mut r = Report::new("noisy");
    r.set("target", load.config().target.to_string());
    r.set("devices", load.config().devices);
    r.set("window", phase.window as u64);
    r.set("rate_offered", phase.rate);
    r.set("abuse_rate", abuse.rate);
    r.set("abuse_paths", json!(abuse.paths));
    r.set("abuse_sent", sent);
    r.set("abuse_answered", answers);
    r.set("abuse_codes", json!(codes));
    for (name, rep) in [("baseline", &baseline), ("attacked", &attacked)] {
        let rtt = rep.get("rtt").cloned().unwrap_or(Value::Null);
        r.set(
            name,
            json!({
                "sent": rep.u64("sent"),
                "answered_2_04": rep.u64("answered_2_04"),
                "failed": rep.u64("failed"),
                "failed_codes": rep.get("failed_codes").cloned().unwrap_or(Value::Null),
                "timeouts": rep.u64("timeouts"),
                "delivered": rep.get("delivered").cloned().unwrap_or(Value::Null),
                "lost": rep.get("lost").cloned().unwrap_or(Value::Null),
                "acks_per_s": rep.f64("acks_per_s"),
                "p50_us": rtt["p50_us"].clone(),
                "p99_us": rtt["p99_us"].clone(),
                "gateway_cpu_s": rep.get("gateway_cpu_s").cloned().unwrap_or(Value::Null),
                "machine_cpu_busy_pct": rep.get("machine_cpu_busy_pct").cloned().unwrap_or(Value::Null),
            }),
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 && a.is_finite() { Value::from(round2(a / b)) } else { Value::Null };
    r.set("acks_per_s_ratio", ratio(attacked.f64("acks_per_s"), baseline.f64("acks_per_s")));
    let p99 = |rep: &Report| rep.get("rtt").and_then(|v| v["p99_us"].as_f64()).unwrap_or(f64::NAN);
    r.set("p99_ratio", ratio(p99(&attacked), p99(&baseline)));
    // A request not answered 2.04, or answered but not delivered (one that was neither counts
    // once).
    let good_missing = |rep: &Report| (rep.u64("failed") + rep.u64("timeouts")).max(rep.u64("lost"));
    r.set("good_missing", good_missing(&baseline) + good_missing(&attacked));
    r.set("interrupted", stop.raised());
    Ok(r)
}
