//! The `soak` scenario: a mixed load for a bounded time against a running gateway, with its
//! memory and file descriptors sampled, to show that nothing leaks and nothing is lost.
//!
//! The mix, each kind on lanes of its own ([`crate::lane`], one source port each):
//! NON and CON publishes (`PUT /mqtt/soak/{non,con}/{device}`, counted again at a subscriber on
//! the broker), PubSub writes (`PUT /ps/soak/ps/{k}`) and reads (`GET /ps/soak/ps/{k}`), observers
//! of a `/mqtt/` and a `/ps/` topic receiving the messages an MQTT client publishes there, and
//! DTLS PSK sessions (handshake, one CON request, close_notify), one after the other.
//!
//! Every `interval` the gateway's RSS (`VmRSS`) and open file descriptors (`/proc/PID/fd`) are
//! sampled, with its CPU share and the counts so far. Growth is measured from the end of the
//! warm-up (`warmup` share of the run) to the end of the load: caches that legitimately fill
//! (the de-duplication cache, the PubSub value cache, rule instances, allocator arenas) must be
//! full by then — size the warm-up or the gateway's bounds (`coap.max_dedup_entries`) for it.
//! The run fails (`pass: false`, exit 1) if any kind misses more than `max_missing_pct` of its
//! answers, deliveries or notifications, if the fds grew by more than `max_fd_growth`, or the
//! RSS by more than `max_rss_growth_mib`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use coap_lite::RequestType;
use serde_json::json;
use sluice::mqtt::{self, ClientConfig, Message};
use tokio::time::Instant;

use crate::coap::Template;
use crate::counter::Counter;
use crate::handshakes::{self, HandshakesConfig};
use crate::lane::{self, MAX_LANE_RATE, Payload, Spec, Stats, pct};
use crate::observe::{ObserveState, Observers};
use crate::procfs::Process;
use crate::report::Report;
use crate::stop::Stop;

mod samples;
mod verdict;

use samples::{Counts, DtlsStats, Reading, line, read, sample};

/// The longest soak.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// What `soak` does.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// The gateway's CoAP address (loopback only).
    pub target: SocketAddr,
    /// The gateway's DTLS address; None: no DTLS sessions.
    pub dtls: Option<SocketAddr>,
    /// PSK identity and key for the DTLS sessions.
    pub identity: String,
    /// The key (the text after `identity:` in the gateway's psk_file).
    pub key: String,
    /// The broker the gateway publishes to.
    pub mqtt: String,
    /// The gateway process, for RSS, fds and CPU.
    pub gateway: Option<Process>,
    /// How long the load runs.
    pub duration: Duration,
    /// Share of `duration` that is warm-up (growth is measured after it).
    pub warmup: f64,
    /// Time between samples.
    pub interval: Duration,
    /// Devices (client ids) the publishes come from.
    pub devices: u64,
    /// NON publishes per second.
    pub non_rate: f64,
    /// CON publishes per second.
    pub con_rate: f64,
    /// PubSub writes per second.
    pub ps_write_rate: f64,
    /// PubSub reads per second.
    pub ps_read_rate: f64,
    /// PubSub topics written and read.
    pub ps_topics: u64,
    /// Observers of each of the two observed topics (`/mqtt/` and `/ps/`).
    pub observers: u64,
    /// MQTT messages per second published to each observed topic.
    pub notify_rate: f64,
    /// DTLS sessions per second (0: none).
    pub dtls_rate: f64,
    /// A CON request without an answer after this long is missing.
    pub timeout: Duration,
    /// Missing answers, deliveries or notifications tolerated per kind, in percent.
    pub max_missing_pct: f64,
    /// RSS growth after warm-up tolerated, MiB.
    pub max_rss_growth_mib: f64,
    /// Open file descriptor growth after warm-up tolerated.
    pub max_fd_growth: i64,
    /// Print each sample to stderr as it is taken.
    pub progress: bool,
}

impl SoakConfig {
    /// Defaults for a 2-core machine: 60 s (a quarter warm-up), samples every 5 s, 100
    /// devices, NON 400/s, CON 400/s, PubSub writes 50/s and reads 200/s on 20 topics, 2 × 50
    /// observers of 5 messages/s each, 2 DTLS sessions/s; 0.1 % missing, 16 MiB and 4 fds of
    /// growth tolerated.
    pub fn new(target: SocketAddr, mqtt: String) -> SoakConfig {
        SoakConfig {
            target,
            dtls: None,
            identity: "bench".into(),
            key: "bench-psk-key".into(),
            mqtt,
            gateway: None,
            duration: Duration::from_secs(60),
            warmup: 0.25,
            interval: Duration::from_secs(5),
            devices: 100,
            non_rate: 400.0,
            con_rate: 400.0,
            ps_write_rate: 50.0,
            ps_read_rate: 200.0,
            ps_topics: 20,
            observers: 50,
            notify_rate: 5.0,
            dtls_rate: 2.0,
            timeout: Duration::from_secs(5),
            max_missing_pct: 0.1,
            max_rss_growth_mib: 16.0,
            max_fd_growth: 4,
            progress: true,
        }
    }
}

/// One kind of request: its spec, its counts and its lanes' rate.
struct Mix {
    spec: Arc<Spec>,
    stats: Arc<Stats>,
    rate: f64,
}

impl Mix {
    fn new(
        name: &'static str,
        tag: u16,
        con: bool,
        templates: Vec<Template>,
        payload: Payload,
        rate: f64,
        cfg: &SoakConfig,
    ) -> Mix {
        let max_seq = (rate * cfg.duration.as_secs_f64() * 1.2).ceil() as u64 + 1000;
        let spec = Spec { name, tag, con, templates, payload, seq: AtomicU64::new(0), max_seq, timeout: cfg.timeout };
        Mix { spec: Arc::new(spec), stats: Arc::new(Stats::default()), rate }
    }

    fn lanes(&self) -> usize {
        if self.rate <= 0.0 { 0 } else { (self.rate / MAX_LANE_RATE).ceil() as usize }
    }
}

/// Runs `soak` and reports it; `pass` in the report says whether it met its bounds.
pub async fn run(cfg: &SoakConfig, stop: &Stop) -> anyhow::Result<Report> {
    crate::pool::check_loopback(cfg.target)?;
    if cfg.duration > MAX_DURATION || cfg.duration.is_zero() {
        bail!("--duration must be above 0 and at most {} h", MAX_DURATION.as_secs() / 3600);
    }
    if !(0.0..1.0).contains(&cfg.warmup) {
        bail!("--warmup is a share of --duration: 0 … 0.99");
    }
    if cfg.devices == 0 || cfg.ps_topics == 0 {
        bail!("--devices and --ps-topics must be at least 1");
    }
    crate::pool::probe(cfg.target).await?;
    let tag = rand::random::<u16>() & 0xfff0;
    let templates = |method, f: &dyn Fn(u64) -> String, n: u64| -> anyhow::Result<Vec<Template>> {
        (0..n).map(|i| Template::new(method, &f(i), None)).collect()
    };
    let d = cfg.devices;
    let t = cfg.ps_topics;
    let non = Mix::new(
        "non_publish",
        tag,
        false,
        templates(RequestType::Put, &|i| format!("/mqtt/soak/non/{i}?c=sn{i}"), d)?,
        Payload::Counted,
        cfg.non_rate,
        cfg,
    );
    let con = Mix::new(
        "con_publish",
        tag + 1,
        true,
        templates(RequestType::Put, &|i| format!("/mqtt/soak/con/{i}?c=sc{i}"), d)?,
        Payload::Counted,
        cfg.con_rate,
        cfg,
    );
    let write = Mix::new(
        "ps_write",
        tag + 2,
        true,
        templates(RequestType::Put, &|i| format!("/ps/soak/ps/{i}?c=sw{i}"), t)?,
        Payload::Text,
        cfg.ps_write_rate,
        cfg,
    );
    let read_ = Mix::new(
        "ps_read",
        tag + 3,
        true,
        templates(RequestType::Get, &|i| format!("/ps/soak/ps/{i}?c=sr{i}"), t)?,
        Payload::None,
        cfg.ps_read_rate,
        cfg,
    );

    // The counting subscribers, one per publish kind.
    let non_counter = Counter::start(&cfg.mqtt, "soak/non/#").await?;
    non_counter.begin(non.spec.tag, non.spec.max_seq);
    let con_counter = Counter::start(&cfg.mqtt, "soak/con/#").await?;
    con_counter.begin(con.spec.tag, con.spec.max_seq);

    // DTLS: one probe session names a missing listener or a wrong key before the run.
    let dtls = match cfg.dtls.filter(|_| cfg.dtls_rate > 0.0) {
        Some(addr) => {
            crate::pool::check_loopback(addr)?;
            let mut h = HandshakesConfig::new(addr);
            h.identity = cfg.identity.clone();
            h.key = cfg.key.clone();
            h.timeout = cfg.timeout;
            let template = Template::new(RequestType::Get, &h.request_path, None)?;
            if let Err(reason) = handshakes::session(&h, &template, 0).await {
                bail!(
                    "no DTLS PSK session with {addr} ({reason}): start the gateway with a dtls: section and a psk_file holding {}:KEY, or pass --dtls-rate 0",
                    cfg.identity
                );
            }
            Some((h, template))
        }
        None => None,
    };

    // Every PubSub topic gets its value before the first read.
    let end_setup = Instant::now() + Duration::from_secs(30);
    let prewrite = Arc::new(Stats::default());
    lane::run(
        write.spec.clone(),
        prewrite.clone(),
        lane::socket(cfg.target).await?,
        MAX_LANE_RATE,
        end_setup,
        Some(t),
        stop.clone(),
    )
    .await;
    if prewrite.answered.load(Ordering::Relaxed) < t {
        bail!("the gateway did not take the PubSub values of the soak's {t} topics: {}", prewrite.to_json(true));
    }

    // Observers of one /mqtt/ and one /ps/ topic, one source port each.
    let messages = ((cfg.notify_rate * cfg.duration.as_secs_f64()).ceil() as usize + 10).min(100_000);
    let mut observers = Vec::new();
    if cfg.observers > 0 && cfg.notify_rate > 0.0 {
        for (topic, path) in
            [("soak/obs/mqtt", "/mqtt/soak/obs/mqtt?c=om{device}"), ("soak/obs/ps", "/ps/soak/obs/ps?c=op{device}")]
        {
            let mut o =
                Observers::new(cfg.target, path, cfg.observers, Some(cfg.observers as usize), 64, messages).await?;
            let reg = o.register(Duration::from_secs(2), Duration::from_secs(30), stop).await;
            if reg.done < cfg.observers {
                bail!(
                    "only {} of {} observers of {path} registered ({} refused, {} timed out)",
                    reg.done,
                    cfg.observers,
                    reg.refused,
                    reg.timeouts
                );
            }
            observers.push((topic, o));
        }
    }
    let publisher = if observers.is_empty() {
        None
    } else {
        let (handle, _incoming) = mqtt::try_connect(ClientConfig {
            url: cfg.mqtt.clone(),
            client_id: format!("sluice-bench-soak-{:08x}", rand::random::<u32>()),
            ..ClientConfig::default()
        })
        .with_context(|| format!("--mqtt {}", cfg.mqtt))?;
        if !handle.wait_connected(Duration::from_secs(5)).await {
            handle.close().await;
            bail!("no MQTT broker answers at {} within 5 s: pass the gateway's broker with --mqtt", cfg.mqtt);
        }
        Some((handle, _incoming))
    };

    // The load.
    let start = Instant::now();
    let end = start + cfg.duration;
    let warm_at = cfg.duration.mul_f64(cfg.warmup);
    let mut tasks = Vec::new();
    for mix in [&non, &con, &write, &read_] {
        let lanes = mix.lanes();
        for _ in 0..lanes {
            let socket = lane::socket(cfg.target).await?;
            tasks.push(tokio::spawn(lane::run(
                mix.spec.clone(),
                mix.stats.clone(),
                socket,
                mix.rate / lanes as f64,
                end,
                None,
                stop.clone(),
            )));
        }
    }
    let published = Arc::new(AtomicU64::new(0));
    if let Some((handle, _)) = &publisher {
        let states = observers.iter().map(|(t, o)| (*t, o.state().clone())).collect();
        let every = Duration::from_secs_f64(1.0 / cfg.notify_rate);
        let count = messages.saturating_sub(10);
        tasks.push(tokio::spawn(publish(handle.clone(), states, every, count, end, published.clone(), stop.clone())));
    }
    let dtls_stats = Arc::new(DtlsStats::default());
    if let Some((h, template)) = dtls.clone() {
        let every = Duration::from_secs_f64(1.0 / cfg.dtls_rate);
        tasks.push(tokio::spawn(dtls_sessions(h, template, every, end, dtls_stats.clone(), stop.clone())));
    }

    // Samples until the load ends; one exactly at the end of the warm-up.
    let mixes = [&non, &con, &write, &read_];
    let notifications = |obs: &[(&str, Observers)]| {
        obs.iter().map(|(_, o)| o.state().notifications.load(Ordering::Relaxed)).sum::<u64>()
    };
    let counts = |obs: &[(&str, Observers)]| Counts {
        sent: mixes.iter().map(|m| m.stats.sent.load(Ordering::Relaxed)).sum(),
        answered: mixes.iter().map(|m| m.stats.answered.load(Ordering::Relaxed)).sum(),
        notifications: notifications(obs),
        dtls_sessions: dtls_stats.completed.load(Ordering::Relaxed),
    };
    let mut samples = Vec::new();
    let mut warm: Option<Reading> = None;
    let first = read(cfg.gateway, start);
    let mut last = first;
    let mut next = start + cfg.interval;
    while Instant::now() < end && !stop.raised() {
        let warm_due = start + warm_at;
        let wake = if warm.is_none() && warm_due < next { warm_due } else { next }.min(end);
        tokio::time::sleep_until(wake).await;
        if Instant::now() >= end {
            break;
        }
        let now = read(cfg.gateway, start);
        let is_warm = warm.is_none() && Instant::now() >= warm_due;
        if is_warm {
            warm = now.or(Some(Reading { t: start.elapsed(), rss: 0, fds: 0, cpu_s: 0.0 }));
        }
        // A sample at the end of the warm-up stands for an interval's sample due then too.
        while next <= Instant::now() + Duration::from_millis(50) {
            next += cfg.interval;
        }
        let s = sample(now, last, if is_warm { "warm" } else { "load" }, counts(&observers), start);
        if cfg.progress {
            eprintln!("soak {}", line(&s));
        }
        samples.push(s);
        last = now.or(last);
    }
    for t in tasks {
        let _ = t.await;
    }
    let end_reading = read(cfg.gateway, start);
    let load_time = start.elapsed();

    // Deliveries and notifications still on their way.
    let non_counts = non_counter
        .drain(non.stats.sent.load(Ordering::Relaxed), Duration::from_secs(2), Duration::from_secs(10))
        .await;
    let con_counts = con_counter
        .drain(con.stats.sent.load(Ordering::Relaxed), Duration::from_secs(2), Duration::from_secs(10))
        .await;
    let published = published.load(Ordering::Relaxed);
    let expected = published * cfg.observers * observers.len() as u64;
    let drain_end = Instant::now() + Duration::from_secs(10);
    let mut quiet = (notifications(&observers), Instant::now());
    while notifications(&observers) < expected
        && Instant::now() < drain_end
        && quiet.1.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = notifications(&observers);
        if n != quiet.0 {
            quiet = (n, Instant::now());
        }
    }
    let received = notifications(&observers);
    let final_counts = counts(&observers);
    let final_sample = sample(end_reading, last, "end", final_counts, start);
    if cfg.progress {
        eprintln!("soak {}", line(&final_sample));
    }
    samples.push(final_sample);
    let mut observe = json!({
        "observers": cfg.observers * observers.len() as u64,
        "published": published,
        "notifications_expected": expected,
        "notifications": received,
        "missing": expected.saturating_sub(received),
        "missing_pct": pct(expected.saturating_sub(received), expected),
    });
    let duplicates: u64 = observers.iter().map(|(_, o)| o.state().duplicates.load(Ordering::Relaxed)).sum();
    observe["duplicates"] = duplicates.into();
    let mut deregistered = 0;
    for (_, o) in &mut observers {
        deregistered += o.deregister(Duration::from_secs(2), Duration::from_secs(30), &Stop::new()).await.done;
    }
    observe["deregistered"] = deregistered.into();
    if let Some((handle, _)) = publisher {
        handle.close().await;
    }
    non_counter.close().await;
    con_counter.close().await;

    Ok(verdict::report(verdict::Outcome {
        cfg,
        mixes: [(&non, Some(non_counts.unique)), (&con, Some(con_counts.unique)), (&write, None), (&read_, None)],
        observe,
        dtls: dtls.as_ref().map(|(h, _)| (&*dtls_stats, h.target.to_string())),
        load_time,
        warm_at,
        first,
        warm,
        end: end_reading,
        samples,
        counts: final_counts,
        interrupted: stop.raised(),
    }))
}

/// Publishes `fanout:K` to every observed topic every `every`, `count` times at most, until `end`.
async fn publish(
    handle: mqtt::Handle,
    states: Vec<(&'static str, Arc<ObserveState>)>,
    every: Duration,
    count: usize,
    end: Instant,
    published: Arc<AtomicU64>,
    stop: Stop,
) {
    let mut due = Instant::now();
    for k in 0..count {
        tokio::time::sleep_until(due).await;
        if Instant::now() >= end || stop.raised() {
            break;
        }
        for (topic, st) in &states {
            if let Some(p) = st.published_ns.get(k) {
                p.store(st.now_ns().max(1), Ordering::Release);
            }
            if let Ok(receipt) = handle.publish(Message::new(*topic, format!("fanout:{k}"))) {
                receipt.detach();
            }
        }
        published.fetch_add(1, Ordering::Relaxed);
        due += every;
    }
}

/// One DTLS session (handshake, request, close) every `every` until `end`, one at a time.
async fn dtls_sessions(
    h: HandshakesConfig,
    template: Template,
    every: Duration,
    end: Instant,
    stats: Arc<DtlsStats>,
    stop: Stop,
) {
    let mut due = Instant::now();
    let mut n = 1u64;
    while due < end && !stop.raised() {
        tokio::time::sleep_until(due).await;
        stats.attempted.fetch_add(1, Ordering::Relaxed);
        match handshakes::session(&h, &template, n).await {
            Ok(_) => {
                stats.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => stats.fail(reason),
        }
        n += 1;
        // Behind by more than a second: start afresh rather than burst.
        due = (due + every).max(Instant::now() - Duration::from_secs(1));
    }
}
