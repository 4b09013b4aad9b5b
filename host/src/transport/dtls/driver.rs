//! The DTLS driver: one task owns the CoAP [`Endpoint`] of the DTLS port and runs the same
//! loop as the UDP driver ([`Core::run`]), but its wire is the session tasks: datagrams arrive
//! decrypted from them and go back to them to be encrypted, and each request carries the
//! identity its session proved.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::coap::{Endpoint, EndpointConfig};
use crate::shutdown::Shutdown;
use crate::telemetry::Transport;
use crate::transport::core::{BATCH, Core, Serving, Wire};
use crate::transport::link::Link;

/// What session tasks tell the driver.
#[derive(Debug)]
pub(super) enum Inbound {
    /// A handshake completed: the session's identity and where its datagrams go.
    Open { peer: SocketAddr, session: u64, identity: Arc<sluice_sdk::Identity>, out: mpsc::Sender<Vec<u8>> },
    /// A decrypted datagram.
    Datagram { peer: SocketAddr, datagram: Vec<u8> },
    /// A session ended.
    Closed { peer: SocketAddr, session: u64 },
}

struct Session {
    id: u64,
    identity: Arc<sluice_sdk::Identity>,
    out: mpsc::Sender<Vec<u8>>,
}

/// Spawns the driver; returns its link and task.
pub(super) fn spawn(
    config: EndpointConfig,
    inbound: mpsc::Receiver<Inbound>,
    serving: Serving,
    shutdown: Shutdown,
) -> (Link, JoinHandle<()>) {
    let (link, commands) = Link::channel(Transport::Dtls);
    let core = Core::new(Endpoint::new(config, Instant::now()), serving, link.clone());
    let wire = Sessions { sessions: HashMap::new(), inbound, next: None };
    (link, tokio::spawn(core.run(wire, commands, shutdown)))
}

/// The DTLS wire: the established sessions and what their tasks send.
struct Sessions {
    sessions: HashMap<SocketAddr, Session>,
    inbound: mpsc::Receiver<Inbound>,
    /// What [`Wire::ready`] received, handled first by [`Wire::receive`].
    next: Option<Inbound>,
}

impl Sessions {
    fn received(&mut self, inbound: Inbound, endpoint: &mut Endpoint) {
        match inbound {
            Inbound::Open { peer, session, identity, out } => {
                self.sessions.insert(peer, Session { id: session, identity, out });
            }
            Inbound::Datagram { peer, datagram } => endpoint.handle_datagram(peer, &datagram, Instant::now()),
            Inbound::Closed { peer, session } => {
                if self.sessions.get(&peer).is_some_and(|s| s.id == session) {
                    self.sessions.remove(&peer);
                }
            }
        }
    }
}

impl Wire for Sessions {
    async fn ready(&mut self) -> bool {
        if self.next.is_none() {
            self.next = self.inbound.recv().await;
        }
        self.next.is_some()
    }

    fn receive(&mut self, endpoint: &mut Endpoint) {
        if let Some(first) = self.next.take() {
            self.received(first, endpoint);
        }
        for _ in 1..BATCH {
            let Ok(next) = self.inbound.try_recv() else { break };
            self.received(next, endpoint);
        }
    }

    fn identity(&self, peer: SocketAddr) -> Option<Arc<sluice_sdk::Identity>> {
        self.sessions.get(&peer).map(|s| s.identity.clone())
    }

    /// Hands datagrams to their sessions. A datagram for a peer with no session (or a full
    /// queue) is lost, as over UDP.
    async fn send(&mut self, endpoint: &mut Endpoint) -> bool {
        let mut any = false;
        for _ in 0..BATCH {
            let Some(transmit) = endpoint.poll_transmit() else { break };
            any = true;
            let sent = self.sessions.get(&transmit.peer).is_some_and(|s| s.out.try_send(transmit.bytes).is_ok());
            if !sent {
                endpoint.record_send_error();
                debug!(peer = %transmit.peer, "No DTLS session to send to; datagram dropped.");
            }
        }
        any
    }
}
