//! A service for the drivers' own tests: it hands every request (with its link) to the test.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::link::{Link, RequestTask, Service};
use crate::coap::{GoneReason, IncomingRequest, ObserverId, Response};

/// What the drivers handed the service.
pub(crate) enum Seen {
    /// A request; with `hold`, `release` answers it from a waiting task.
    Request { request: IncomingRequest, link: Link, release: Option<oneshot::Sender<Response>> },
    /// A relation ended.
    Gone(ObserverId, GoneReason),
}

/// Forwards what it is handed; with `hold`, each request waits (counting against the
/// driver's request queue) until the test releases it.
pub(crate) struct Forward {
    seen: mpsc::UnboundedSender<Seen>,
    hold: bool,
}

impl Forward {
    pub(crate) fn new(hold: bool) -> (Forward, mpsc::UnboundedReceiver<Seen>) {
        let (seen, rx) = mpsc::unbounded_channel();
        (Forward { seen, hold }, rx)
    }
}

impl Service for Forward {
    fn request(&self, request: IncomingRequest, link: &Link) -> Option<RequestTask> {
        let id = request.id;
        if !self.hold {
            let _ = self.seen.send(Seen::Request { request, link: link.clone(), release: None });
            return None;
        }
        let (release, answer) = oneshot::channel();
        let _ = self.seen.send(Seen::Request { request, link: link.clone(), release: Some(release) });
        let link = link.clone();
        let task = async move {
            if let Ok(response) = answer.await {
                link.respond(id, response);
            }
        };
        Some(boxed(task))
    }

    fn observer_gone(&self, _link: &Link, id: ObserverId, reason: GoneReason) {
        let _ = self.seen.send(Seen::Gone(id, reason));
    }
}

fn boxed(task: impl Future<Output = ()> + Send + 'static) -> RequestTask {
    Box::pin(task)
}
