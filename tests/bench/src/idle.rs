//! The `idle` scenario: N devices register an observation each (on their own topic) and then
//! do nothing; the gateway's RSS before and after gives the memory each one costs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;

use crate::observe::Observers;
use crate::procfs::Process;
use crate::report::{Report, round2};
use crate::stop::Stop;

/// What `idle` does.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    /// The gateway's CoAP address.
    pub target: SocketAddr,
    /// Observing devices.
    pub devices: u64,
    /// Observe URL; `{device}` is the device number.
    pub path_template: String,
    /// Sockets the devices are spread over (None: one each, within the fd budget).
    pub sockets: Option<usize>,
    /// Registrations in flight at once.
    pub concurrency: usize,
    /// Wait after registering before reading the RSS.
    pub settle: Duration,
    /// Deregister at the end (leaves the gateway as it was).
    pub deregister: bool,
    /// The gateway process (needed for the memory figure).
    pub gateway: Option<Process>,
    /// The gateway's admin API: with every device registered, `GET /clients` pages are timed.
    pub admin: Option<SocketAddr>,
}

impl IdleConfig {
    /// Defaults: 1000 devices on `/mqtt/idle/{device}?c=i{device}`, 256 in flight, 1 s settle.
    pub fn new(target: SocketAddr) -> IdleConfig {
        IdleConfig {
            target,
            devices: 1000,
            path_template: "/mqtt/bench/idle/{device}?c=i{device}".into(),
            sockets: None,
            concurrency: 256,
            settle: Duration::from_secs(1),
            deregister: true,
            gateway: None,
            admin: None,
        }
    }
}

/// Runs `idle` and reports it.
pub async fn run(cfg: &IdleConfig, stop: &Stop) -> anyhow::Result<Report> {
    if cfg.settle > Duration::from_secs(600) {
        bail!("--settle is at most 600 s");
    }
    let mut obs = Observers::new(cfg.target, &cfg.path_template, cfg.devices, cfg.sockets, cfg.concurrency, 0).await?;
    let before = cfg.gateway.and_then(|g| g.sample().ok());
    let max = Duration::from_secs(30 + cfg.devices / 500);
    let reg = obs.register(Duration::from_secs(2), max, stop).await;
    tokio::time::sleep(cfg.settle).await;
    let after = cfg.gateway.and_then(|g| g.sample().ok());
    let pages = match cfg.admin {
        Some(admin) => Some(time_pages(admin, cfg.devices).await?),
        None => None,
    };
    let mut r = Report::new("idle");
    r.set("target", cfg.target.to_string());
    r.set("devices", cfg.devices);
    r.set("sockets", obs.sockets() as u64);
    r.set("devices_per_socket", round2(cfg.devices as f64 / obs.sockets() as f64));
    r.set("registered", reg.done);
    r.set("register_refused", reg.refused);
    r.set("register_timeouts", reg.timeouts);
    r.set("retransmissions", obs.state().retransmissions.load(std::sync::atomic::Ordering::Relaxed));
    r.set("echo_challenges", obs.state().echo_challenges.load(std::sync::atomic::Ordering::Relaxed));
    r.set("register_s", round2(reg.elapsed.as_secs_f64()));
    r.set("register_per_s", round2(reg.done as f64 / reg.elapsed.as_secs_f64().max(1e-9)));
    match (cfg.gateway, before, after) {
        (Some(g), Some(b), Some(a)) => {
            r.set("gateway_pid", g.pid());
            r.set("gateway_rss_mib_before", round2(b.rss as f64 / 1048576.0));
            r.set("gateway_rss_mib_after", round2(a.rss as f64 / 1048576.0));
            let per = if reg.done == 0 { 0.0 } else { (a.rss as f64 - b.rss as f64) / reg.done as f64 };
            r.set("gateway_bytes_per_device", round2(per));
        }
        _ => r.set("gateway_pid", serde_json::Value::Null),
    }
    if let Some(p) = pages {
        r.set("clients_listed", p.total);
        r.set("clients_page_ms_p50", round2(p.median_ms));
        r.set("clients_page_ms_max", round2(p.max_ms));
        r.set("clients_pages_timed", p.count);
    }
    if cfg.deregister {
        // Clean-up runs even after Ctrl-C (bounded; a second Ctrl-C quits).
        let d = obs.deregister(Duration::from_secs(2), max, &Stop::new()).await;
        r.set("deregistered", d.done);
    }
    r.set("interrupted", stop.raised());
    Ok(r)
}

/// What timing `/clients` pages found.
struct Pages {
    total: u64,
    median_ms: f64,
    max_ms: f64,
    count: u64,
}

/// Times 60 `GET /clients` pages of 100 (the first page, pages after random devices, a prefix
/// search) over fresh connections, as the dashboard asks; the medians and the longest.
async fn time_pages(admin: SocketAddr, devices: u64) -> anyhow::Result<Pages> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut times = Vec::new();
    let mut total = 0;
    for i in 0..60u64 {
        let after = rand::random_range(0..devices.max(1));
        let query = match i % 3 {
            0 => "limit=100".to_string(),
            1 => format!("limit=100&after=i{after}"),
            _ => format!("limit=100&prefix=i{}", after % 1000),
        };
        let started = std::time::Instant::now();
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let request = format!("GET /clients?{query} HTTP/1.1\r\nHost: {admin}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let text = String::from_utf8_lossy(&body);
        let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!("GET /clients did not answer JSON ({e}): {}", text.lines().next().unwrap_or(""))
        })?;
        total = value["total"].as_u64().unwrap_or(0);
    }
    times.sort_by(f64::total_cmp);
    Ok(Pages {
        total,
        median_ms: times[times.len() / 2],
        max_ms: times.last().copied().unwrap_or(0.0),
        count: times.len() as u64,
    })
}
