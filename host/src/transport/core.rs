//! What both drivers do with their [`Endpoint`] besides moving datagrams: hand requests to
//! the gateway's inline handler (or its event channel), poll the requests that wait, apply the
//! gateway's [`Command`]s and forward the endpoint's other [`Event`]s, never waiting on the
//! gateway.
//!
//! A request that finds too many requests waiting (or the gateway's queue full) is answered
//! 5.03 (Max-Age 1) at once; a relation-gone notice waits in a local backlog until there is
//! room (the driver's `select!` asks for a permit while [`Core::backlogged`]). Ids are tagged
//! with the transport's bit (none for UDP, [`super::DTLS_TAG`] for DTLS) on the way out and
//! untagged on the way in, so the two endpoints' ids never collide in the gateway.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::{self, OwnedPermit, error::TrySendError};
use tracing::{debug, error};

use super::udp::{Command, Inline, RequestTask, capture};
use crate::coap::{Endpoint, Event, IncomingRequest, ObserverId, RequestId, Response};

/// A driver's endpoint, its way to the gateway, and its id tag.
pub(crate) struct Core {
    /// The sans-IO CoAP endpoint the driver feeds.
    pub(crate) endpoint: Endpoint,
    events: mpsc::Sender<Event>,
    /// Relation-gone events that found the channel full, oldest first.
    backlog: VecDeque<Event>,
    tag: u64,
    /// The gateway's handler, once it installed one: requests go to it instead of `events`.
    inline: Option<Inline>,
    /// The commands captured during an inline call (kept for its allocation).
    captured: Vec<Command>,
    /// Requests that wait, polled by the driver ([`Core::poll_waiting`]).
    waiting: FuturesUnordered<RequestTask>,
}

/// Datagrams, commands or finished requests handled per turn before a driver does other work.
pub(crate) const BATCH: usize = 64;

/// Room in the gateway's channel, when `events` is given (see [`Core::room_wanted`]).
pub(crate) async fn reserve(events: Option<mpsc::Sender<Event>>) -> Option<OwnedPermit<Event>> {
    match events {
        Some(events) => events.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

impl Core {
    /// A core whose ids carry `tag`.
    pub(crate) fn new(endpoint: Endpoint, events: mpsc::Sender<Event>, tag: u64) -> Core {
        Core {
            endpoint,
            events,
            backlog: VecDeque::new(),
            tag,
            inline: None,
            captured: Vec::new(),
            waiting: FuturesUnordered::new(),
        }
    }

    /// Whether events wait for room in the gateway's channel.
    pub(crate) fn backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// The gateway's channel when events wait for room in it (for [`reserve`]).
    pub(crate) fn room_wanted(&self) -> Option<mpsc::Sender<Event>> {
        self.backlogged().then(|| self.events.clone())
    }

    /// Room was reserved: the oldest backlogged event goes.
    pub(crate) fn room(&mut self, permit: Option<OwnedPermit<Event>>) {
        if let (Some(permit), Some(event)) = (permit, self.backlog.pop_front()) {
            permit.send(event);
        }
    }

    fn untag_request(&self, id: RequestId) -> RequestId {
        RequestId(id.0 & !self.tag)
    }

    fn untag_observer(&self, id: ObserverId) -> ObserverId {
        ObserverId(id.0 & !self.tag)
    }

    fn tag_observer(&self, id: ObserverId) -> ObserverId {
        ObserverId(id.0 | self.tag)
    }

    /// Carries out one command of the gateway.
    pub(crate) fn apply(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Respond(id, response) => {
                self.endpoint.respond(self.untag_request(id), response, now);
            }
            Command::RespondObserve(id, response, reply) => {
                let observer = self.endpoint.respond(self.untag_request(id), response, now);
                if reply.send(observer.map(|o| self.tag_observer(o))).is_err()
                    && let Some(id) = observer
                {
                    // Nobody will ever notify this relation.
                    self.endpoint.cancel_observer(id);
                }
            }
            Command::Notify(id, notification) => {
                self.endpoint.notify(self.untag_observer(id), notification, now);
            }
            Command::Cancel(id) => self.endpoint.cancel_observer(self.untag_observer(id)),
            Command::Stats(reply) => {
                let _ = reply.send(self.endpoint.stats().clone());
            }
            Command::Inline(inline) => self.inline = Some(inline),
        }
    }

    /// Carries out `first` and then whatever else the channel holds, up to a batch.
    pub(crate) fn apply_batch(&mut self, first: Command, commands: &mut mpsc::UnboundedReceiver<Command>) {
        self.apply(first);
        for _ in 1..BATCH {
            let Ok(command) = commands.try_recv() else { break };
            self.apply(command);
        }
    }

    /// Hands a request to the inline handler, applies the commands it issued meanwhile and
    /// keeps what is left of it among the waiting requests. `false`: too many wait already.
    /// A handler that panics has its request answered 5.00 (if it was not answered yet) and
    /// the driver serves on.
    fn dispatch(&mut self, inline: &Inline, request: IncomingRequest) -> bool {
        if self.waiting.len() >= inline.limit {
            return false;
        }
        let (id, peer) = (request.id, request.peer);
        let handler = &inline.handler;
        let buffer = std::mem::take(&mut self.captured);
        let started = Instant::now();
        let (result, captured) = capture(inline.driver, buffer, || handler(request));
        // Time spent here is time every other device waits: slow requests (a rule running to
        // its deadline) cost their device more of its rate.
        self.endpoint.charge(peer, started.elapsed());
        self.apply_captured(captured);
        match result {
            Ok(Some(task)) => self.waiting.push(task),
            Ok(None) => {}
            Err(_) => {
                error!(request = id.0, "A request handler panicked; answering 5.00.");
                let failure = Response { code: sluice_sdk::Code::INTERNAL_SERVER_ERROR.0, ..Response::default() };
                self.endpoint.respond(self.untag_request(id), failure, Instant::now());
            }
        }
        true
    }

    fn apply_captured(&mut self, mut captured: Vec<Command>) {
        for command in captured.drain(..) {
            self.apply(command);
        }
        self.captured = captured;
    }

    /// Polls the waiting requests (with the driver's waker): `Ready` when any of them finished
    /// or issued commands (applied here), so that the driver sends what they produced.
    pub(crate) fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(driver) = self.inline.as_ref().map(|inline| inline.driver) else { return Poll::Pending };
        let mut progressed = false;
        for _ in 0..BATCH {
            let buffer = std::mem::take(&mut self.captured);
            let waiting = &mut self.waiting;
            let (polled, captured) = capture(driver, buffer, || waiting.poll_next_unpin(cx));
            progressed |= !captured.is_empty();
            self.apply_captured(captured);
            match polled {
                Ok(Poll::Ready(Some(()))) => progressed = true,
                Ok(Poll::Ready(None) | Poll::Pending) => break,
                // FuturesUnordered drops a future that panics while polled.
                Err(_) => {
                    error!("A waiting request panicked; it gets no answer from the gateway.");
                    progressed = true;
                }
            }
        }
        if progressed { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Forwards every event the endpoint has; `identity` gives the identity its transport
    /// proved for a peer (none over plain UDP).
    pub(crate) fn forward_events(&mut self, identity: impl Fn(SocketAddr) -> Option<Arc<sluice_sdk::Identity>>) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request(mut request) => {
                    let id = request.id;
                    request.id = RequestId(id.0 | self.tag);
                    request.identity = identity(request.peer);
                    // Taken out for the call (no reference count per request) and put back.
                    if let Some(inline) = self.inline.take() {
                        if !self.dispatch(&inline, request) {
                            debug!(request = id.0, "Too many requests in progress; answering 5.03.");
                            self.endpoint.respond_busy(id, Instant::now());
                        }
                        // A handler installed by a command the call issued wins.
                        self.inline.get_or_insert(inline);
                        continue;
                    }
                    let sent = if self.backlog.is_empty() {
                        self.events.try_send(Event::Request(request))
                    } else {
                        Err(TrySendError::Full(Event::Request(request)))
                    };
                    if let Err(error) = sent {
                        if matches!(error, TrySendError::Closed(_)) {
                            debug!("Event channel closed; answering 5.03.");
                        } else {
                            debug!(request = id.0, "Event channel full; answering 5.03.");
                        }
                        self.endpoint.respond_busy(id, Instant::now());
                    }
                }
                Event::ObserverGone { id, reason } => {
                    let gone = Event::ObserverGone { id: self.tag_observer(id), reason };
                    if !self.backlog.is_empty() {
                        self.backlog.push_back(gone);
                    } else if let Err(TrySendError::Full(gone)) = self.events.try_send(gone) {
                        self.backlog.push_back(gone);
                    }
                }
            }
        }
    }
}
