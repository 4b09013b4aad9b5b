//! Simulated devices over a pool of UDP sockets.
//!
//! Each socket is its own source port; devices are spread over the sockets round-robin
//! (device `d` uses socket `d % sockets`), each device with its own client id in the URL and
//! its own tokens. Message-IDs are per socket (the gateway de-duplicates on source endpoint and
//! Message-ID for about 247 s), start on a clock ([`mid_clock`]) and never repeat within a run
//! of up to [`MIDS_PER_SOCKET`] messages per socket. One receiver task per socket hands every reply
//! to a shared handler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::coap;
use crate::procfs;

/// Messages one socket may send before its Message-IDs could repeat inside the gateway's
/// de-duplication window.
pub const MIDS_PER_SOCKET: u64 = 60_000;

/// Most sockets the generator opens by default.
pub const DEFAULT_MAX_SOCKETS: usize = 4_096;

/// Refuses targets that are not on loopback: the generator floods, so it stays on this machine.
pub fn check_loopback(target: SocketAddr) -> anyhow::Result<()> {
    if !target.ip().is_loopback() {
        bail!(
            "{target} is not a loopback address: sluice-bench only loads gateways on this machine (127.0.0.0/8, ::1)"
        );
    }
    Ok(())
}

/// Sockets that can still be opened: the soft fd limit minus those open, minus a reserve.
pub fn socket_budget() -> usize {
    procfs::fd_limit().saturating_sub(procfs::open_fds() + 128) as usize
}

/// Sockets for `devices` devices when the user did not say: one per device up to
/// [`DEFAULT_MAX_SOCKETS`] and the fd budget, at least enough for `messages` Message-IDs.
pub fn default_sockets(devices: u64, messages: u64) -> usize {
    let wanted = (devices as usize).clamp(1, DEFAULT_MAX_SOCKETS);
    let needed = messages.div_ceil(MIDS_PER_SOCKET) as usize;
    wanted.max(needed).min(socket_budget().max(1))
}

/// The sockets and their Message-ID counters.
#[derive(Debug)]
pub struct Pool {
    target: SocketAddr,
    sockets: Vec<Arc<UdpSocket>>,
    mids: Vec<AtomicU16>,
}

impl Pool {
    /// Binds `count` sockets on 127.0.0.1 (or ::1), each connected to `target`.
    pub async fn bind(target: SocketAddr, count: usize) -> anyhow::Result<Pool> {
        Pool::bind_spread(&[target], count).await
    }

    /// Binds `count` sockets, socket `i` connected to `targets[i % targets.len()]`: the devices
    /// of a deployment of several gateways, spread evenly (a device keeps its gateway, as
    /// behind a balancer that hashes source addresses).
    pub async fn bind_spread(targets: &[SocketAddr], count: usize) -> anyhow::Result<Pool> {
        let Some(&target) = targets.first() else { bail!("no target to bind to") };
        let budget = socket_budget();
        if count > budget {
            bail!(
                "{count} sockets asked, but only {budget} file descriptors are left (ulimit -n is {}): use fewer --sockets (devices share them) or raise `ulimit -n`",
                procfs::fd_limit()
            );
        }
        let local: SocketAddr = if target.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { "[::1]:0".parse()? };
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let to = targets[i % targets.len()];
            let s = UdpSocket::bind(local).await.context("binding a UDP socket on loopback")?;
            s.connect(to).await.with_context(|| format!("connecting a UDP socket to {to}"))?;
            sockets.push(Arc::new(s));
        }
        let start = mid_clock();
        let mids = (0..sockets.len()).map(|_| AtomicU16::new(start)).collect();
        Ok(Pool { target, sockets, mids })
    }

    /// The (first) gateway's address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Number of sockets (source ports).
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are no sockets (never, after `bind`).
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The socket of device `device`.
    pub fn socket_of(&self, device: u64) -> (usize, &Arc<UdpSocket>) {
        let i = (device % self.sockets.len() as u64) as usize;
        (i, &self.sockets[i])
    }

    /// The next Message-ID of socket `i`.
    pub fn next_mid(&self, i: usize) -> u16 {
        self.mids[i].fetch_add(1, Ordering::Relaxed)
    }

    /// Starts one receiver task per socket; `handler(socket, datagram)` runs for every reply.
    /// The tasks end when the returned value is dropped.
    pub fn spawn_receivers<H>(&self, handler: Arc<H>) -> Receivers
    where
        H: Fn(&UdpSocket, &[u8]) + Send + Sync + 'static,
    {
        let tasks = self
            .sockets
            .iter()
            .map(|s| {
                let s = s.clone();
                let h = handler.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    loop {
                        match s.recv(&mut buf).await {
                            Ok(n) => h(&s, &buf[..n]),
                            // ICMP port unreachable while the gateway is away: keep listening.
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            })
            .collect();
        Receivers(tasks)
    }
}

/// The first Message-ID of a new socket: a clock that goes once round the 16-bit space in 250 s
/// (262 per second), just longer than the gateway's de-duplication lifetime (~247 s).
///
/// The kernel hands out recently used source ports again, so a socket may get the port of one
/// an earlier run used seconds ago. Starting its Message-IDs on this clock puts them past all
/// that earlier socket sent, as long as it sent fewer than 262 messages per second (one
/// device per socket at up to 262 msg/s each, or 1000 sockets at up to 262k msg/s); random
/// starts collided about once per run.
pub fn mid_clock() -> u16 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    ((ms % 250_000) * 65_536 / 250_000) as u16
}

/// Receiver tasks, aborted on drop.
#[derive(Debug)]
pub struct Receivers(Vec<JoinHandle<()>>);

impl Drop for Receivers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Checks that a CoAP endpoint answers at `target` (a CoAP ping, three tries in 1.5 s).
pub async fn probe(target: SocketAddr) -> anyhow::Result<()> {
    check_loopback(target)?;
    let s = UdpSocket::bind(if target.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }).await?;
    s.connect(target).await?;
    let mid = rand::random::<u16>();
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        let _ = s.send(&coap::ping(mid)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            if coap::parse(&buf[..n]).is_some_and(|r| r.mid == mid) {
                return Ok(());
            }
        }
    }
    bail!(
        "no CoAP endpoint answers at {target} (3 CoAP pings in 1.5 s): start the gateway first, e.g. `sluice run --coap-bind {target}`, or `sluice-bench sink --bind {target}`, or pass the right --target"
    )
}
