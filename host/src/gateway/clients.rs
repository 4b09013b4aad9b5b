//! The devices the gateway has served, by client id, for operators (`GET /clients`): where
//! each is, since when, how many requests and errors, and its latest refusals with their
//! diagnostics — the answer to "is device X here, and why was it refused".
//!
//! A client is known from its first request whose principal has a client id (the rules decided
//! who it is) until it has been quiet for [`IDLE`] with no observer and no session; a refusal
//! before authentication is kept only for a client already known under the client id the
//! request claims (a spoofer cannot fill the table). The table holds at most [`MAX_CLIENTS`]; a
//! client beyond is served as usual, only not listed. Ordered by client id, so a page of
//! `/clients` (a prefix, a cursor) costs its own size, not the table's.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use sluice_sdk::Identity;

use crate::telemetry::Transport;

/// Clients listed at most.
pub const MAX_CLIENTS: usize = 1_000_000;
/// A client with no observer and no session is forgotten after this long without a request.
pub const IDLE: Duration = Duration::from_secs(600);
/// Refusals kept per client (the newest).
pub const REFUSALS: usize = 16;

/// One refused request.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// When (Unix ms).
    pub at_ms: u64,
    /// `GET`, `PUT`…
    pub method: &'static str,
    /// The path, `ps/x`.
    pub path: String,
    /// The CoAP code, `4.03`.
    pub code: String,
    /// The diagnostic payload sent with it.
    pub diagnostic: String,
}

/// What is known of one client. Kept small — a gateway may list a million: text boxed, no
/// refusal ring until the first refusal, wall-clock milliseconds only.
#[derive(Debug, Clone)]
pub struct Client {
    /// The user name its principal carries (empty: none).
    pub user: Box<str>,
    /// Where its last request came from.
    pub address: SocketAddr,
    /// Its last request's transport.
    pub transport: Transport,
    /// Its Observe relations now.
    pub observers: u32,
    /// The identity its DTLS handshake proved (`psk:ID`, `x509:CN`).
    pub identity: Option<Box<str>>,
    /// Its first request since it was listed (Unix ms).
    pub since_ms: u64,
    /// Its last request (Unix ms).
    pub last_seen_ms: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered 4.xx or 5.xx.
    pub errors: u64,
    /// Boxed: 8 bytes in every client, the ring's 32 only in those ever refused.
    #[allow(clippy::box_collection)]
    refusals: Option<Box<VecDeque<Refusal>>>,
}

impl Client {
    fn new(now_ms: u64, address: SocketAddr, transport: Transport) -> Client {
        Client {
            user: Box::from(""),
            address,
            transport,
            observers: 0,
            identity: None,
            since_ms: now_ms,
            last_seen_ms: now_ms,
            requests: 0,
            errors: 0,
            refusals: None,
        }
    }

    /// The latest refusals, oldest first.
    pub fn refusals(&self) -> &[Refusal] {
        match &self.refusals {
            Some(ring) => ring.as_slices().0,
            None => &[],
        }
    }

    fn refused(&mut self, refusal: Refusal) {
        self.errors += 1;
        let ring = self.refusals.get_or_insert_with(|| Box::new(VecDeque::with_capacity(REFUSALS)));
        if ring.len() == REFUSALS {
            ring.pop_front();
        }
        ring.push_back(refusal);
        ring.make_contiguous();
    }
}

/// One answered request, as the table records it.
pub struct Seen<'a> {
    /// When (Unix ms).
    pub now: u64,
    /// The principal's user name.
    pub user: &'a str,
    /// The device's address.
    pub address: SocketAddr,
    /// Its transport.
    pub transport: Transport,
    /// What DTLS proved.
    pub identity: Option<&'a Identity>,
    /// The refusal, when the answer was 4.xx/5.xx.
    pub refusal: Option<Refusal>,
}

/// The client table.
#[derive(Debug, Default)]
pub struct Clients {
    by_id: BTreeMap<Arc<str>, Client>,
    /// Clients not listed because the table was full.
    pub unlisted: u64,
}

/// `psk:ID` or `x509:CN` (or the fingerprint), for the listing.
fn identity_label(identity: &Identity) -> Option<String> {
    if let Some(psk) = &identity.psk_identity {
        return Some(format!("psk:{psk}"));
    }
    identity
        .cert_subject
        .as_ref()
        .map(|cn| format!("x509:{cn}"))
        .or_else(|| identity.cert_fingerprint.as_ref().map(|f| format!("x509:sha256:{f}")))
}

impl Clients {
    /// The entry of `client_id`, made when missing and the table has room.
    fn entry(
        &mut self,
        client_id: &str,
        now_ms: u64,
        address: SocketAddr,
        transport: Transport,
    ) -> Option<&mut Client> {
        if !self.by_id.contains_key(client_id) {
            if self.by_id.len() >= MAX_CLIENTS {
                self.unlisted += 1;
                return None;
            }
            self.by_id.insert(Arc::from(client_id), Client::new(now_ms, address, transport));
        }
        self.by_id.get_mut(client_id)
    }

    /// Records an answered request of the authenticated client `client_id`.
    pub fn record(&mut self, client_id: &str, seen: Seen<'_>) {
        let Some(client) = self.entry(client_id, seen.now, seen.address, seen.transport) else { return };
        if *client.user != *seen.user {
            client.user = Box::from(seen.user);
        }
        client.address = seen.address;
        client.transport = seen.transport;
        let identity = seen.identity.and_then(identity_label);
        if client.identity.as_deref() != identity.as_deref() {
            client.identity = identity.map(String::into_boxed_str);
        }
        client.last_seen_ms = seen.now;
        client.requests += 1;
        if let Some(refusal) = seen.refusal {
            client.refused(refusal);
        }
    }

    /// Records a refusal before authentication under the client id the request claims, if that
    /// client is known.
    pub fn record_claimed(&mut self, client_id: &str, refusal: Refusal) {
        if let Some(client) = self.by_id.get_mut(client_id) {
            client.requests += 1;
            client.refused(refusal);
        }
    }

    /// An Observe relation of `client_id` was established (before its request is recorded:
    /// the entry is made here when it is the client's first request).
    pub fn observer_added(&mut self, client_id: &str) {
        if client_id.is_empty() {
            return;
        }
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        let now_ms = super::Moment::now().unix_ms;
        if let Some(client) = self.entry(client_id, now_ms, nowhere, Transport::Udp) {
            client.observers += 1;
        }
    }

    /// An Observe relation of `client_id` ended.
    pub fn observer_removed(&mut self, client_id: &str) {
        if let Some(client) = self.by_id.get_mut(client_id) {
            client.observers = client.observers.saturating_sub(1);
        }
    }

    /// One client.
    pub fn get(&self, client_id: &str) -> Option<&Client> {
        self.by_id.get(client_id)
    }

    /// Forgets a client (an operator ended it).
    pub fn remove(&mut self, client_id: &str) -> Option<Client> {
        self.by_id.remove(client_id)
    }

    /// Clients listed.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when none is listed.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Up to `limit` clients whose id starts with `prefix`, after the id `after`, that `keep`
    /// accepts; and whether more follow.
    pub fn page<'a>(
        &'a self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&str, &Client) -> bool,
    ) -> (Vec<(&'a str, &'a Client)>, bool) {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        let range = self.by_id.range::<str, _>((start, Bound::Unbounded));
        for (id, client) in range.take_while(|(id, _)| id.starts_with(prefix)) {
            if !keep(id, client) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push((&**id, client));
        }
        (out, false)
    }

    /// Forgets the clients quiet for [`IDLE`] (at `now_ms`) that have no observer and for
    /// which `in_session` is false.
    pub fn expire(&mut self, now_ms: u64, mut in_session: impl FnMut(&str) -> bool) {
        let idle = u64::try_from(IDLE.as_millis()).unwrap_or(u64::MAX);
        self.by_id.retain(|id, c| now_ms.saturating_sub(c.last_seen_ms) < idle || c.observers > 0 || in_session(id));
    }
}

/// The client id a request names in its query (`clientid=` or `c=`, the default URL model's),
/// for refusals that come before the rules said who the device is.
pub fn claimed_client_id(query: &[String]) -> Option<&str> {
    query.iter().find_map(|q| q.strip_prefix("clientid=").or_else(|| q.strip_prefix("c="))).filter(|c| !c.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seen(refused: bool) -> Seen<'static> {
        Seen {
            now: 1_000,
            user: "tom",
            address: "127.0.0.1:5000".parse().unwrap(),
            transport: Transport::Udp,
            identity: None,
            refusal: refused.then(|| Refusal {
                at_ms: 1_000,
                method: "PUT",
                path: "ps/x".into(),
                code: "4.03".into(),
                diagnostic: "no".into(),
            }),
        }
    }

    #[test]
    fn clients_are_counted_paged_by_prefix_and_cursor_and_keep_their_last_refusals() {
        let mut clients = Clients::default();
        for id in ["dev-1", "dev-2", "dev-3", "watcher"] {
            clients.record(id, seen(false));
        }
        for _ in 0..20 {
            clients.record("dev-2", seen(true));
        }
        let dev2 = clients.get("dev-2").unwrap();
        assert_eq!((dev2.requests, dev2.errors, dev2.refusals().len()), (21, 20, REFUSALS));
        let (page, more) = clients.page("dev", None, 2, |_, _| true);
        assert_eq!(page.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ["dev-1", "dev-2"]);
        assert!(more);
        let (page, more) = clients.page("dev", Some("dev-2"), 2, |_, _| true);
        assert_eq!(page.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ["dev-3"]);
        assert!(!more);
        let (page, _) = clients.page("", None, 10, |_, c| c.errors > 0);
        assert_eq!(page.len(), 1);
        // A refusal claimed for an unknown client id is not listed.
        let refusal = seen(true).refusal.unwrap();
        clients.record_claimed("nobody", refusal.clone());
        assert!(clients.get("nobody").is_none());
        clients.record_claimed("watcher", refusal);
        assert_eq!(clients.get("watcher").unwrap().errors, 1);
        // Quiet clients go unless in use.
        clients.observer_added("dev-3");
        clients.expire(1_000 + 600_000, |id| id == "watcher");
        assert_eq!(clients.len(), 2);
        clients.observer_removed("dev-3");
        clients.expire(1_000 + 600_000, |_| false);
        assert!(clients.is_empty());
        assert_eq!(claimed_client_id(&["a=1".into(), "clientid=x".into()]), Some("x"));
        assert_eq!(claimed_client_id(&["c=".into()]), None);
    }
}
