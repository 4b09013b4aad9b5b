//! The `put` scenario: many simulated devices PUT to the gateway, NON at a paced rate or CON
//! with a window of outstanding requests, and the counting subscriber (or the bare sink)
//! says how many arrived.
//!
//! A [`Load`] keeps its sockets, templates and MQTT subscriber across runs, so `find-rate` and
//! `swaps` run several phases on the same devices (and Message-IDs never repeat on a socket).
//! Sender tasks (one by default) stamp and send; one receiver task per socket matches replies
//! by token. In-flight CONs live in a ring indexed by sequence number, shared lock-free with
//! the receivers; an answer and a timeout race for a slot with a compare-and-swap, so each
//! request is counted once and always gives its window slot back.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coap_lite::RequestType;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::coap::{self, Kind, Template};
use crate::counter::{self, Counter};
use crate::pool::{self, Pool};
use crate::procfs::{CpuTimes, Process, Sample};
use crate::report::{Report, histogram, percentiles, round2};
use crate::sink;
use crate::stop::Stop;

/// Most messages one run may send.
pub const MAX_MESSAGES: u64 = 50_000_000;
/// Longest sending phase of one run.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// What the devices send to and how deliveries are counted (fixed for a [`Load`]).
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The gateway's (or the sink's) CoAP address; loopback only.
    pub target: SocketAddr,
    /// More gateways of the same deployment: the devices are spread over `target` and these
    /// (one gateway per source port), and the report is the aggregate.
    pub more_targets: Vec<SocketAddr>,
    /// The processes of `more_targets`, for CPU time and RSS (summed with `gateway`'s).
    pub more_gateways: Vec<Process>,
    /// The broker the gateway publishes to, for the counting subscriber; None with `sink`.
    pub mqtt: Option<String>,
    /// The target is a `sluice-bench sink`: it counts, no MQTT.
    pub sink: bool,
    /// The filter the counting subscriber subscribes to.
    pub topic_filter: String,
    /// The request URL; `{device}` is replaced by the device number.
    pub path_template: String,
    /// Number of simulated devices (client ids, token streams).
    pub devices: u64,
    /// Sockets (source ports) the devices are spread over; None picks one per device up to
    /// the fd budget.
    pub sockets: Option<usize>,
    /// Payloads are padded to this many bytes.
    pub payload_size: usize,
    /// The gateway process, for CPU time and RSS.
    pub gateway: Option<Process>,
    /// The MQTT broker's process, for its CPU time (None: not measured).
    pub broker: Option<Process>,
    /// A CON without an answer after this long counts as timed out.
    pub timeout: Duration,
    /// Longest wait for deliveries after the last send.
    pub drain: Duration,
    /// Sender tasks (more than one where a single task cannot reach the rate).
    pub senders: usize,
}

impl LoadConfig {
    /// Defaults for `target` and `mqtt`: 100 devices, `/mqtt/bench/{device}?c=d{device}`,
    /// `bench/#`, 2 s CON timeout, 5 s drain.
    pub fn new(target: SocketAddr, mqtt: Option<String>) -> LoadConfig {
        LoadConfig {
            target,
            more_targets: Vec::new(),
            more_gateways: Vec::new(),
            sink: mqtt.is_none(),
            mqtt,
            topic_filter: "bench/#".into(),
            path_template: "/mqtt/bench/{device}?c=d{device}".into(),
            devices: 100,
            sockets: None,
            payload_size: 0,
            gateway: None,
            broker: None,
            timeout: Duration::from_secs(2),
            drain: Duration::from_secs(5),
            senders: 1,
        }
    }
}

/// One run: how fast, how long, NON or CON.
#[derive(Clone, Debug)]
pub struct Phase {
    /// Messages per second; 0 sends as fast as the window (CON) or the machine (NON) allows.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// Confirmable requests (else Non-confirmable).
    pub con: bool,
    /// CON requests outstanding at most.
    pub window: usize,
    /// Stop after this many messages even if time is left.
    pub max_messages: u64,
}

const DONE: u64 = u64::MAX;

struct Slot {
    seq: AtomicU64,
    sent_ns: AtomicU64,
}

/// What the receivers count during one run.
struct Tally {
    run: u16,
    con: bool,
    start: Instant,
    slots: Vec<Slot>,
    mask: u64,
    window: Semaphore,
    ok: AtomicU64,
    failed: AtomicU64,
    failed_codes: Mutex<BTreeMap<String, u64>>,
    empty_acks: AtomicU64,
    resets: AtomicU64,
    late: AtomicU64,
    rtt: Mutex<Histogram<u64>>,
}

impl Tally {
    fn on_datagram(&self, socket: &UdpSocket, buf: &[u8]) {
        let Some(r) = coap::parse(buf) else { return };
        if r.kind == Kind::Con {
            let _ = socket.try_send(&coap::empty_ack(r.mid));
        }
        if r.code == 0 {
            match r.kind {
                Kind::Ack => self.empty_acks.fetch_add(1, Ordering::Relaxed),
                Kind::Rst => self.resets.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            return;
        }
        let Some((run, seq)) = coap::parse_token(r.token) else { return };
        if run != self.run {
            return;
        }
        if self.con {
            let slot = &self.slots[(seq & self.mask) as usize];
            if slot.seq.compare_exchange(seq, DONE, Ordering::AcqRel, Ordering::Acquire).is_err() {
                self.late.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let rtt = (self.start.elapsed().as_nanos() as u64).saturating_sub(slot.sent_ns.load(Ordering::Acquire));
            if let Ok(mut h) = self.rtt.lock() {
                let _ = h.record(rtt.max(1));
            }
            self.window.add_permits(1);
        }
        if r.code == coap::CHANGED {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut codes) = self.failed_codes.lock() {
                *codes.entry(coap::code_string(r.code)).or_default() += 1;
            }
        }
    }
}

/// Devices, their sockets and the counting subscriber, ready to run phases.
pub struct Load {
    config: LoadConfig,
    pool: Arc<Pool>,
    templates: Arc<Vec<Template>>,
    counter: Option<Counter>,
    run: u16,
}

impl LoadConfig {
    /// Every gateway address, `target` first.
    pub fn targets(&self) -> Vec<SocketAddr> {
        std::iter::once(self.target).chain(self.more_targets.iter().copied()).collect()
    }

    /// The gateways' CPU time and RSS, summed over the deployment (None: not measured).
    fn gateway_sample(&self) -> Option<Sample> {
        let first = self.gateway?.sample().ok()?;
        self.more_gateways.iter().try_fold(first, |sum, g| {
            let s = g.sample().ok()?;
            Some(Sample { cpu_s: sum.cpu_s + s.cpu_s, rss: sum.rss + s.rss })
        })
    }

    /// What the sinks at the targets received so far, summed.
    async fn sinks_received(&self) -> anyhow::Result<u64> {
        let mut sum = 0;
        for target in self.targets() {
            sum += sink::query(target).await?;
        }
        Ok(sum)
    }

    /// Datagrams the gateways' sockets dropped so far, summed.
    fn target_drops(&self) -> Option<u64> {
        self.targets().iter().map(|t| crate::procfs::udp_port_drops(t.port())).sum()
    }
}

impl Load {
    /// Checks the target answers, binds the sockets, builds the requests and subscribes.
    /// `messages` is the most any later phase will send (it sizes the socket pool).
    pub async fn prepare(config: LoadConfig, messages: u64) -> anyhow::Result<Load> {
        pool::check_loopback(config.target)?;
        if config.devices == 0 || config.devices > 1_000_000 {
            bail!("--devices must be 1 … 1 000 000");
        }
        for target in config.targets() {
            pool::probe(target).await?;
        }
        let counter = match (&config.mqtt, config.sink) {
            (_, true) => None,
            (Some(url), false) => Some(Counter::start(url, &config.topic_filter).await?),
            // Only the CoAP answers are counted.
            (None, false) => None,
        };
        let sockets = config.sockets.unwrap_or_else(|| pool::default_sockets(config.devices, messages));
        // Message n comes from device n mod devices, on socket (n mod devices) mod sockets.
        let used = (sockets as u64).min(config.devices).max(1);
        if messages.div_ceil(used) > pool::MIDS_PER_SOCKET {
            bail!(
                "{messages} messages from {used} source ports would reuse Message-IDs inside the gateway's de-duplication window: use more --devices and --sockets, or fewer messages (--max-messages, --rate, --duration)"
            );
        }
        let pool = Pool::bind_spread(&config.targets(), sockets).await?;
        let templates = (0..config.devices)
            .map(|d| Template::new(RequestType::Put, &config.path_template.replace("{device}", &d.to_string()), None))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("building the requests from --path-template")?;
        Ok(Load { config, pool: Arc::new(pool), templates: Arc::new(templates), counter, run: rand::random::<u16>() })
    }

    /// The configuration.
    pub fn config(&self) -> &LoadConfig {
        &self.config
    }

    /// Sends one phase and reports it.
    pub async fn run(&mut self, phase: &Phase, stop: &Stop) -> anyhow::Result<Report> {
        let max = phase.max_messages.min(MAX_MESSAGES);
        let duration = phase.duration.min(MAX_DURATION);
        if phase.con && phase.window == 0 {
            bail!("--window must be at least 1");
        }
        self.run = self.run.wrapping_add(1);
        let run = self.run;
        let window = phase.window.clamp(1, 1 << 20);
        // In-flight CONs by sequence number; a slot is reused after `ring` messages, so the ring
        // is much larger than the window (a request still unanswered then counts as timed out).
        let ring = (window * 4).next_power_of_two().max(1 << 17);
        let tally = Arc::new(Tally {
            run,
            con: phase.con,
            start: Instant::now(),
            slots: (0..ring).map(|_| Slot { seq: AtomicU64::new(DONE), sent_ns: AtomicU64::new(0) }).collect(),
            mask: ring as u64 - 1,
            window: Semaphore::new(window),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_codes: Mutex::new(BTreeMap::new()),
            empty_acks: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            late: AtomicU64::new(0),
            rtt: Mutex::new(histogram()),
        });
        let t = tally.clone();
        let receivers = self.pool.spawn_receivers(Arc::new(move |s: &UdpSocket, b: &[u8]| t.on_datagram(s, b)));
        if let Some(c) = &self.counter {
            c.begin(run, max);
        }
        let sink_before = if self.config.sink { Some(self.config.sinks_received().await?) } else { None };
        let gw_before = self.config.gateway_sample();
        let broker_before = self.config.broker.and_then(|b| b.sample().ok());
        let machine_before = CpuTimes::now();
        let rcvbuf_before = crate::procfs::udp_rcvbuf_errors();
        let target_drops_before = self.config.target_drops();
        let me_before = Process::current().sample().ok();

        // Send: `senders` tasks, sender k sending messages k, k + senders, … at its share of the
        // rate; they share the window, the sockets and the tally.
        let start = tally.start;
        let senders = self.config.senders.clamp(1, 64);
        let tasks: Vec<_> = (0..senders)
            .map(|k| {
                let s = Sender {
                    tally: tally.clone(),
                    pool: self.pool.clone(),
                    templates: self.templates.clone(),
                    run,
                    con: phase.con,
                    rate: phase.rate as f64 / senders as f64,
                    first: k as u64,
                    step: senders as u64,
                    max,
                    end: start + duration,
                    timeout: self.config.timeout,
                    payload_size: self.config.payload_size,
                    stop: stop.clone(),
                };
                tokio::spawn(s.send())
            })
            .collect();
        let (mut sent, mut send_errors, mut timeouts) = (0u64, 0u64, 0u64);
        let mut send_time = Duration::ZERO;
        for t in tasks {
            let r = t.await.context("a sender task failed")?;
            sent += r.sent;
            send_errors += r.send_errors;
            timeouts += r.timeouts;
            send_time = send_time.max(r.send_time);
        }
        let answered_time = start.elapsed();

        // Count deliveries.
        let (delivered, duplicates, foreign, latency) = if let Some(c) = &self.counter {
            let counts = c.drain(sent, Duration::from_secs(1), self.config.drain).await;
            (counts.unique, counts.duplicates, counts.foreign, Some(counts.latency))
        } else if let Some(before) = sink_before {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = self.config.sinks_received().await?;
            (after.saturating_sub(before), 0, 0, None)
        } else {
            (0, 0, 0, None)
        };
        let gw_after = self.config.gateway_sample();
        let broker_after = self.config.broker.and_then(|b| b.sample().ok());
        let machine_after = CpuTimes::now();
        let me_after = Process::current().sample().ok();
        drop(receivers);

        let ok = tally.ok.load(Ordering::Relaxed);
        let failed = tally.failed.load(Ordering::Relaxed);
        let secs = send_time.as_secs_f64().max(1e-9);
        let mut r = Report::new("put");
        r.set("mode", if phase.con { "CON" } else { "NON" });
        let targets = self.config.targets();
        r.set("target", targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
        if targets.len() > 1 {
            r.set("gateways", targets.len());
        }
        let counted = self.config.sink || self.counter.is_some();
        r.set(
            "counted_at",
            if self.config.sink {
                "sink"
            } else if counted {
                "mqtt"
            } else {
                "none"
            },
        );
        r.set("devices", self.config.devices);
        r.set("sockets", self.pool.len() as u64);
        r.set("senders", senders as u64);
        r.set("rate_offered", phase.rate);
        if phase.con {
            r.set("window", window as u64);
        }
        r.set("duration_s", round2(secs));
        r.set("sent", sent);
        r.set("send_errors", send_errors);
        r.set("rate_sent", round2(sent as f64 / secs));
        if counted {
            r.set("delivered", delivered);
            r.set("lost", sent.saturating_sub(delivered));
            let loss = if sent == 0 { 0.0 } else { sent.saturating_sub(delivered) as f64 * 100.0 / sent as f64 };
            r.set("loss_pct", round2(loss));
            r.set("rate_delivered", round2(delivered as f64 / secs));
        } else {
            // Nobody counted deliveries: leave them out rather than report everything lost.
            for key in ["delivered", "lost", "loss_pct", "rate_delivered"] {
                r.set(key, serde_json::Value::Null);
            }
        }
        r.set("duplicates", duplicates);
        r.set("foreign", foreign);
        r.set("answered_2_04", ok);
        r.set("failed", failed);
        r.set("failed_codes", json!(tally.failed_codes.lock().map(|c| c.clone()).unwrap_or_default()));
        if phase.con {
            r.set("timeouts", timeouts);
            r.set("late", tally.late.load(Ordering::Relaxed));
            r.set("empty_acks", tally.empty_acks.load(Ordering::Relaxed));
            r.set("acks_per_s", round2((ok + failed) as f64 / answered_time.as_secs_f64().max(1e-9)));
            r.set("rtt", tally.rtt.lock().map(|h| percentiles(&h)).unwrap_or_default());
        }
        r.set("resets", tally.resets.load(Ordering::Relaxed));
        r.set("udp_rcvbuf_errors", udp_drops(rcvbuf_before));
        r.set(
            "target_socket_drops",
            self.config.target_drops().zip(target_drops_before).map(|(a, b)| a.saturating_sub(b)),
        );
        if let Some(l) = latency {
            r.set("delivery_latency", percentiles(&l));
        }
        // Per message that went through: delivered (or, at a sink, answered or counted).
        let messages = delivered.max(if self.config.sink { sent } else { 0 });
        gateway_usage(&mut r, self.config.gateway, gw_before, gw_after, messages);
        cpu_usage(&mut r, "broker", self.config.broker, broker_before, broker_after, messages);
        // The generator's own CPU time (with an in-process gateway it includes the gateway's).
        if let (Some(b), Some(a)) = (me_before, me_after) {
            let cpu = (a.cpu_s - b.cpu_s).max(0.0);
            r.set("generator_cpu_s", round2(cpu));
            r.set("generator_cpu_us_per_msg", per_msg_us(cpu, messages));
        }
        machine_usage(&mut r, machine_before, machine_after);
        r.set("interrupted", stop.raised());
        Ok(r)
    }

    /// Disconnects the subscriber.
    pub async fn close(self) {
        if let Some(c) = self.counter {
            c.close().await;
        }
    }
}

/// One sender task of a run.
struct Sender {
    tally: Arc<Tally>,
    pool: Arc<Pool>,
    templates: Arc<Vec<Template>>,
    run: u16,
    con: bool,
    /// This sender's share of the rate (0: unpaced).
    rate: f64,
    /// Its first sequence number and the stride between its messages.
    first: u64,
    step: u64,
    max: u64,
    end: Instant,
    timeout: Duration,
    payload_size: usize,
    stop: Stop,
}

/// What a sender did.
struct Sent {
    sent: u64,
    send_errors: u64,
    timeouts: u64,
    /// From the start of the run to its last send.
    send_time: Duration,
}

impl Sender {
    async fn send(self) -> Sent {
        let tally = &self.tally;
        let start = tally.start;
        let devices = self.templates.len() as u64;
        // Messages first, first + step, … below max.
        let mine = if self.first < self.max { (self.max - self.first).div_ceil(self.step) } else { 0 };
        let mut buf = Vec::with_capacity(1500);
        let mut payload = Vec::with_capacity(64);
        let mut n: u64 = 0;
        let (mut send_errors, mut timeouts) = (0u64, 0u64);
        let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
        'send: while n < mine && !self.stop.raised() {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            let due =
                if self.rate > 0.0 { ((now - start).as_secs_f64() * self.rate) as u64 + 1 } else { mine }.min(mine);
            let mut batch = 0;
            while n < due && batch < 512 {
                if self.con {
                    match tally.window.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => {
                            sweep(tally, &mut pending, self.timeout, &mut timeouts);
                            match tokio::time::timeout(Duration::from_millis(5), tally.window.acquire()).await {
                                Ok(Ok(p)) => p.forget(),
                                _ => continue 'send,
                            }
                        }
                    }
                }
                let seq = self.first + n * self.step;
                let device = seq % devices;
                let (i, socket) = self.pool.socket_of(device);
                let mid = self.pool.next_mid(i);
                counter::payload(&mut payload, self.run, seq, self.payload_size);
                self.templates[device as usize].stamp(&mut buf, self.con, mid, &coap::token(self.run, seq), &payload);
                if self.con {
                    let slot = &tally.slots[(seq & tally.mask) as usize];
                    // A request still waiting in this slot was sent a whole ring ago: it is lost.
                    let old = slot.seq.load(Ordering::Acquire);
                    if old != DONE && slot.seq.compare_exchange(old, DONE, Ordering::AcqRel, Ordering::Acquire).is_ok()
                    {
                        timeouts += 1;
                        tally.window.add_permits(1);
                    }
                    slot.sent_ns.store(start.elapsed().as_nanos() as u64, Ordering::Release);
                    slot.seq.store(seq, Ordering::Release);
                    pending.push_back((seq, Instant::now() + self.timeout));
                }
                if socket.send(&buf).await.is_err() {
                    send_errors += 1;
                }
                n += 1;
                batch += 1;
            }
            if self.con {
                sweep(tally, &mut pending, self.timeout, &mut timeouts);
            }
            if self.rate > 0.0 && n >= due {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else if batch >= 512 {
                tokio::task::yield_now().await;
            }
        }
        let send_time = start.elapsed();
        // Wait for the outstanding CONs (answered or timed out).
        let give_up = Instant::now() + self.timeout + Duration::from_millis(200);
        while self.con && !pending.is_empty() && Instant::now() < give_up {
            sweep(tally, &mut pending, self.timeout, &mut timeouts);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sweep(tally, &mut pending, Duration::ZERO, &mut timeouts);
        Sent { sent: n, send_errors, timeouts, send_time }
    }
}

/// Drops answered CONs from the front of `pending` and times out those past their deadline
/// (`grace` zero: all that are left).
fn sweep(tally: &Tally, pending: &mut VecDeque<(u64, Instant)>, grace: Duration, timeouts: &mut u64) {
    let now = Instant::now();
    while let Some(&(seq, deadline)) = pending.front() {
        let slot = &tally.slots[(seq & tally.mask) as usize];
        if slot.seq.load(Ordering::Acquire) != seq {
            pending.pop_front();
            continue;
        }
        if grace > Duration::ZERO && deadline > now {
            break;
        }
        if slot.seq.compare_exchange(seq, DONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            *timeouts += 1;
            tally.window.add_permits(1);
        }
        pending.pop_front();
    }
}

/// UDP datagrams the machine dropped at full receive buffers since `before` (any socket: the
/// gateway's, the generator's, others').
pub fn udp_drops(before: Option<u64>) -> Option<u64> {
    Some(crate::procfs::udp_rcvbuf_errors()?.saturating_sub(before?))
}

/// Datagrams the target's socket dropped (full receive buffer) since `before`.
pub fn target_drops(port: u16, before: Option<u64>) -> Option<u64> {
    Some(crate::procfs::udp_port_drops(port)?.saturating_sub(before?))
}

/// Adds the gateway's CPU per message and RSS to a report.
pub fn gateway_usage(
    r: &mut Report,
    gw: Option<Process>,
    before: Option<Sample>,
    after: Option<Sample>,
    messages: u64,
) {
    cpu_usage(r, "gateway", gw, before, after, messages);
    if let (Some(_), Some(b), Some(a)) = (gw, before, after) {
        r.set("gateway_rss_mib_before", round2(b.rss as f64 / 1048576.0));
        r.set("gateway_rss_mib_after", round2(a.rss as f64 / 1048576.0));
    }
}

/// Adds `{who}_pid`, `{who}_cpu_s` (utime + stime between the samples) and
/// `{who}_cpu_us_per_msg` to a report; only `{who}_pid: null` if the process was not measured.
pub fn cpu_usage(
    r: &mut Report,
    who: &str,
    process: Option<Process>,
    before: Option<Sample>,
    after: Option<Sample>,
    messages: u64,
) {
    let (Some(p), Some(b), Some(a)) = (process, before, after) else {
        r.set(&format!("{who}_pid"), serde_json::Value::Null);
        return;
    };
    let cpu = (a.cpu_s - b.cpu_s).max(0.0);
    r.set(&format!("{who}_pid"), p.pid());
    r.set(&format!("{who}_cpu_s"), round2(cpu));
    r.set(&format!("{who}_cpu_us_per_msg"), per_msg_us(cpu, messages));
}

/// Adds `machine_cpu_busy_pct` (the non-idle share of all cores between the two readings of
/// /proc/stat) and `machine_cores`.
pub fn machine_usage(r: &mut Report, before: Option<CpuTimes>, after: Option<CpuTimes>) {
    let busy = before.zip(after).and_then(|(b, a)| a.busy_pct_since(&b));
    r.set("machine_cpu_busy_pct", busy.map(round2));
    r.set("machine_cores", after.map(|a| u64::from(a.cores)));
}

/// CPU seconds per message in microseconds (null without messages).
fn per_msg_us(cpu_s: f64, messages: u64) -> serde_json::Value {
    if messages == 0 { serde_json::Value::Null } else { round2(cpu_s * 1e6 / messages as f64).into() }
}
