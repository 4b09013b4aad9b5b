//! Requests handed to the app and not answered yet, and the empty ACKs due for the slow ones.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::RequestId;
use super::message::Block;

/// A request delivered to the app and not answered yet.
#[derive(Debug)]
pub(super) struct Pending {
    pub peer: SocketAddr,
    pub mid: u16,
    pub token: Vec<u8>,
    pub confirmable: bool,
    /// An empty ACK went out already: the answer is a separate response.
    pub acked: bool,
    pub method: u8,
    pub observe: Option<u32>,
    pub path_key: String,
    pub uri_key: String,
    /// The last Block1 block of the request, echoed in the response.
    pub block1: Option<Block>,
    /// The Block2 block the client asked for.
    pub block2: Option<Block>,
    /// No-Response option value (RFC 7967).
    pub no_response: u8,
    /// Size of the request's datagram: the measure of how large an answer to an unverified
    /// peer may be (`amplification_factor`).
    pub request_len: usize,
}

impl Pending {
    /// Whether the client asked not to get an answer with this code (RFC 7967 §2.1).
    pub(super) fn suppresses(&self, code: u8) -> bool {
        let bit = match code >> 5 {
            2 => 0x02,
            4 => 0x08,
            5 => 0x10,
            _ => 0,
        };
        self.no_response & bit != 0
    }
}

/// The requests with the app, by id, and when each CON among them is due its empty ACK.
#[derive(Debug, Default)]
pub(super) struct Unanswered {
    requests: HashMap<RequestId, Pending>,
    /// (when to send an empty ACK, request) for CON requests, in arrival order.
    separate: VecDeque<(Instant, RequestId)>,
    next_id: u64,
}

impl Unanswered {
    /// Remembers a request until it is answered; a CON still unanswered at `ack_at` is due an
    /// empty ACK then (see [`Unanswered::poll_ack`]).
    pub(super) fn insert(&mut self, pending: Pending, ack_at: Instant) -> RequestId {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        if pending.confirmable {
            self.separate.push_back((ack_at, id));
        }
        self.requests.insert(id, pending);
        id
    }

    /// Takes a request out to answer it; `None` when unknown or answered already.
    pub(super) fn take(&mut self, id: RequestId) -> Option<Pending> {
        self.requests.remove(&id)
    }

    /// Forgets a request that will not be answered (its Message-ID was forgotten).
    pub(super) fn forget(&mut self, id: RequestId) -> bool {
        self.requests.remove(&id).is_some()
    }

    /// Notes that a request's CON was acknowledged with an empty ACK already.
    pub(super) fn acked(&mut self, id: RequestId) {
        if let Some(pending) = self.requests.get_mut(&id) {
            pending.acked = true;
        }
    }

    /// The next CON request whose empty ACK is due at `now`, as (peer, Message-ID); it counts
    /// as acknowledged from now on.
    pub(super) fn poll_ack(&mut self, now: Instant) -> Option<(SocketAddr, u16)> {
        while let Some(&(at, id)) = self.separate.front() {
            if at > now {
                return None;
            }
            self.separate.pop_front();
            let Some(pending) = self.requests.get_mut(&id) else { continue };
            if pending.acked {
                continue;
            }
            pending.acked = true;
            return Some((pending.peer, pending.mid));
        }
        None
    }

    /// When the next empty ACK may be due (possibly for a request answered since).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.separate.front().map(|&(at, _)| at)
    }

    pub(super) fn len(&self) -> usize {
        self.requests.len()
    }

    pub(super) fn ids(&self) -> Vec<RequestId> {
        self.requests.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pending(mid: u16, confirmable: bool) -> Pending {
        Pending {
            peer: SocketAddr::from(([192, 0, 2, 1], 5683)),
            mid,
            token: Vec::new(),
            confirmable,
            acked: false,
            method: 1,
            observe: None,
            path_key: String::new(),
            uri_key: String::new(),
            block1: None,
            block2: None,
            no_response: 0,
            request_len: 0,
        }
    }

    #[test]
    fn a_con_still_unanswered_is_due_its_empty_ack_once() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_secs(1);
        let mut unanswered = Unanswered::default();
        let slow = unanswered.insert(pending(1, true), at);
        let answered = unanswered.insert(pending(2, true), at);
        unanswered.insert(pending(3, false), at);
        assert_eq!(unanswered.next_deadline(), Some(at));
        assert_eq!(unanswered.poll_ack(t0), None, "not yet");
        assert!(unanswered.take(answered).is_some());
        assert_eq!(unanswered.poll_ack(at).map(|(_, mid)| mid), Some(1));
        assert_eq!(unanswered.poll_ack(at), None, "answered, and a NON gets none");
        assert!(unanswered.take(slow).is_some_and(|p| p.acked));
        assert_eq!(unanswered.len(), 1);
    }

    #[test]
    fn a_con_acknowledged_early_is_not_acknowledged_again() {
        let t0 = Instant::now();
        let mut unanswered = Unanswered::default();
        let id = unanswered.insert(pending(1, true), t0);
        unanswered.acked(id);
        assert_eq!(unanswered.poll_ack(t0), None);
        assert!(unanswered.forget(id));
        assert!(!unanswered.forget(id));
    }

    #[test]
    fn no_response_suppresses_by_class() {
        let quiet = Pending { no_response: 0x02 | 0x10, ..pending(1, true) };
        assert!(quiet.suppresses(0x45));
        assert!(!quiet.suppresses(0x84));
        assert!(quiet.suppresses(0xa3));
    }
}
