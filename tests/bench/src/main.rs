//! `sluice-bench`: the command line of the load generator (see tests/bench/README.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sluice_bench::fanout::{self, FanoutConfig};
use sluice_bench::find_rate::{self, FindRateConfig};
use sluice_bench::handshakes::{self, HandshakesConfig};
use sluice_bench::idle::{self, IdleConfig};
use sluice_bench::noisy::{self, AbuseConfig};
use sluice_bench::procfs::Process;
use sluice_bench::put::{Load, LoadConfig, Phase};
use sluice_bench::report::Report;
use sluice_bench::sink::Sink;
use sluice_bench::soak::{self, SoakConfig};
use sluice_bench::stop::Stop;
use sluice_bench::swaps::{self, SwapsConfig};

/// Load generator for Sluice and other CoAP→MQTT gateways (loopback only).
#[derive(Parser)]
#[command(name = "sluice-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Many devices PUT (NON at a rate, or CON with a window); deliveries counted over MQTT.
    Put(PutArgs),
    /// Highest NON rate with less than --loss-pct loss (doubling, then bisection).
    FindRate(FindRateArgs),
    /// N observers of one topic, one MQTT publisher: notifications/s and completeness.
    Fanout(FanoutArgs),
    /// N idle observing devices: gateway memory per device.
    Idle(IdleArgs),
    /// Rule packages swapped in the rules folder during CON load: lost and failed requests.
    Swaps(SwapsArgs),
    /// DTLS PSK handshakes per second (each session proven by one CON request).
    Handshakes(HandshakesArgs),
    /// Mixed load for a bounded time (publishes, observers, PubSub reads and writes, DTLS
    /// sessions) with the gateway's RSS and open fds sampled; fails on loss or growth.
    Soak(SoakArgs),
    /// The good devices' CON load alone, then while attackers hit a faulty rule's failing
    /// paths (loops, memory bombs, traps): acks/s and p99 side by side.
    Noisy(NoisyArgs),
    /// A bare UDP sink that counts datagrams (the machine's ceiling; load it with `put --sink`).
    Sink(SinkArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// The gateway's CoAP address (loopback only). `put`, `find-rate` and `swaps` take several, comma-separated (the gateways of a deployment): the devices are spread over
    /// them, one gateway per source port, and the report is the aggregate. A balancer's
    /// address is one target.
    #[arg(long = "target", value_delimiter = ',', default_value = "127.0.0.1:5683")]
    targets: Vec<SocketAddr>,
    /// The gateway's process id, or `auto` (the process bound to the target's UDP port): its
    /// CPU time and RSS are read from /proc. With several targets: `auto` (one process per
    /// target) or their pids, comma-separated; the figures are summed.
    #[arg(long)]
    gateway_pid: Option<String>,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// The broker the gateway publishes to (deliveries are counted there).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,
    /// The broker's process id, or `auto` (the process listening on the TCP port of --mqtt):
    /// its CPU time is read from /proc.
    #[arg(long)]
    broker_pid: Option<String>,
    /// Simulated devices (each its own client id and tokens).
    #[arg(long, default_value_t = 1000)]
    devices: u64,
    /// UDP sockets (source ports) the devices are spread over; default one per device up to
    /// 4096 and the fd limit.
    #[arg(long)]
    sockets: Option<usize>,
    /// Request URL; `{device}` is the device number.
    #[arg(long, default_value = "/mqtt/bench/{device}?c=d{device}")]
    path_template: String,
    /// Topic filter of the counting subscriber.
    #[arg(long, default_value = "bench/#")]
    topic_filter: String,
    /// Pad payloads to this many bytes.
    #[arg(long, default_value_t = 0)]
    payload_size: usize,
    /// A CON without an answer after this long is a timeout.
    #[arg(long, default_value = "2s", value_parser = duration)]
    timeout: Duration,
    /// Longest wait for deliveries after the last send.
    #[arg(long, default_value = "5s", value_parser = duration)]
    drain: Duration,
    /// Sender tasks (one reaches ~150k msg/s on one core).
    #[arg(long, default_value_t = 1)]
    senders: usize,
}

#[derive(Args)]
struct PutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Messages per second (0: as fast as possible / as the window allows).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Confirmable PUTs with a window of outstanding requests (rate 0 = closed loop).
    #[arg(long)]
    con: bool,
    /// Outstanding CON requests at most.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 10_000_000)]
    max_messages: u64,
    /// The target is a `sluice-bench sink`: it counts, no MQTT.
    #[arg(long)]
    sink: bool,
}

#[derive(Args)]
struct FindRateArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// First rate tried.
    #[arg(long, default_value_t = 5_000)]
    start: u64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 1_000_000)]
    max_rate: u64,
    /// Length of each step.
    #[arg(long, default_value = "5s", value_parser = duration)]
    step: Duration,
    /// Loss (percent) at which a step fails.
    #[arg(long, default_value_t = 0.1)]
    loss_pct: f64,
    /// Bisection steps after the first failing rate.
    #[arg(long, default_value_t = 4)]
    bisect: u32,
    /// Steps at most.
    #[arg(long, default_value_t = 16)]
    max_steps: u32,
    /// Total time at most.
    #[arg(long, default_value = "300s", value_parser = duration)]
    max_time: Duration,
    /// Against a `sluice-bench sink` instead of a gateway.
    #[arg(long)]
    sink: bool,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// The broker the gateway subscribes to.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,
    /// The broker's process id, or `auto` (the process listening on the TCP port of --mqtt):
    /// its CPU time is read from /proc.
    #[arg(long)]
    broker_pid: Option<String>,
    /// Observers.
    #[arg(long, default_value_t = 1000)]
    observers: u64,
    /// Messages published.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Topic observed and published to.
    #[arg(long, default_value = "bench/fanout")]
    topic: String,
    /// Observe URL; `{topic}` and `{device}` are replaced.
    #[arg(long, default_value = "/mqtt/{topic}?c=o{device}")]
    path_template: String,
    /// Sockets the observers are spread over (default one each, up to 4096 and the fd limit).
    #[arg(long)]
    sockets: Option<usize>,
    /// Registrations in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Pause between publishes.
    #[arg(long, default_value = "0ms", value_parser = duration)]
    interval: Duration,
    /// QoS of the publishes.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Longest wait for notifications after the last publish.
    #[arg(long, default_value = "10s", value_parser = duration)]
    drain: Duration,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Observing devices.
    #[arg(long, default_value_t = 10_000)]
    devices: u64,
    /// Observe URL; `{device}` is the device number (one topic each).
    #[arg(long, default_value = "/mqtt/bench/idle/{device}?c=i{device}")]
    path_template: String,
    /// Sockets the devices are spread over (default one each, up to 4096 and the fd limit).
    #[arg(long)]
    sockets: Option<usize>,
    /// Registrations in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Wait after registering before reading the RSS.
    #[arg(long, default_value = "2s", value_parser = duration)]
    settle: Duration,
    /// Leave the observations registered at the end.
    #[arg(long)]
    keep: bool,
    /// The gateway's admin API (its admin.bind): times `GET /clients` pages with every device
    /// registered.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct SwapsArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// The gateway's rules folder.
    #[arg(long)]
    rules_dir: PathBuf,
    /// A package to swap in (give two or more; copied in turn).
    #[arg(long = "package", required = true)]
    packages: Vec<PathBuf>,
    /// Swaps during the load.
    #[arg(long, default_value_t = 100)]
    swaps: u32,
    /// File name of the swapped package in the rules folder.
    #[arg(long, default_value = "sluice-bench-swap.wasm")]
    file_name: String,
    /// Wait after installing the first package before the load starts.
    #[arg(long, default_value = "2s", value_parser = duration)]
    settle: Duration,
    /// Leave the last package in the rules folder.
    #[arg(long)]
    keep: bool,
    /// CON messages per second (0: closed loop, as fast as the window allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long the load runs (the swaps are spread over it).
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Outstanding CON requests at most.
    #[arg(long, default_value_t = 64)]
    window: usize,
}

#[derive(Args)]
struct HandshakesArgs {
    /// The gateway's DTLS (coaps) address (loopback only).
    #[arg(long, default_value = "127.0.0.1:25684")]
    target: SocketAddr,
    /// The gateway's process id, or `auto` (the process bound to the target's UDP port).
    #[arg(long)]
    gateway_pid: Option<String>,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
    /// PSK identity (a line `identity:key` of the gateway's psk_file).
    #[arg(long, default_value = "bench")]
    identity: String,
    /// PSK key: the text after `identity:` in the psk_file, as is (like coap-client -k).
    #[arg(long, default_value = "bench-psk-key")]
    key: String,
    /// Handshakes in flight at once, each on its own UDP socket; keep it below the gateway's
    /// dtls.max_handshakes (256 by default), which drops further ClientHellos.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to keep starting handshakes (at most 600 s).
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Stop after this many handshakes.
    #[arg(long)]
    count: Option<u64>,
    /// Only handshake and close: no CON request over the session.
    #[arg(long)]
    no_request: bool,
    /// The request sent over each session: CON GET of this path.
    #[arg(long, default_value = "/.well-known/core")]
    request_path: String,
    /// A handshake (and then its request) that takes longer fails.
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: Duration,
}

#[derive(Args)]
struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// The broker the gateway publishes to (deliveries are counted there, observed topics are
    /// published to there).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,
    /// The gateway's DTLS (coaps) address; without it, no DTLS sessions.
    #[arg(long)]
    dtls_target: Option<SocketAddr>,
    /// PSK identity for the DTLS sessions.
    #[arg(long, default_value = "bench")]
    identity: String,
    /// PSK key: the text after `identity:` in the gateway's psk_file.
    #[arg(long, default_value = "bench-psk-key")]
    key: String,
    /// How long the load runs (at most 24 h).
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Share of --duration that is warm-up: growth is measured from its end.
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,
    /// Time between samples of RSS and fds.
    #[arg(long, default_value = "5s", value_parser = duration)]
    interval: Duration,
    /// Devices (client ids) the publishes come from.
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// NON publishes per second.
    #[arg(long, default_value_t = 400.0)]
    non_rate: f64,
    /// CON publishes per second.
    #[arg(long, default_value_t = 400.0)]
    con_rate: f64,
    /// PubSub writes (CON PUT /ps/…) per second.
    #[arg(long, default_value_t = 50.0)]
    ps_write_rate: f64,
    /// PubSub reads (CON GET /ps/…) per second.
    #[arg(long, default_value_t = 200.0)]
    ps_read_rate: f64,
    /// PubSub topics written and read.
    #[arg(long, default_value_t = 20)]
    ps_topics: u64,
    /// Observers of each observed topic (one /mqtt/, one /ps/), one source port each.
    #[arg(long, default_value_t = 50)]
    observers: u64,
    /// MQTT messages per second published to each observed topic.
    #[arg(long, default_value_t = 5.0)]
    notify_rate: f64,
    /// DTLS PSK sessions (handshake, one request, close) per second.
    #[arg(long, default_value_t = 2.0)]
    dtls_rate: f64,
    /// A CON request without an answer after this long is missing.
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: Duration,
    /// Missing answers, deliveries or notifications tolerated per kind, in percent.
    #[arg(long, default_value_t = 0.1)]
    max_missing_pct: f64,
    /// RSS growth tolerated after the warm-up, MiB.
    #[arg(long, default_value_t = 16.0)]
    max_rss_growth_mib: f64,
    /// Open file descriptor growth tolerated after the warm-up.
    #[arg(long, default_value_t = 4)]
    max_fd_growth: i64,
    /// Do not print the samples to stderr as they are taken.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct NoisyArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// The good devices' CON messages per second (0: closed loop, as fast as the window allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long each of the two runs lasts.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// The good devices' outstanding CON requests at most.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Attack requests per second (all paths together).
    #[arg(long, default_value_t = 100)]
    abuse_rate: u64,
    /// A path the attackers send to (repeat it; default /loop, /memory and /trap of the fault
    /// rule).
    #[arg(long = "abuse-path")]
    abuse_paths: Vec<String>,
}

#[derive(Args)]
struct SinkArgs {
    /// Where to listen (loopback only; port 0 picks one, printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Stop after this long (at most 1 h), or at Ctrl-C.
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Receive buffer to ask for, in bytes (capped by net.core.rmem_max); default: the system's.
    #[arg(long)]
    recv_buffer: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `250ms`, `10s`, `2m` or a bare number of seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a duration (like 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s or m")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn print(report: &Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_table());
    }
}

impl Common {
    /// The one target of a command that loads one gateway.
    fn target(&self) -> anyhow::Result<SocketAddr> {
        match self.targets[..] {
            [one] => Ok(one),
            _ => bail!("this command loads one gateway: give one --target (put, find-rate and swaps take several)"),
        }
    }
}

/// The process of each target (`--gateway-pid`), in the order of the targets.
fn gateways(common: &Common) -> anyhow::Result<Vec<Process>> {
    let pids: Vec<u32> = match common.gateway_pid.as_deref() {
        None => return Ok(Vec::new()),
        Some("auto") => common
            .targets
            .iter()
            .map(|t| {
                sluice_bench::procfs::udp_port_owner(t.port()).with_context(|| {
                    format!(
                        "--gateway-pid auto: no single process of this user has UDP port {} open; pass the pid",
                        t.port()
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Some(list) => list
            .split(',')
            .map(|pid| pid.trim().parse().with_context(|| format!("--gateway-pid {pid}: not a pid or `auto`")))
            .collect::<anyhow::Result<_>>()?,
    };
    pids.into_iter().map(|pid| Process::new(pid).context("--gateway-pid")).collect()
}

/// The process of the one target (`--gateway-pid`).
fn gateway(common: &Common) -> anyhow::Result<Option<Process>> {
    common.target()?;
    Ok(gateways(common)?.into_iter().next())
}

fn broker(broker_pid: Option<&str>, mqtt: &str) -> anyhow::Result<Option<Process>> {
    let pid = match broker_pid {
        None => return Ok(None),
        Some("auto") => {
            let port = sluice_bench::procfs::mqtt_url_port(mqtt)
                .with_context(|| format!("--broker-pid auto: no TCP port in --mqtt {mqtt}"))?;
            sluice_bench::procfs::tcp_listener_owner(port).with_context(|| {
                format!("--broker-pid auto: no single process of this user listens on TCP port {port}; pass the pid")
            })?
        }
        Some(pid) => pid.parse().with_context(|| format!("--broker-pid {pid}: not a pid or `auto`"))?,
    };
    Process::new(pid).map(Some).context("--broker-pid")
}

fn load_config(common: &Common, load: &LoadArgs, sink: bool) -> anyhow::Result<LoadConfig> {
    let (first, more) = common.targets.split_first().context("--target: give at least one address")?;
    let mut c = LoadConfig::new(*first, (!sink).then(|| load.mqtt.clone()));
    c.more_targets = more.to_vec();
    let mut processes = gateways(common)?.into_iter();
    c.gateway = processes.next();
    c.more_gateways = processes.collect();
    c.topic_filter = load.topic_filter.clone();
    c.path_template = load.path_template.clone();
    c.devices = load.devices;
    c.sockets = load.sockets;
    c.payload_size = load.payload_size.min(1024);
    if !sink {
        c.broker = broker(load.broker_pid.as_deref(), &load.mqtt)?;
    }
    c.timeout = load.timeout;
    c.drain = load.drain;
    c.senders = load.senders.clamp(1, 64);
    Ok(c)
}

async fn run(cli: Cli, stop: Stop) -> anyhow::Result<()> {
    match cli.command {
        Command::Put(a) => {
            if a.duration > sluice_bench::put::MAX_DURATION {
                bail!("--duration is at most {} s", sluice_bench::put::MAX_DURATION.as_secs());
            }
            let phase = Phase {
                rate: a.rate,
                duration: a.duration,
                con: a.con,
                window: a.window,
                max_messages: a.max_messages.min(sluice_bench::put::MAX_MESSAGES),
            };
            let planned = if a.rate == 0 {
                phase.max_messages
            } else {
                phase.max_messages.min((a.rate as f64 * a.duration.as_secs_f64()).ceil() as u64)
            };
            let mut load = Load::prepare(load_config(&a.common, &a.load, a.sink)?, planned).await?;
            let r = load.run(&phase, &stop).await;
            load.close().await;
            print(&r?, a.common.json);
        }
        Command::FindRate(a) => {
            let cfg = FindRateConfig {
                start: a.start,
                max_rate: a.max_rate,
                step: a.step,
                loss_pct: a.loss_pct,
                bisect: a.bisect,
                max_steps: a.max_steps.min(64),
                max_time: a.max_time,
                pause: Duration::from_secs(1),
            };
            let mut load = Load::prepare(load_config(&a.common, &a.load, a.sink)?, cfg.messages()).await?;
            let r = find_rate::run(&mut load, &cfg, &stop).await;
            load.close().await;
            let (summary, steps) = r?;
            for s in &steps {
                print(s, a.common.json);
            }
            print(&summary, a.common.json);
        }
        Command::Fanout(a) => {
            let mut cfg = FanoutConfig::new(a.common.target()?, a.mqtt);
            cfg.observers = a.observers;
            cfg.messages = a.messages;
            cfg.topic = a.topic;
            cfg.path_template = a.path_template;
            cfg.sockets = a.sockets;
            cfg.concurrency = a.concurrency;
            cfg.interval = a.interval;
            cfg.qos = a.qos;
            cfg.drain = a.drain;
            cfg.gateway = gateway(&a.common)?;
            cfg.broker = broker(a.broker_pid.as_deref(), &cfg.mqtt)?;
            print(&fanout::run(&cfg, &stop).await?, a.common.json);
        }
        Command::Idle(a) => {
            let mut cfg = IdleConfig::new(a.common.target()?);
            cfg.devices = a.devices;
            cfg.path_template = a.path_template;
            cfg.sockets = a.sockets;
            cfg.concurrency = a.concurrency;
            cfg.settle = a.settle;
            cfg.deregister = !a.keep;
            cfg.gateway = gateway(&a.common)?;
            cfg.admin = a.admin;
            print(&idle::run(&cfg, &stop).await?, a.common.json);
        }
        Command::Swaps(a) => {
            let phase = Phase {
                rate: a.rate,
                duration: a.duration.min(sluice_bench::put::MAX_DURATION),
                con: true,
                window: a.window,
                max_messages: sluice_bench::put::MAX_MESSAGES / 10,
            };
            let cfg = SwapsConfig {
                rules_dir: a.rules_dir,
                packages: a.packages,
                swaps: a.swaps,
                file_name: a.file_name,
                settle: a.settle,
                keep: a.keep,
            };
            let planned = if a.rate == 0 {
                phase.max_messages
            } else {
                phase.max_messages.min((a.rate as f64 * phase.duration.as_secs_f64()).ceil() as u64)
            };
            let mut load = Load::prepare(load_config(&a.common, &a.load, false)?, planned).await?;
            let r = swaps::run(&mut load, &phase, &cfg, &stop).await;
            load.close().await;
            print(&r?, a.common.json);
        }
        Command::Handshakes(a) => {
            let common = Common { targets: vec![a.target], gateway_pid: a.gateway_pid, json: a.json };
            let mut cfg = HandshakesConfig::new(a.target);
            cfg.identity = a.identity;
            cfg.key = a.key;
            cfg.concurrency = a.concurrency;
            cfg.duration = a.duration;
            cfg.count = a.count;
            cfg.request = !a.no_request;
            cfg.request_path = a.request_path;
            cfg.timeout = a.timeout.clamp(Duration::from_millis(100), Duration::from_secs(60));
            cfg.gateway = gateway(&common)?;
            print(&handshakes::run(&cfg, &stop).await?, common.json);
        }
        Command::Soak(a) => {
            let mut cfg = SoakConfig::new(a.common.target()?, a.mqtt);
            cfg.dtls = a.dtls_target;
            cfg.identity = a.identity;
            cfg.key = a.key;
            cfg.gateway = gateway(&a.common)?;
            cfg.duration = a.duration;
            cfg.warmup = a.warmup;
            cfg.interval = a.interval.max(Duration::from_millis(100));
            cfg.devices = a.devices;
            cfg.non_rate = a.non_rate;
            cfg.con_rate = a.con_rate;
            cfg.ps_write_rate = a.ps_write_rate;
            cfg.ps_read_rate = a.ps_read_rate;
            cfg.ps_topics = a.ps_topics;
            cfg.observers = a.observers;
            cfg.notify_rate = a.notify_rate;
            cfg.dtls_rate = a.dtls_rate;
            cfg.timeout = a.timeout;
            cfg.max_missing_pct = a.max_missing_pct;
            cfg.max_rss_growth_mib = a.max_rss_growth_mib;
            cfg.max_fd_growth = a.max_fd_growth;
            cfg.progress = !a.quiet;
            let mut r = soak::run(&cfg, &stop).await?;
            if !a.common.json {
                // The table has no room for them: they went to stderr as they were taken.
                let n = r.get("samples").and_then(|s| s.as_array()).map_or(0, Vec::len);
                r.set("samples", format!("{n} (above; all figures with --json)"));
            }
            print(&r, a.common.json);
            if r.get("pass") != Some(&serde_json::Value::Bool(true)) {
                bail!("the soak failed: {}", r.get("problems").map(|p| p.to_string()).unwrap_or_default());
            }
        }
        Command::Noisy(a) => {
            a.common.target()?;
            if a.duration > sluice_bench::put::MAX_DURATION {
                bail!("--duration is at most {} s", sluice_bench::put::MAX_DURATION.as_secs());
            }
            let phase = Phase {
                rate: a.rate,
                duration: a.duration,
                con: true,
                window: a.window,
                max_messages: sluice_bench::put::MAX_MESSAGES / 10,
            };
            let per_run = if a.rate == 0 {
                phase.max_messages / 2
            } else {
                (phase.max_messages / 2).min((a.rate as f64 * a.duration.as_secs_f64()).ceil() as u64)
            };
            let phase = Phase { max_messages: per_run, ..phase };
            let mut abuse = AbuseConfig::new();
            abuse.rate = a.abuse_rate;
            if !a.abuse_paths.is_empty() {
                abuse.paths = a.abuse_paths;
            }
            let mut load = Load::prepare(load_config(&a.common, &a.load, false)?, 2 * per_run).await?;
            let r = noisy::run(&mut load, &phase, &abuse, &stop).await;
            load.close().await;
            print(&r?, a.common.json);
        }
        Command::Sink(a) => {
            let sink = Sink::start_with_buffer(a.bind, a.recv_buffer)?;
            // The port goes to stderr first so that a script can read it before the report.
            eprintln!("sink listening on {}", sink.addr());
            let limit = a.duration.min(Duration::from_secs(3600));
            let end = tokio::time::Instant::now() + limit;
            while tokio::time::Instant::now() < end && !stop.raised() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            print(&sink.stop(), a.json);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Stop::new();
    stop.on_ctrl_c();
    match run(cli, stop.clone()).await.context("sluice-bench") {
        // Interrupted runs still print their report, but a script must not take them as whole.
        Ok(()) if stop.raised() => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
