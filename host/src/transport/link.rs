//! What a request carries back to its transport: the [`Link`] to the driver that received it,
//! and the [`Service`] the drivers hand requests to.
//!
//! Each driver (UDP, DTLS) is bound with the service that answers its requests, and hands every
//! complete request to it together with the driver's own [`Link`]. The service answers through
//! that link, and keeps a copy in each Observe relation it registers, so that notifications go
//! out through the transport the device came in on. No id says which transport a request came
//! from; the link does.
//!
//! # One way back
//!
//! The driver calls [`Service::request`] on its own task. Most requests are decided without
//! waiting (a QoS 0 publish, a refusal, a rule's own answer); what a request does wait for (a
//! QoS 1 publish's PUBACK) is returned as a [`RequestTask`], which the driver polls among its
//! other waiting requests. Every answer, whoever gives it (the service during the call, a
//! waiting request, the MQTT dispatcher's notifications), is a [`Command`] on the driver's
//! channel; the driver takes what the channel holds right after each call, so an answer given
//! during the call leaves in the same turn as the datagram that asked for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::coap::{GoneReason, IncomingRequest, Notification, ObserverId, RequestId, Response, Stats};
use crate::telemetry::Transport;

/// What a service asks of a driver.
#[derive(Debug)]
pub enum Command {
    /// Answer a request.
    Respond(RequestId, Response),
    /// Answer a request and report the Observe relation it registered, if any.
    RespondObserve(RequestId, Response, oneshot::Sender<Option<ObserverId>>),
    /// Notify an observer.
    Notify(ObserverId, Notification),
    /// End an observation without telling the service.
    Cancel(ObserverId),
    /// End an observation with a last notification of this code and diagnostic.
    End(ObserverId, u8, &'static str),
    /// Report a copy of the endpoint's counters.
    Stats(oneshot::Sender<Stats>),
}

/// The rest of a request's handling once it has to wait (for a PUBACK, a SUBACK, a value).
pub type RequestTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the transports' drivers hand their requests and relation-ends to (the gateway).
///
/// Both methods run on the driver's task and must not block: do what needs no waiting and
/// return the rest as a [`RequestTask`].
pub trait Service: Send + Sync + 'static {
    /// A complete request arrived through `link`; answer it with [`Link::respond`] (or
    /// [`Link::respond_observe`]) exactly once, now or from the returned task.
    fn request(&self, request: IncomingRequest, link: &Link) -> Option<RequestTask>;

    /// The CoAP layer of `link` ended an Observe relation (RST, timeout, deregistration,
    /// replacement).
    fn observer_gone(&self, link: &Link, id: ObserverId, reason: GoneReason);

    /// The driver is about to hand over a batch of requests (those of one batch of
    /// datagrams); work for them may wait until [`Service::batch_end`] (the gateway wakes the
    /// MQTT client once for the batch's publishes).
    fn batch_begin(&self) {}

    /// The batch begun with [`Service::batch_begin`] is handed over.
    fn batch_end(&self) {}
}

/// Names one driver for as long as the process runs (observer ids are per driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(u64);

/// The way back to one transport's driver; cheap to clone (one reference count). Commands sent
/// after the driver stopped are dropped.
#[derive(Clone, Debug)]
pub struct Link(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    id: LinkId,
    transport: Transport,
}

impl Link {
    /// A link over a driver's command channel, and the receiving end for the driver.
    pub(crate) fn channel(transport: Transport) -> (Link, mpsc::UnboundedReceiver<Command>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (commands, rx) = mpsc::unbounded_channel();
        let id = LinkId(NEXT.fetch_add(1, Ordering::Relaxed));
        (Link(Arc::new(Inner { commands, id, transport })), rx)
    }

    /// Which driver this is.
    pub fn id(&self) -> LinkId {
        self.0.id
    }

    /// Which transport the driver serves.
    pub fn transport(&self) -> Transport {
        self.0.transport
    }

    /// Sends a command to the driver (dropped if it has stopped).
    fn send(&self, command: Command) {
        if self.0.commands.send(command).is_err() {
            debug!("Dropped a command: the CoAP driver has stopped.");
        }
    }

    /// Answers request `id`; never blocks and never loses the response while the driver runs.
    pub fn respond(&self, id: RequestId, response: Response) {
        self.send(Command::Respond(id, response));
    }

    /// Sends a notification to an observer (ignored if the relation is gone).
    pub fn notify(&self, id: ObserverId, notification: Notification) {
        self.send(Command::Notify(id, notification));
    }

    /// Ends an observation from the gateway side; no [`Service::observer_gone`] follows.
    pub fn cancel(&self, id: ObserverId) {
        self.send(Command::Cancel(id));
    }

    /// Ends an observation from the gateway side and tells the device (a last notification
    /// with `code` and `diagnostic`); no [`Service::observer_gone`] follows.
    pub fn end(&self, id: ObserverId, code: u8, diagnostic: &'static str) {
        self.send(Command::End(id, code, diagnostic));
    }

    /// Answers request `id` with `response.observe` set and returns the registered relation
    /// (`None` if none was registered or the driver stopped).
    pub async fn respond_observe(&self, id: RequestId, response: Response) -> Option<ObserverId> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RespondObserve(id, Response { observe: true, ..response }, tx));
        rx.await.ok().flatten()
    }

    /// A copy of the endpoint's counters (`None` if the driver stopped).
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx));
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_reaches_its_own_driver() {
        let (udp, mut udp_rx) = Link::channel(Transport::Udp);
        let (dtls, mut dtls_rx) = Link::channel(Transport::Dtls);
        assert_ne!(udp.id(), dtls.id());
        assert_eq!(dtls.transport(), Transport::Dtls);
        udp.respond(RequestId(1), Response::default());
        dtls.respond(RequestId(2), Response::default());
        assert!(matches!(udp_rx.try_recv(), Ok(Command::Respond(RequestId(1), _))));
        assert!(matches!(dtls_rx.try_recv(), Ok(Command::Respond(RequestId(2), _))));
        assert!(udp_rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_stopped_driver_answers_none() {
        let (link, rx) = Link::channel(Transport::Udp);
        drop(rx);
        link.respond(RequestId(1), Response::default());
        assert!(link.stats().await.is_none());
        assert_eq!(link.respond_observe(RequestId(2), Response::default()).await, None);
    }
}
