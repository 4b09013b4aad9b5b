//! The socket side: one task demultiplexes datagrams by peer; each peer gets a session task
//! that runs its handshake (bounded in number and in time) and then moves its CoAP datagrams
//! between webrtc-dtls and the driver until the session ends or goes idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use webrtc_dtls::conn::DTLSConn;

use crate::telemetry::{DropReason, Handshake};

use super::conn::PeerConn;
use super::driver::Inbound;
use super::hello::ClientHello;
use super::{Settings, certs};

/// The largest datagram read.
const RECV_BUFFER: usize = 64 * 1024;
/// Datagrams queued for one peer's session before further ones are dropped (as UDP would).
const PEER_QUEUE: usize = 64;
/// A peer that sends nothing after its first ClientHello within this long (it does not answer
/// the HelloVerifyRequest: a spoofed or replayed ClientHello) gives up its handshake slot
/// early, long before `handshake_timeout`.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Datagrams queued from the driver to one session.
const OUT_QUEUE: usize = 256;

/// A peer the demultiplexer knows.
struct Peer {
    session: u64,
    datagrams: mpsc::Sender<Vec<u8>>,
    /// Set by the session once its handshake is done.
    established: Arc<AtomicBool>,
}

/// Spawns the demultiplexer on `socket`.
pub(super) fn spawn(
    socket: Arc<UdpSocket>,
    settings: Arc<Settings>,
    inbound: mpsc::Sender<Inbound>,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(demultiplex(socket, settings, inbound, shutdown));
}

async fn demultiplex(
    socket: Arc<UdpSocket>,
    settings: Arc<Settings>,
    inbound: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut next_session = 0u64;
    let mut ignored = 0u64;
    while !*shutdown.borrow() {
        let (len, peer) = tokio::select! {
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
            Some((peer, session)) = ended.recv() => {
                if peers.get(&peer).is_some_and(|p| p.session == session) {
                    peers.remove(&peer);
                }
                continue;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    debug!(%error, "DTLS socket receive failed.");
                    continue;
                }
            },
        };
        let datagram = buf.get(..len).unwrap_or_default();
        // A ClientHello on an established session: the device lost its state (a reboot with
        // the same address and port) and starts over; the old session ends (RFC 6347 §4.2.8).
        if peers.get(&peer).is_some_and(|p| p.established.load(Ordering::Relaxed))
            && ClientHello::parse(datagram).is_some()
        {
            debug!(%peer, "New ClientHello on an established DTLS session; starting over.");
            peers.remove(&peer);
        }
        if let Some(known) = peers.get(&peer) {
            match known.datagrams.try_send(datagram.to_vec()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    settings.metrics.dropped(DropReason::DtlsSessionQueueFull);
                    debug!(%peer, "DTLS session queue full; datagram dropped.");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    peers.remove(&peer);
                }
            }
            continue;
        }
        // A new peer must open with a ClientHello; anything else leaves no state behind.
        let Some(hello) = ClientHello::parse(datagram) else {
            settings.metrics.dropped(DropReason::DtlsNotClientHello);
            ignored += 1;
            if ignored.is_power_of_two() {
                debug!(%peer, ignored, "Ignored a datagram that is not a DTLS ClientHello.");
            }
            continue;
        };
        if peers.len() >= settings.max_sessions {
            settings.metrics.dropped(DropReason::DtlsSessionLimit);
            debug!(%peer, max = settings.max_sessions, "DTLS session limit reached; ClientHello dropped.");
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            settings.metrics.dropped(DropReason::DtlsHandshakeLimit);
            debug!(%peer, max = settings.max_handshakes, "Too many DTLS handshakes in progress; ClientHello dropped.");
            continue;
        };
        let Some(config) = settings.config_for(&hello) else { continue };
        let (datagrams, incoming) = mpsc::channel(PEER_QUEUE);
        let _ = datagrams.try_send(datagram.to_vec());
        next_session += 1;
        let established = Arc::new(AtomicBool::new(false));
        peers.insert(peer, Peer { session: next_session, datagrams, established: established.clone() });
        let conn = PeerConn {
            socket: socket.clone(),
            peer,
            incoming: Mutex::new(incoming),
            detached: AtomicBool::new(false),
            received: AtomicUsize::new(0),
        };
        let session = Session {
            peer,
            id: next_session,
            settings: settings.clone(),
            inbound: inbound.clone(),
            shutdown: shutdown.clone(),
            established,
        };
        let ended = ended_tx.clone();
        tokio::spawn(async move {
            session.run(conn, config, permit).await;
            let _ = ended.send((peer, session.id));
        });
    }
    debug!("DTLS listener stopped.");
}

/// Counts an established session out when it ends, however it ends.
struct SessionCount<'a>(&'a crate::telemetry::Metrics);

impl Drop for SessionCount<'_> {
    fn drop(&mut self) {
        self.0.dtls_session(-1);
    }
}

/// One peer's session.
struct Session {
    peer: SocketAddr,
    id: u64,
    settings: Arc<Settings>,
    inbound: mpsc::Sender<Inbound>,
    shutdown: watch::Receiver<bool>,
    established: Arc<AtomicBool>,
}

impl Session {
    async fn run(&self, conn: PeerConn, config: webrtc_dtls::config::Config, permit: OwnedSemaphorePermit) {
        let peer = self.peer;
        let psk = config.psk.is_some();
        let conn = Arc::new(conn);
        let handshake = DTLSConn::new(conn.clone(), config, false, None);
        tokio::pin!(handshake);
        let started = Instant::now();
        let deadline = started + self.settings.handshake_timeout;
        let mut silent_check = Some(started + ANSWER_WITHIN.min(self.settings.handshake_timeout));
        let dtls = loop {
            let check = silent_check.unwrap_or(deadline);
            tokio::select! {
                result = &mut handshake => match result {
                    Ok(dtls) => break dtls,
                    Err(error) => {
                        self.settings.metrics.handshake(Handshake::Failed);
                        info!(%peer, %error, "DTLS handshake failed.");
                        return;
                    }
                },
                () = tokio::time::sleep_until(check) => {
                    if silent_check.take().is_some() {
                        if conn.received.load(Ordering::Relaxed) > 1 {
                            continue;
                        }
                        debug!(%peer, "No answer to the HelloVerifyRequest; handshake dropped.");
                    } else {
                        debug!(%peer, timeout = ?self.settings.handshake_timeout, "DTLS handshake timed out.");
                    }
                    self.settings.metrics.handshake(Handshake::TimedOut);
                    return;
                }
            }
        };
        drop(permit);
        self.established.store(true, Ordering::Relaxed);
        self.settings.metrics.handshake(Handshake::Ok);
        self.settings.metrics.dtls_session(1);
        let _counted = SessionCount(&self.settings.metrics);
        let state = dtls.connection_state().await;
        let identity = if psk {
            sluice_sdk::Identity {
                psk_identity: Some(String::from_utf8_lossy(&state.identity_hint).into_owned()),
                ..Default::default()
            }
        } else {
            certs::identity(&state.peer_certificates)
        };
        debug!(
            %peer,
            psk_identity = identity.psk_identity.as_deref().unwrap_or(""),
            cert_subject = identity.cert_subject.as_deref().unwrap_or(""),
            "DTLS session established."
        );
        let (out_tx, mut out) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
        let open = Inbound::Open { peer, session: self.id, identity: Arc::new(identity), out: out_tx };
        if self.inbound.send(open).await.is_err() {
            return;
        }
        let mut shutdown = self.shutdown.clone();
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut idle_at = Instant::now() + self.settings.idle_timeout;
        loop {
            tokio::select! {
                read = dtls.read(&mut buf, None) => match read {
                    Ok(n) => {
                        idle_at = Instant::now() + self.settings.idle_timeout;
                        let datagram = buf.get(..n).unwrap_or_default().to_vec();
                        if self.inbound.send(Inbound::Datagram { peer, datagram }).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        debug!(%peer, %error, "DTLS session ended by the peer.");
                        break;
                    }
                },
                bytes = out.recv() => {
                    let Some(bytes) = bytes else { break };
                    idle_at = Instant::now() + self.settings.idle_timeout;
                    if let Err(error) = dtls.write(&bytes, None).await {
                        warn!(%peer, %error, "DTLS send failed.");
                    }
                }
                () = tokio::time::sleep_until(idle_at) => {
                    debug!(%peer, "DTLS session idle; closed.");
                    break;
                }
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), dtls.close()).await;
        let _ = self.inbound.send(Inbound::Closed { peer, session: self.id }).await;
    }
}
