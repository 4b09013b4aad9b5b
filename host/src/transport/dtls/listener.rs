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
///
/// It runs until the driver stops (its `inbound` receiver is gone), not merely until the
/// shutdown signal: while the driver drains, established sessions keep carrying requests and
/// answers; only new handshakes are refused once `shutdown` fired.
pub(super) fn spawn(
    socket: Arc<UdpSocket>,
    settings: Arc<Settings>,
    inbound: mpsc::Sender<Inbound>,
    shutdown: watch::Receiver<bool>,
) {
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let demux = Demux {
        handshakes: Arc::new(Semaphore::new(settings.max_handshakes)),
        socket,
        settings,
        inbound,
        peers: HashMap::new(),
        ended_tx,
        next_session: 0,
        ignored: 0,
        closing: false,
    };
    tokio::spawn(demux.run(ended, shutdown));
}

/// The demultiplexer's state: who the known peers are, and what a new session needs.
struct Demux {
    socket: Arc<UdpSocket>,
    settings: Arc<Settings>,
    inbound: mpsc::Sender<Inbound>,
    peers: HashMap<SocketAddr, Peer>,
    handshakes: Arc<Semaphore>,
    /// Where each session task reports its end.
    ended_tx: mpsc::UnboundedSender<(SocketAddr, u64)>,
    next_session: u64,
    /// Datagrams from unknown peers that were not a ClientHello.
    ignored: u64,
    /// Shutdown was signalled: no new sessions.
    closing: bool,
}

impl Demux {
    async fn run(mut self, mut ended: mpsc::UnboundedReceiver<(SocketAddr, u64)>, mut shutdown: watch::Receiver<bool>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let inbound = self.inbound.clone();
        loop {
            let (len, peer) = tokio::select! {
                () = inbound.closed() => break,
                changed = shutdown.changed(), if !self.closing => {
                    self.closing = changed.is_err() || *shutdown.borrow();
                    continue;
                }
                Some((peer, session)) = ended.recv() => {
                    if self.peers.get(&peer).is_some_and(|p| p.session == session) {
                        self.peers.remove(&peer);
                    }
                    continue;
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok(received) => received,
                    Err(error) => {
                        debug!(%error, "DTLS socket receive failed.");
                        continue;
                    }
                },
            };
            self.datagram(peer, buf.get(..len).unwrap_or_default());
        }
        debug!("DTLS listener stopped.");
    }

    /// Hands a datagram to its peer's session, or starts a session for a new peer's
    /// ClientHello.
    fn datagram(&mut self, peer: SocketAddr, datagram: &[u8]) {
        // A ClientHello on an established session: the device lost its state (a reboot with
        // the same address and port) and starts over; the old session ends (RFC 6347 §4.2.8).
        if self.peers.get(&peer).is_some_and(|p| p.established.load(Ordering::Relaxed))
            && ClientHello::parse(datagram).is_some()
        {
            debug!(%peer, "New ClientHello on an established DTLS session; starting over.");
            self.peers.remove(&peer);
        }
        if let Some(known) = self.peers.get(&peer) {
            match known.datagrams.try_send(datagram.to_vec()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.settings.metrics.dropped(DropReason::DtlsSessionQueueFull);
                    debug!(%peer, "DTLS session queue full; datagram dropped.");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.peers.remove(&peer);
                }
            }
            return;
        }
        // A new peer must open with a ClientHello; anything else leaves no state behind.
        let Some(hello) = ClientHello::parse(datagram) else {
            self.settings.metrics.dropped(DropReason::DtlsNotClientHello);
            self.ignored += 1;
            if self.ignored.is_power_of_two() {
                debug!(%peer, ignored = self.ignored, "Ignored a datagram that is not a DTLS ClientHello.");
            }
            return;
        };
        self.accept(peer, &hello, datagram);
    }

    /// Starts a session task for a new peer, within the session and handshake limits.
    fn accept(&mut self, peer: SocketAddr, hello: &ClientHello, datagram: &[u8]) {
        let settings = &self.settings;
        if self.closing {
            debug!(%peer, "Shutting down; ClientHello dropped.");
            return;
        }
        if self.peers.len() >= settings.max_sessions {
            settings.metrics.dropped(DropReason::DtlsSessionLimit);
            debug!(%peer, max = settings.max_sessions, "DTLS session limit reached; ClientHello dropped.");
            return;
        }
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            settings.metrics.dropped(DropReason::DtlsHandshakeLimit);
            debug!(%peer, max = settings.max_handshakes, "Too many DTLS handshakes in progress; ClientHello dropped.");
            return;
        };
        let Some(config) = settings.config_for(hello) else { return };
        let (datagrams, incoming) = mpsc::channel(PEER_QUEUE);
        let _ = datagrams.try_send(datagram.to_vec());
        self.next_session += 1;
        let established = Arc::new(AtomicBool::new(false));
        self.peers.insert(peer, Peer { session: self.next_session, datagrams, established: established.clone() });
        let conn = PeerConn {
            socket: self.socket.clone(),
            peer,
            incoming: Mutex::new(incoming),
            detached: AtomicBool::new(false),
            received: AtomicUsize::new(0),
        };
        let session = Session {
            peer,
            id: self.next_session,
            settings: settings.clone(),
            inbound: self.inbound.clone(),
            established,
        };
        let ended = self.ended_tx.clone();
        tokio::spawn(async move {
            session.run(conn, config, permit).await;
            let _ = ended.send((peer, session.id));
        });
    }
}

/// Counts an established session out when it ends, however it ends.
struct SessionCount<'a>(&'a crate::telemetry::Metrics);

impl Drop for SessionCount<'_> {
    fn drop(&mut self) {
        self.0.dtls_session(-1);
    }
}

/// One peer's session. It ends when the peer closes it or goes idle, or when the driver stops
/// (after its drain, so the answers of a shutdown still go out).
struct Session {
    peer: SocketAddr,
    id: u64,
    settings: Arc<Settings>,
    inbound: mpsc::Sender<Inbound>,
    established: Arc<AtomicBool>,
}

impl Session {
    async fn run(&self, conn: PeerConn, config: webrtc_dtls::config::Config, permit: OwnedSemaphorePermit) {
        let psk = config.psk.is_some();
        let Some(dtls) = self.handshake(conn, config).await else { return };
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
            peer = %self.peer,
            psk_identity = identity.psk_identity.as_deref().unwrap_or(""),
            cert_subject = identity.cert_subject.as_deref().unwrap_or(""),
            "DTLS session established."
        );
        let (out_tx, out) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
        let open = Inbound::Open { peer: self.peer, session: self.id, identity: Arc::new(identity), out: out_tx };
        if self.inbound.send(open).await.is_ok() {
            self.serve(&dtls, out).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), dtls.close()).await;
        let _ = self.inbound.send(Inbound::Closed { peer: self.peer, session: self.id }).await;
    }

    /// The handshake, within `handshake_timeout`; a peer that does not answer the
    /// HelloVerifyRequest within [`ANSWER_WITHIN`] gives up its slot earlier.
    async fn handshake(&self, conn: PeerConn, mut config: webrtc_dtls::config::Config) -> Option<DTLSConn> {
        let peer = self.peer;
        // The PSK identity the client offered, to name it if the handshake fails (never the key).
        let offered: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        if let Some(psk) = config.psk.take() {
            let seen = offered.clone();
            config.psk = Some(Arc::new(move |identity: &[u8]| {
                if let Ok(mut seen) = seen.lock() {
                    *seen = Some(String::from_utf8_lossy(identity).into_owned());
                }
                psk(identity)
            }));
        }
        let conn = Arc::new(conn);
        let handshake = DTLSConn::new(conn.clone(), config, false, None);
        tokio::pin!(handshake);
        let started = Instant::now();
        let deadline = started + self.settings.handshake_timeout;
        let mut silent_check = Some(started + ANSWER_WITHIN.min(self.settings.handshake_timeout));
        loop {
            let check = silent_check.unwrap_or(deadline);
            tokio::select! {
                result = &mut handshake => match result {
                    Ok(dtls) => return Some(dtls),
                    Err(error) => {
                        self.settings.metrics.handshake(Handshake::Failed);
                        let identity = offered.lock().ok().and_then(|seen| seen.clone());
                        match identity {
                            // After the client's Finished failed to verify, or it sent an alert
                            // once it had our keys: the two sides derived different keys.
                            Some(identity) => info!(
                                %peer,
                                psk_identity = %identity,
                                %error,
                                "DTLS handshake failed after the client offered a PSK identity: most likely the device's key does not match the one for that identity in dtls.psk_file (an unknown identity is logged as such before this)."
                            ),
                            None => info!(%peer, %error, "DTLS handshake failed."),
                        }
                        return None;
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
                    return None;
                }
            }
        }
    }

    /// Moves datagrams both ways until the peer ends the session, it goes idle, or the driver
    /// stops (`out` closes).
    async fn serve(&self, dtls: &DTLSConn, mut out: mpsc::Receiver<Vec<u8>>) {
        let peer = self.peer;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut idle_at = Instant::now() + self.settings.idle_timeout;
        loop {
            tokio::select! {
                read = dtls.read(&mut buf, None) => match read {
                    Ok(n) => {
                        idle_at = Instant::now() + self.settings.idle_timeout;
                        let datagram = buf.get(..n).unwrap_or_default().to_vec();
                        if self.inbound.send(Inbound::Datagram { peer, datagram }).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        debug!(%peer, %error, "DTLS session ended by the peer.");
                        return;
                    }
                },
                bytes = out.recv() => {
                    let Some(bytes) = bytes else { return };
                    idle_at = Instant::now() + self.settings.idle_timeout;
                    if let Err(error) = dtls.write(&bytes, None).await {
                        warn!(%peer, %error, "DTLS send failed.");
                    }
                }
                () = tokio::time::sleep_until(idle_at) => {
                    debug!(%peer, "DTLS session idle; closed.");
                    return;
                }
            }
        }
    }
}
