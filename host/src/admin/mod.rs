//! The admin HTTP API, for operators: `GET /healthz`, `GET /metrics` (Prometheus text format
//! 0.0.4) and `GET /rules` (JSON). Loopback by default (`admin.bind`, `--admin-bind`).
//!
//! A deliberately small HTTP/1.1 server: one request per connection (`Connection: close`),
//! the request head bounded to [`MAX_REQUEST`] bytes and [`READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once). Only `GET` and `HEAD` are allowed.
//! The counters live in [`Metrics`], bumped on the hot path by the gateway and the transports;
//! everything else is read from its owner when scraped. Nothing secret is ever rendered: no
//! rule config, no broker credentials, no PSK identities or session tokens.

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
use crate::rules::{Chain, ReloadStatus};
use crate::transport::Link;

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
        let admin = admin.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &admin).await {
                debug!(%error, "Admin connection failed.");
            }
            drop(permit);
        });
    }
    debug!("Admin API stopped.");
}

/// An answer: status line, content type, body.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

async fn connection(mut stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut buf)).await;
    let (reply, head_only) = match head {
        Err(_) => (Reply::text("408 Request Timeout", "request timeout\n"), false),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(false)) => (Reply::text("431 Request Header Fields Too Large", "request too large\n"), false),
        Ok(Ok(true)) => match request_line(&buf) {
            None => (Reply::text("400 Bad Request", "bad request\n"), false),
            Some((method, target)) => (answer(admin, method, target).await, method == "HEAD"),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&reply.body);
    }
    stream.write_all(out.as_bytes()).await?;
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

/// `GET /metrics HTTP/1.1` → (`GET`, `/metrics`).
fn request_line(buf: &[u8]) -> Option<(&str, &str)> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

async fn answer(admin: &Admin, method: &str, target: &str) -> Reply {
    let path = target.split('?').next().unwrap_or(target);
    let known = matches!(path, "/healthz" | "/metrics" | "/rules");
    if !known {
        return Reply::text("404 Not Found", "not found; try /healthz, /metrics or /rules\n");
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text("405 Method Not Allowed", "use GET\n");
    }
    match path {
        "/healthz" => match admin.unhealthy().await {
            None => Reply::text("200 OK", "ok\n"),
            Some(reason) => Reply::text("503 Service Unavailable", format!("{reason}\n")),
        },
        "/metrics" => Reply {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: admin.metrics_text().await,
        },
        _ => {
            let mut body = serde_json::to_string_pretty(&admin.rules_json()).unwrap_or_default();
            body.push('\n');
            Reply { status: "200 OK", content_type: "application/json", body }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_read_strictly() {
        assert_eq!(request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line(b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n"), Some(("HEAD", "/healthz?x=1")));
        assert_eq!(request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line(b"GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line(b"GET / HTTP/1.1 extra\r\n\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe / HTTP/1.1\r\n\r\n"), None);
    }
}
