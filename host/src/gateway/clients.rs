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
use std::time::{Duration, Instant};

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

/// What is known of one client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The user name its principal carries (empty: none).
    pub user: String,
    /// Where its last request came from.
    pub address: SocketAddr,
    /// Its last request's transport.
    pub transport: Transport,
    /// The identity its DTLS handshake proved (`psk:ID`, `x509:CN`).
    pub identity: Option<String>,
    /// Its first request since it was listed (Unix ms).
    pub since_ms: u64,
    /// Its last request (Unix ms).
    pub last_seen_ms: u64,
    last_seen: Instant,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered 4.xx or 5.xx.
    pub errors: u64,
    /// The latest refusals, oldest first.
    pub refusals: VecDeque<Refusal>,
}

/// One answered request, as the table records it.
pub struct Seen<'a> {
    /// When (Unix ms and monotonic).
    pub now: (u64, Instant),
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
    /// Records an answered request of the authenticated client `client_id`.
    pub fn record(&mut self, client_id: &str, seen: Seen<'_>) {
        let (now_ms, now) = seen.now;
        if !self.by_id.contains_key(client_id) && self.by_id.len() >= MAX_CLIENTS {
            self.unlisted += 1;
            return;
        }
        let client = match self.by_id.get_mut(client_id) {
            Some(client) => client,
            None => self.by_id.entry(Arc::from(client_id)).or_insert_with(|| Client {
                user: String::new(),
                address: seen.address,
                transport: seen.transport,
                identity: None,
                since_ms: now_ms,
                last_seen_ms: now_ms,
                last_seen: now,
                requests: 0,
                errors: 0,
                refusals: VecDeque::new(),
            }),
        };
        if client.user != seen.user {
            seen.user.clone_into(&mut client.user);
        }
        client.address = seen.address;
        client.transport = seen.transport;
        client.identity = seen.identity.and_then(identity_label);
        client.last_seen_ms = now_ms;
        client.last_seen = now;
        client.requests += 1;
        if let Some(refusal) = seen.refusal {
            client.errors += 1;
            push_refusal(client, refusal);
        }
    }

    /// Records a refusal before authentication under the client id the request claims, if that
    /// client is known.
    pub fn record_claimed(&mut self, client_id: &str, refusal: Refusal) {
        if let Some(client) = self.by_id.get_mut(client_id) {
            client.requests += 1;
            client.errors += 1;
            push_refusal(client, refusal);
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

    /// Forgets the clients quiet for [`IDLE`] for which `in_use` is false (no observer, no
    /// session).
    pub fn expire(&mut self, now: Instant, mut in_use: impl FnMut(&str) -> bool) {
        self.by_id.retain(|id, c| now.duration_since(c.last_seen) < IDLE || in_use(id));
    }
}

fn push_refusal(client: &mut Client, refusal: Refusal) {
    if client.refusals.len() == REFUSALS {
        client.refusals.pop_front();
    }
    client.refusals.push_back(refusal);
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
            now: (1_000, Instant::now()),
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
        assert_eq!((dev2.requests, dev2.errors, dev2.refusals.len()), (21, 20, REFUSALS));
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
        clients.expire(Instant::now() + IDLE, |id| id == "watcher");
        assert_eq!(clients.len(), 1);
        assert_eq!(claimed_client_id(&["a=1".into(), "clientid=x".into()]), Some("x"));
        assert_eq!(claimed_client_id(&["c=".into()]), None);
    }
}
