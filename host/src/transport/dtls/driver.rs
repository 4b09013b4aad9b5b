//! The DTLS driver: one task owns the CoAP [`Endpoint`] of the DTLS port, like the UDP driver,
//! but its datagrams come from and go to session tasks (decrypted), and each request carries
//! the identity its session proved. Every id it hands out carries [`DTLS_TAG`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::coap::{Endpoint, EndpointConfig, Event};
use crate::transport::DTLS_TAG;
use crate::transport::core::{BATCH, Core, reserve};
use crate::transport::udp::{Command, Handle};

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

/// Spawns the driver; returns its handle and task.
pub(super) fn spawn(
    config: EndpointConfig,
    inbound: mpsc::Receiver<Inbound>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) -> (Handle, JoinHandle<()>) {
    let (tx, commands) = mpsc::unbounded_channel();
    let driver = Driver {
        core: Core::new(Endpoint::new(config), events, DTLS_TAG),
        sessions: HashMap::new(),
        inbound,
        commands,
    };
    (Handle::new(tx), tokio::spawn(driver.run(shutdown)))
}

enum Wake {
    Inbound(Option<Inbound>),
    Command(Option<Command>),
    /// Waiting requests made progress (their commands are applied).
    Waiting,
    Timer,
    Room(Option<mpsc::OwnedPermit<Event>>),
}

struct Driver {
    core: Core,
    sessions: HashMap<SocketAddr, Session>,
    inbound: mpsc::Receiver<Inbound>,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut commands_open = true;
        let mut inbound_open = true;
        while !*shutdown.borrow() {
            let deadline = self.core.endpoint.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let room = self.core.room_wanted();
            let wake = tokio::select! {
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                inbound = self.inbound.recv(), if inbound_open => Wake::Inbound(inbound),
                command = self.commands.recv(), if commands_open => Wake::Command(command),
                () = std::future::poll_fn(|cx| self.core.poll_waiting(cx)) => Wake::Waiting,
                () = sleep => Wake::Timer,
                permit = reserve(room.clone()), if room.is_some() => Wake::Room(permit),
            };
            match wake {
                Wake::Inbound(Some(first)) => {
                    self.received(first);
                    for _ in 1..BATCH {
                        let Ok(next) = self.inbound.try_recv() else { break };
                        self.received(next);
                    }
                }
                Wake::Inbound(None) => inbound_open = false,
                Wake::Command(Some(command)) => self.core.apply_batch(command, &mut self.commands),
                Wake::Command(None) => commands_open = false,
                Wake::Waiting => {}
                Wake::Timer => self.core.endpoint.handle_timeout(Instant::now()),
                Wake::Room(permit) => self.core.room(permit),
            }
            self.flush();
        }
        info!("CoAP DTLS driver stopped.");
    }

    fn received(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Open { peer, session, identity, out } => {
                self.sessions.insert(peer, Session { id: session, identity, out });
            }
            Inbound::Datagram { peer, datagram } => self.core.endpoint.handle_datagram(peer, &datagram, Instant::now()),
            Inbound::Closed { peer, session } => {
                if self.sessions.get(&peer).is_some_and(|s| s.id == session) {
                    self.sessions.remove(&peer);
                }
            }
        }
    }

    /// Forwards events and hands datagrams to their sessions until the endpoint has nothing
    /// more. A datagram for a peer with no session (or a full queue) is lost, as over UDP.
    fn flush(&mut self) {
        loop {
            let sessions = &self.sessions;
            self.core.forward_events(|peer| sessions.get(&peer).map(|s| s.identity.clone()));
            let Some(transmit) = self.core.endpoint.poll_transmit() else { break };
            let sent = self.sessions.get(&transmit.peer).is_some_and(|s| s.out.try_send(transmit.bytes).is_ok());
            if !sent {
                self.core.endpoint.record_send_error();
                debug!(peer = %transmit.peer, "No DTLS session to send to; datagram dropped.");
            }
        }
    }
}
