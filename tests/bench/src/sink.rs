//! A bare UDP sink: it counts datagrams and does as little as a CoAP endpoint can (a Reset to a
//! ping, a piggybacked 2.04 to a Confirmable request), so that the generator against it shows
//! the machine's physical ceiling. `sluice-bench:stats` asks it for its count.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report::{Report, round2};

/// The control datagram that asks a sink for its count.
pub const STATS: &[u8] = b"sluice-bench:stats";

#[derive(Default)]
struct Counts {
    received: AtomicU64,
    confirmable: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// A running sink (one OS thread with a blocking socket).
pub struct Sink {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
    recv_buffer: usize,
}

impl Sink {
    /// Binds `bind` (loopback only) with the default receive buffer and starts counting.
    pub fn start(bind: SocketAddr) -> anyhow::Result<Sink> {
        Sink::start_with_buffer(bind, None)
    }

    /// Like [`Sink::start`], asking for a receive buffer of `recv_buffer` bytes (the kernel
    /// caps it at `net.core.rmem_max`; the report gives what was granted).
    pub fn start_with_buffer(bind: SocketAddr, recv_buffer: Option<usize>) -> anyhow::Result<Sink> {
        crate::pool::check_loopback(bind)?;
        let socket = UdpSocket::bind(bind).with_context(|| format!("binding the sink to {bind}"))?;
        let socket = socket2::Socket::from(socket);
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).context("setting the sink's receive buffer")?;
        }
        let recv_buffer = socket.recv_buffer_size().unwrap_or(0);
        let socket = UdpSocket::from(socket);
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (c, s) = (counts.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || serve(&socket, &c, &s, started))
            .context("starting the sink thread")?;
        Ok(Sink { addr, counts, stop, thread: Some(thread), started, recv_buffer })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams counted so far.
    pub fn received(&self) -> u64 {
        self.counts.received.load(Ordering::Relaxed)
    }

    /// Stops the sink and reports what it received.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let c = &self.counts;
        let received = c.received.load(Ordering::Relaxed);
        let span = (c.last_ns.load(Ordering::Relaxed).saturating_sub(c.first_ns.load(Ordering::Relaxed))) as f64 / 1e9;
        let mut r = Report::new("sink");
        r.set("bind", self.addr.to_string());
        // Linux reports twice the size asked for (it counts its bookkeeping).
        r.set("recv_buffer_bytes", self.recv_buffer as u64);
        r.set("up_s", round2(self.started.elapsed().as_secs_f64()));
        r.set("received", received);
        r.set("confirmable", c.confirmable.load(Ordering::Relaxed));
        r.set("active_s", round2(span));
        r.set("received_per_s", if span > 0.0 { round2(received as f64 / span) } else { 0.0 });
        r
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn serve(socket: &UdpSocket, c: &Counts, stop: &AtomicBool, started: Instant) {
    let mut buf = [0u8; 2048];
    let mut reply = Vec::with_capacity(32);
    while !stop.load(Ordering::Acquire) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
        let d = &buf[..n];
        if d == STATS {
            let body = format!("{{\"received\":{}}}", c.received.load(Ordering::Relaxed));
            let _ = socket.send_to(body.as_bytes(), peer);
            continue;
        }
        // CoAP: version 1, type CON → answer; an empty CON is a ping → Reset.
        if n >= 4 && d[0] >> 6 == 1 && (d[0] >> 4) & 3 == 0 {
            let tkl = usize::from(d[0] & 0x0f).min(8).min(n - 4);
            reply.clear();
            if d[1] == 0 {
                reply.extend_from_slice(&[0x70, 0, d[2], d[3]]);
                let _ = socket.send_to(&reply, peer);
                continue;
            }
            reply.extend_from_slice(&[0x60 | tkl as u8, crate::coap::CHANGED, d[2], d[3]]);
            reply.extend_from_slice(&d[4..4 + tkl]);
            let _ = socket.send_to(&reply, peer);
            c.confirmable.fetch_add(1, Ordering::Relaxed);
        }
        let now = started.elapsed().as_nanos() as u64;
        if c.received.fetch_add(1, Ordering::Relaxed) == 0 {
            c.first_ns.store(now, Ordering::Relaxed);
        }
        c.last_ns.store(now, Ordering::Relaxed);
    }
}

/// Asks the sink at `addr` how many datagrams it has counted.
pub async fn query(addr: SocketAddr) -> anyhow::Result<u64> {
    let s = tokio::net::UdpSocket::bind(if addr.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }).await?;
    s.connect(addr).await?;
    let mut buf = [0u8; 256];
    for _ in 0..5 {
        s.send(STATS).await?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.recv(&mut buf)).await {
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).context("the sink's answer")?;
            if let Some(r) = v.get("received").and_then(serde_json::Value::as_u64) {
                return Ok(r);
            }
        }
    }
    bail!(
        "the target at {addr} does not answer as a sluice-bench sink: start one with `sluice-bench sink --bind {addr}`"
    )
}
