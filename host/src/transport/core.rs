//! What both drivers do with their [`Endpoint`] besides moving datagrams: the one event loop
//! ([`Core::run`], generic over where datagrams come from, a [`Wire`]), handing requests and
//! relation-ends to the [`Service`] with the driver's [`Link`], polling the requests that wait,
//! applying the service's [`Command`]s, and draining on shutdown.
//!
//! A request that finds too many requests waiting is answered 5.03 (Max-Age 1) at once; the
//! driver never waits on the service.
//!
//! Shutdown drains: once signalled, the driver keeps reading, but answers new requests 5.03
//! (Max-Age: the retry hint) instead of handing them on, and keeps serving the requests in
//! progress (a QoS 1 publish waiting for its PUBACK) until none is left or the drain time is up;
//! whatever is still unanswered then gets 5.03 too. So every request a device sends while the
//! gateway stops gets an answer.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::link::{Command, Link, RequestTask, Service};
use crate::coap::{Endpoint, Event, IncomingRequest, Response};
use crate::shutdown::Shutdown;

/// Datagrams, commands or finished requests handled per turn before a driver does other work.
pub(crate) const BATCH: usize = 64;

/// Where a driver's datagrams come from and go to: a UDP socket, or DTLS sessions.
pub(crate) trait Wire: Send {
    /// Waits until datagrams can be read; `false` once the source has ended for good.
    fn ready(&mut self) -> impl Future<Output = bool> + Send;
    /// Feeds what arrived (up to about [`BATCH`] datagrams) to the endpoint.
    fn receive(&mut self, endpoint: &mut Endpoint);
    /// The identity the transport proved for `peer` (none over plain UDP).
    fn identity(&self, peer: SocketAddr) -> Option<Arc<sluice_sdk::Identity>>;
    /// Sends up to a batch of what the endpoint has; `false` when it had nothing.
    fn send(&mut self, endpoint: &mut Endpoint) -> impl Future<Output = bool> + Send;
}

/// How a driver serves: its service, how many requests may wait, how it drains.
#[derive(Clone)]
pub struct Serving {
    /// Who answers the requests (the gateway).
    pub service: Arc<dyn Service>,
    /// Requests that may wait at once; beyond, new requests are answered 5.03 (Max-Age 1).
    pub request_queue: usize,
    /// How long requests in progress may take to finish once shutdown is signalled.
    pub drain_timeout: Duration,
    /// The Max-Age (seconds) of the 5.03 answers given while draining.
    pub retry_after: u32,
}

/// A driver's endpoint and its way to the service.
pub(crate) struct Core {
    /// The sans-IO CoAP endpoint the driver feeds.
    pub(crate) endpoint: Endpoint,
    serving: Serving,
    /// This driver's link, handed to the service with each request.
    link: Link,
    /// Requests that wait, polled by the driver ([`Core::poll_waiting`]).
    waiting: FuturesUnordered<RequestTask>,
    /// Shutdown was signalled: new requests are refused.
    draining: bool,
}

/// Why the driver woke up.
enum Wake {
    Shutdown,
    Readable(bool),
    Command(Option<Command>),
    /// Waiting requests made progress (their commands are applied).
    Waiting,
    Timer,
}

impl Core {
    /// A core answering through `link` (whose commands arrive on the driver's channel).
    pub(crate) fn new(endpoint: Endpoint, serving: Serving, link: Link) -> Core {
        Core { endpoint, serving, link, waiting: FuturesUnordered::new(), draining: false }
    }

    /// The driver's loop: until shutdown has been signalled and the requests in progress are
    /// answered (or the drain time is up).
    pub(crate) async fn run<W: Wire>(
        mut self,
        mut wire: W,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut shutdown: Shutdown,
    ) {
        let transport = self.link.transport().label();
        let mut reading = true;
        let mut commands_open = true;
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some(until) = drain_until
                && (self.drained() || tokio::time::Instant::now() >= until)
            {
                break;
            }
            let timer = self.endpoint.poll_timeout().map(tokio::time::Instant::from_std);
            let timer = match (timer, drain_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                () = shutdown.signalled(), if drain_until.is_none() => Wake::Shutdown,
                ready = wire.ready(), if reading => Wake::Readable(ready),
                command = commands.recv(), if commands_open => Wake::Command(command),
                () = std::future::poll_fn(|cx| self.poll_waiting(cx)) => Wake::Waiting,
                () = sleep => Wake::Timer,
            };
            match wake {
                Wake::Shutdown => {
                    self.draining = true;
                    drain_until = Some(tokio::time::Instant::now() + self.serving.drain_timeout);
                    info!(transport, waiting = self.waiting.len(), "CoAP driver draining: new requests get 5.03.");
                }
                Wake::Readable(true) => wire.receive(&mut self.endpoint),
                Wake::Readable(false) => reading = false,
                Wake::Command(Some(command)) => self.apply_batch(command, &mut commands),
                Wake::Command(None) => commands_open = false,
                Wake::Waiting => {}
                Wake::Timer => self.endpoint.handle_timeout(Instant::now()),
            }
            self.flush(&mut wire, &mut commands).await;
        }
        self.finish(&mut wire, &mut commands).await;
        info!(transport, "CoAP driver stopped.");
    }

    /// Nothing is left to answer.
    fn drained(&self) -> bool {
        self.waiting.is_empty() && self.endpoint.unanswered() == 0
    }

    /// The drain time is over (or everything was answered): what is still unanswered gets 5.03.
    async fn finish<W: Wire>(&mut self, wire: &mut W, commands: &mut mpsc::UnboundedReceiver<Command>) {
        let abandoned = self.waiting.len();
        // Dropping a waiting publish withdraws it from the MQTT queue if it was not written yet.
        self.waiting = FuturesUnordered::new();
        let refused = self.endpoint.refuse_unanswered(&self.shutting_down(), Instant::now());
        if refused > 0 || abandoned > 0 {
            warn!(refused, "The drain time ran out; requests still in progress were answered 5.03.");
        }
        self.flush(wire, commands).await;
    }

    /// The answer while draining: 5.03, retry after Max-Age.
    fn shutting_down(&self) -> Response {
        Response {
            code: sluice_sdk::Code::SERVICE_UNAVAILABLE.0,
            max_age: Some(self.serving.retry_after),
            payload: b"the gateway is shutting down; retry after Max-Age seconds".to_vec(),
            ..Response::default()
        }
    }

    /// Hands what the endpoint produced to the service, applies the answers the service gave
    /// meanwhile, and sends, until none of them has more.
    async fn flush<W: Wire>(&mut self, wire: &mut W, commands: &mut mpsc::UnboundedReceiver<Command>) {
        loop {
            self.serving.service.batch_begin();
            self.forward_events(|peer| wire.identity(peer));
            self.serving.service.batch_end();
            while let Ok(command) = commands.try_recv() {
                self.apply(command);
            }
            if !wire.send(&mut self.endpoint).await {
                break;
            }
        }
    }

    /// Carries out one command of the service.
    fn apply(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Respond(id, response) => {
                self.endpoint.respond(id, response, now);
            }
            Command::RespondObserve(id, response, reply) => {
                let observer = self.endpoint.respond(id, response, now);
                if reply.send(observer).is_err()
                    && let Some(id) = observer
                {
                    // Nobody will ever notify this relation.
                    self.endpoint.cancel_observer(id);
                }
            }
            Command::Notify(id, notification) => {
                self.endpoint.notify(id, notification, now);
            }
            Command::Cancel(id) => self.endpoint.cancel_observer(id),
            Command::End(id, code, diagnostic) => self.endpoint.end_observer(id, code, diagnostic),
            Command::Stats(reply) => {
                let _ = reply.send(self.endpoint.stats());
            }
        }
    }

    /// Carries out `first` and then whatever else the channel holds, up to a batch.
    fn apply_batch(&mut self, first: Command, commands: &mut mpsc::UnboundedReceiver<Command>) {
        self.apply(first);
        for _ in 1..BATCH {
            let Ok(command) = commands.try_recv() else { break };
            self.apply(command);
        }
    }

    /// Hands a request to the service and keeps what is left of it among the waiting requests
    /// (its answers are on the command channel, applied by [`Core::flush`]). A service that panics has its request
    /// answered 5.00 (if it was not answered yet) and the driver serves on.
    fn dispatch(&mut self, request: IncomingRequest) {
        let (id, peer) = (request.id, request.peer);
        if self.waiting.len() >= self.serving.request_queue {
            debug!(request = id.0, "Too many requests in progress; answering 5.03.");
            self.endpoint.respond_busy(id, Instant::now());
            return;
        }
        let started = Instant::now();
        let (service, link) = (&self.serving.service, &self.link);
        let result = catch_unwind(AssertUnwindSafe(|| service.request(request, link)));
        // Time spent here is time every other device waits: slow requests (a rule running to
        // its deadline) cost their device more of its rate.
        let now = Instant::now();
        self.endpoint.charge(peer, now.saturating_duration_since(started), now);
        match result {
            Ok(Some(task)) => self.waiting.push(task),
            Ok(None) => {}
            Err(_) => {
                error!(request = id.0, "A request handler panicked; answering 5.00.");
                let failure = Response { code: sluice_sdk::Code::INTERNAL_SERVER_ERROR.0, ..Response::default() };
                self.endpoint.respond(id, failure, Instant::now());
            }
        }
    }

    /// Polls the waiting requests (with the driver's waker): `Ready` when any of them finished,
    /// so that the driver applies and sends what they produced.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut progressed = false;
        for _ in 0..BATCH {
            let waiting = &mut self.waiting;
            match catch_unwind(AssertUnwindSafe(|| waiting.poll_next_unpin(cx))) {
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

    /// Hands every event the endpoint has to the service; `identity` gives the identity the
    /// transport proved for a peer.
    fn forward_events(&mut self, identity: impl Fn(SocketAddr) -> Option<Arc<sluice_sdk::Identity>>) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request(request) if self.draining => {
                    self.endpoint.respond(request.id, self.shutting_down(), Instant::now());
                }
                Event::Request(mut request) => {
                    request.identity = identity(request.peer);
                    self.dispatch(request);
                }
                Event::ObserverGone { id, reason } => {
                    let (service, link) = (&self.serving.service, &self.link);
                    if catch_unwind(AssertUnwindSafe(|| service.observer_gone(link, id, reason))).is_err() {
                        error!(observer = id.0, "The service panicked on a relation's end.");
                    }
                }
            }
        }
    }
}
