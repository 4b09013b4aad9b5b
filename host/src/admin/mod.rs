//! The admin HTTP API, for operators: health, Prometheus metrics, the rules (and a reload),
//! the effective config, the devices (`/clients`: list, look at one, end one, trace one) and a
//! dashboard in the browser — the routes are in [`api`], described in `openapi.json`.
//! Loopback by default (`admin.bind`, `--admin-bind`); with `admin.token`, every endpoint but
//! `/healthz` and the dashboard's files needs `Authorization: Bearer TOKEN`; beyond loopback
//! without a token, only the read-only endpoints (health, metrics, rules, overview) are served.
//!
//! A deliberately small HTTP/1.1 server: one request per connection (`Connection: close`),
//! the request head bounded to [`MAX_REQUEST`] bytes and [`READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once); a trace streams JSON lines until
//! its time is up. The counters live in [`Metrics`], bumped on the hot path by the gateway and
//! the transports; everything else is read from its owner when asked. Nothing secret is ever
//! rendered: no rule config secrets, no broker credentials, no PSKs or session tokens.

mod api;
mod http;
mod render;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::telemetry::{Metrics, ReloadOutcome};

use crate::coap::Stats;
use crate::gateway::Gateway;
use crate::mqtt;
use crate::rules::{Chain, ReloadStatus, ReloadTrigger};
use crate::transport::Link;
use api::Reply;

/// The largest request head (request line and headers) read; beyond, 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection is drained after its answer.
const LINGER: Duration = Duration::from_millis(500);
/// The longest a transport may take to report its statistics for a scrape.
const STATS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin API reads: the gateway's parts, shared with the server.
pub struct Admin {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The gateway (observers).
    pub gateway: Arc<Gateway>,
    /// The live rule chain.
    pub chain: Arc<ArcSwap<Chain>>,
    /// The latest reload's outcome.
    pub reloads: watch::Receiver<ReloadStatus>,
    /// The broker connection.
    pub mqtt: mqtt::Handle,
    /// The CoAP over UDP transport's drivers.
    pub coap: Vec<Link>,
    /// The CoAP over DTLS transport, when it runs.
    pub coaps: Option<Link>,
    /// Asks the reloader for a reload (`POST /rules/reload`).
    pub reload: Option<ReloadTrigger>,
    /// The effective config, secrets redacted (`GET /config`).
    pub config: serde_json::Value,
    /// The bearer token every endpoint but `/healthz` and the dashboard needs, if any.
    pub token: Option<String>,
    /// When the gateway started.
    pub started: std::time::Instant,
    /// Listening beyond loopback without a token: only the read-only endpoints are served.
    pub read_only: bool,
}

/// The statistics of both transports' endpoints at one moment (`None`: not running).
pub(crate) struct Snapshot {
    pub(crate) udp: Option<Stats>,
    pub(crate) dtls: Option<Stats>,
}

impl Admin {
    async fn snapshot(&self) -> Snapshot {
        async fn stats(handle: Option<&Link>) -> Option<Stats> {
            tokio::time::timeout(STATS_TIMEOUT, handle?.stats()).await.ok().flatten()
        }
        // The UDP drivers are reported as one listener: their counters summed, and none
        // when one of them does not answer.
        let mut udp = Some(Stats::default());
        for link in &self.coap {
            udp = match (udp, stats(Some(link)).await) {
                (Some(mut sum), Some(one)) => {
                    sum += &one;
                    Some(sum)
                }
                _ => None,
            };
        }
        Snapshot { udp, dtls: stats(self.coaps.as_ref()).await }
    }

    /// `/healthz`: `None` when healthy, else why not.
    async fn unhealthy(&self) -> Option<String> {
        let mut reasons = Vec::new();
        let snapshot = self.snapshot().await;
        if snapshot.udp.is_none() {
            reasons.push("the CoAP listener is not running");
        }
        if self.coaps.is_some() && snapshot.dtls.is_none() {
            reasons.push("the CoAP over DTLS listener is not running");
        }
        if !self.mqtt.is_connected() {
            reasons.push("the MQTT broker is not connected");
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let snapshot = self.snapshot().await;
        render::metrics(self, &snapshot)
    }

    /// `/rules`.
    pub fn rules_json(&self) -> serde_json::Value {
        render::rules(&self.chain.load(), &self.reloads.borrow())
    }

    /// `/overview`: what the dashboard's first page shows.
    pub async fn overview(&self) -> serde_json::Value {
        let (clients, sessions) = self.gateway.client_counts();
        render::overview(self, clients, sessions)
    }
}

/// Binds the admin listener and serves it until `shutdown`; returns the bound address.
pub async fn bind(
    addr: SocketAddr,
    admin: Arc<Admin>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(listener, admin, shutdown))))
}

async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "Admin accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(max = MAX_CONNECTIONS, "Too many admin connections; one closed.");
            continue;
        };
        let (admin, shutdown) = (admin.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &admin, shutdown).await {
                debug!(%error, "Admin connection failed.");
            }
            drop(permit);
        });
    }
    debug!("Admin API stopped.");
}

async fn connection(mut stream: TcpStream, admin: &Admin, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut buf)).await;
    let (reply, head_only) = match head {
        Err(_) => (Reply::text("408 Request Timeout", "request timeout\n"), false),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(false)) => (Reply::text("431 Request Header Fields Too Large", "request too large\n"), false),
        Ok(Ok(true)) => match http::Head::parse(&buf) {
            None => (Reply::text("400 Bad Request", "bad request\n"), false),
            Some(head) => (api::answer(admin, &head).await, head.method == "HEAD"),
        },
    };
    match reply {
        Reply::Body { status, content_type, body, extra } => {
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
                body.len()
            )
            .into_bytes();
            if let Some(extra) = extra {
                out.extend_from_slice(extra.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            if !head_only {
                out.extend_from_slice(&body);
            }
            stream.write_all(&out).await?;
        }
        Reply::Trace { client_id, secs } => trace(&mut stream, admin, &client_id, secs, shutdown).await?,
    }
    stream.shutdown().await?;
    // Lingering close: read what the client still sends (the rest of an oversized head), so
    // that closing with unread data does not reset the connection before it reads the answer.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut left = MAX_REQUEST * 8;
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// Streams the requests of `client_id` as JSON lines for `secs` (or until the client goes
/// away or the gateway stops); the body ends when the connection closes.
async fn trace(
    stream: &mut TcpStream,
    admin: &Admin,
    client_id: &str,
    secs: u64,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut lines = admin.gateway.follow(client_id);
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        .await?;
    let first = serde_json::json!({"tracing": client_id, "seconds": secs});
    stream.write_all(format!("{first}\n").as_bytes()).await?;
    let deadline = tokio::time::sleep(Duration::from_secs(secs));
    tokio::pin!(deadline);
    let mut probe = [0u8; 256];
    loop {
        tokio::select! {
            () = &mut deadline => break,
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
            // The follower closed its side: stop following.
            read = stream.read(&mut probe) => if matches!(read, Ok(0) | Err(_)) { break },
            line = lines.recv() => match line {
                Some(line) => stream.write_all(format!("{line}\n").as_bytes()).await?,
                None => break,
            },
        }
    }
    Ok(())
}

/// Reads until the end of the request head; false when it is larger than [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(true);
        }
        if buf.len() > MAX_REQUEST {
            return Ok(false);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // The client closed its side: answer what arrived.
            return Ok(true);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Counts finished rule reloads by result as the reloader reports them (a reload that another
/// overtakes before this task wakes is counted with the later one's result).
pub fn count_reloads(
    metrics: Arc<Metrics>,
    mut status: watch::Receiver<ReloadStatus>,
    mut shutdown: crate::shutdown::Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = status.borrow().count;
        loop {
            let changed = tokio::select! {
                () = shutdown.signalled() => break,
                changed = status.changed() => changed,
            };
            if changed.is_err() {
                break;
            }
            let (count, result) = {
                let s = status.borrow_and_update();
                let result = if s.error.is_some() {
                    ReloadOutcome::Failed
                } else if s.refused().is_empty() {
                    ReloadOutcome::Ok
                } else {
                    ReloadOutcome::Refused
                };
                (s.count, result)
            };
            metrics.reloads(result, count.saturating_sub(seen));
            seen = count;
        }
    })
}
