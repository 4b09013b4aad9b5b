//! The DTLS driver: one task owns the CoAP [`Endpoint`] of the DTLS port, like the UDP driver,
//! but its datagrams come from and go to session tasks (decrypted), and each request carries
//! the identity its session proved. Every id it hands out carries [`DTLS_TAG`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::coap::{Endpoint, EndpointConfig, Event, ObserverId, RequestId};
use crate::transport::DTLS_TAG;
use crate::transport::udp::{Command, Handle};

/// Datagrams (or commands) handled per wake-up before other work gets a turn.
const BATCH: usize = 64;

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
        endpoint: Endpoint::new(config),
        sessions: HashMap::new(),
        inbound,
        commands,
        events,
        backlog: VecDeque::new(),
    };
    (Handle::new(tx), tokio::spawn(driver.run(shutdown)))
}

fn untag_request(id: RequestId) -> RequestId {
    RequestId(id.0 & !DTLS_TAG)
}

fn untag_observer(id: ObserverId) -> ObserverId {
    ObserverId(id.0 & !DTLS_TAG)
}

fn tag_observer(id: ObserverId) -> ObserverId {
    ObserverId(id.0 | DTLS_TAG)
}

enum Wake {
    Inbound(Option<Inbound>),
    Command(Option<Command>),
    Timer,
    Room(Option<mpsc::OwnedPermit<Event>>),
}

struct Driver {
    endpoint: Endpoint,
    sessions: HashMap<SocketAddr, Session>,
    inbound: mpsc::Receiver<Inbound>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    /// Relation-gone events that found the channel full, oldest first.
    backlog: VecDeque<Event>,
}

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut commands_open = true;
        let mut inbound_open = true;
        while !*shutdown.borrow() {
            let deadline = self.endpoint.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                inbound = self.inbound.recv(), if inbound_open => Wake::Inbound(inbound),
                command = self.commands.recv(), if commands_open => Wake::Command(command),
                () = sleep => Wake::Timer,
                permit = self.events.clone().reserve_owned(), if !self.backlog.is_empty() => Wake::Room(permit.ok()),
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
                Wake::Command(Some(command)) => {
                    self.apply(command);
                    for _ in 1..BATCH {
                        let Ok(command) = self.commands.try_recv() else { break };
                        self.apply(command);
                    }
                }
                Wake::Command(None) => commands_open = false,
                Wake::Timer => self.endpoint.handle_timeout(Instant::now()),
                Wake::Room(permit) => {
                    if let (Some(permit), Some(event)) = (permit, self.backlog.pop_front()) {
                        permit.send(event);
                    }
                }
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
            Inbound::Datagram { peer, datagram } => self.endpoint.handle_datagram(peer, &datagram, Instant::now()),
            Inbound::Closed { peer, session } => {
                if self.sessions.get(&peer).is_some_and(|s| s.id == session) {
                    self.sessions.remove(&peer);
                }
            }
        }
    }

    fn apply(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Respond(id, response) => {
                self.endpoint.respond(untag_request(id), response, now);
            }
            Command::RespondObserve(id, response, reply) => {
                let observer = self.endpoint.respond(untag_request(id), response, now);
                if reply.send(observer.map(tag_observer)).is_err()
                    && let Some(id) = observer
                {
                    self.endpoint.cancel_observer(id);
                }
            }
            Command::Notify(id, notification) => {
                self.endpoint.notify(untag_observer(id), notification, now);
            }
            Command::Cancel(id) => self.endpoint.cancel_observer(untag_observer(id)),
            Command::Stats(reply) => {
                let _ = reply.send(self.endpoint.stats().clone());
            }
        }
    }

    /// Forwards events and hands datagrams to their sessions until the endpoint has nothing
    /// more. A datagram for a peer with no session (or a full queue) is lost, as over UDP.
    fn flush(&mut self) {
        loop {
            while let Some(event) = self.endpoint.poll_event() {
                self.forward(event);
            }
            let Some(transmit) = self.endpoint.poll_transmit() else { break };
            let sent = self.sessions.get(&transmit.peer).is_some_and(|s| s.out.try_send(transmit.bytes).is_ok());
            if !sent {
                self.endpoint.record_send_error();
                debug!(peer = %transmit.peer, "No DTLS session to send to; datagram dropped.");
            }
        }
    }

    fn forward(&mut self, event: Event) {
        use mpsc::error::TrySendError;
        match event {
            Event::Request(mut request) => {
                let id = request.id;
                request.id = RequestId(id.0 | DTLS_TAG);
                request.identity = self.sessions.get(&request.peer).map(|s| s.identity.clone());
                let sent = if self.backlog.is_empty() {
                    self.events.try_send(Event::Request(request))
                } else {
                    Err(TrySendError::Full(Event::Request(request)))
                };
                if sent.is_err() {
                    debug!(request = id.0, "Event channel full or closed; answering 5.03.");
                    self.endpoint.respond_busy(id, Instant::now());
                }
            }
            Event::ObserverGone { id, reason } => {
                let gone = Event::ObserverGone { id: tag_observer(id), reason };
                if !self.backlog.is_empty() {
                    self.backlog.push_back(gone);
                } else if let Err(TrySendError::Full(gone)) = self.events.try_send(gone) {
                    self.backlog.push_back(gone);
                }
            }
        }
    }
}
