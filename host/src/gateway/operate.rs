//! What operators see of and do to devices (the admin API's `/clients`): pages of the client
//! table with each client's observers and session, one client's observers and refusals, ending
//! a client, following its requests.

use std::time::Instant;

use serde::Serialize;
use sluice_sdk::Code;

use super::clients::Client;
use super::{Gateway, Relation};
use crate::telemetry::Transport;

/// The diagnostic of the last notification a kicked observer gets.
const KICKED: &str = "ended by an operator";

/// Which clients a page lists.
#[derive(Debug, Clone, Default)]
pub struct ClientQuery {
    /// Client ids starting with this.
    pub prefix: String,
    /// Only this user's.
    pub user: Option<String>,
    /// Only over this transport.
    pub transport: Option<Transport>,
    /// After this client id (the previous page's last).
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// A client's connection-mode session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// When it was opened (Unix ms).
    pub opened_ms: u64,
    /// When it was last used (Unix ms).
    pub last_seen_ms: u64,
}

/// One client in a page.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    /// Its client id.
    pub client_id: String,
    /// Its user name (empty: none).
    pub user: String,
    /// Where its last request came from.
    pub address: String,
    /// `udp` or `dtls`.
    pub transport: &'static str,
    /// What its DTLS handshake proved (`psk:ID`, `x509:CN`).
    pub identity: Option<String>,
    /// Its first request since it was listed (Unix ms).
    pub connected_since_ms: u64,
    /// Its last request (Unix ms).
    pub last_seen_ms: u64,
    /// Its Observe relations.
    pub observers: usize,
    /// Its connection-mode session, if open.
    pub session: Option<SessionView>,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered 4.xx/5.xx.
    pub errors: u64,
}

/// A page of clients.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The clients, by client id.
    pub clients: Vec<ClientSummary>,
    /// The `after` of the next page, when there is one.
    pub next: Option<String>,
    /// Clients listed in all.
    pub total: usize,
}

/// One Observe relation of a client.
#[derive(Debug, Clone, Serialize)]
pub struct ObserverView {
    /// The MQTT filter it follows.
    pub filter: String,
    /// Seconds since it was established.
    pub age_s: f64,
    /// Whether its registration was Confirmable.
    pub confirmable: bool,
}

/// A refusal, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalView {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The method.
    pub method: &'static str,
    /// The path.
    pub path: String,
    /// The code, `4.03`.
    pub code: String,
    /// The diagnostic sent.
    pub diagnostic: String,
}

/// One client with its observers and refusals.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDetail {
    /// What a page shows.
    #[serde(flatten)]
    pub summary: ClientSummary,
    /// Its Observe relations.
    pub observer_list: Vec<ObserverView>,
    /// Its latest refusals, oldest first.
    pub refusals: Vec<RefusalView>,
}

/// What ending a client did.
#[derive(Debug, Clone, Serialize)]
pub struct Kicked {
    /// The client id.
    pub client_id: String,
    /// Observe relations ended (each device got a last 4.04 notification).
    pub observers_ended: usize,
    /// Whether a connection-mode session was closed.
    pub session_closed: bool,
}

impl Gateway {
    fn summary(&self, state: &super::State, id: &str, client: &Client, now: (u64, Instant)) -> ClientSummary {
        let session = state.sessions.info(id, now.1).map(|(opened_ms, idle)| SessionView {
            opened_ms,
            last_seen_ms: now.0.saturating_sub(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)),
        });
        ClientSummary {
            client_id: id.to_string(),
            user: client.user.to_string(),
            address: client.address.to_string(),
            transport: client.transport.label(),
            identity: client.identity.as_deref().map(str::to_string),
            connected_since_ms: client.since_ms,
            last_seen_ms: client.last_seen_ms,
            observers: client.observers as usize,
            session,
            requests: client.requests,
            errors: client.errors,
        }
    }

    /// A page of the client table.
    pub fn clients_page(&self, query: &ClientQuery) -> Page {
        let now = super::Moment::now();
        let state = self.state();
        let keep = |_: &str, c: &Client| {
            query.user.as_ref().is_none_or(|u| *c.user == **u) && query.transport.is_none_or(|t| c.transport == t)
        };
        let (page, more) = state.clients.page(&query.prefix, query.after.as_deref(), query.limit, keep);
        let clients: Vec<ClientSummary> =
            page.iter().map(|(id, c)| self.summary(&state, id, c, (now.unix_ms, now.at))).collect();
        let next = more.then(|| clients.last().map(|c| c.client_id.clone())).flatten();
        Page { clients, next, total: state.clients.len() }
    }

    /// One client, with its observers and refusals.
    pub fn client_detail(&self, client_id: &str) -> Option<ClientDetail> {
        let now = super::Moment::now();
        let state = self.state();
        let client = state.clients.get(client_id)?;
        let summary = self.summary(&state, client_id, client, (now.unix_ms, now.at));
        let observer_list = state
            .registry
            .of_client(client_id)
            .into_iter()
            .map(|(_, o)| ObserverView {
                filter: o.filter.to_string(),
                age_s: f64::from(super::registry::uptime().saturating_sub(o.since)),
                confirmable: o.confirmable,
            })
            .collect();
        let refusals = client
            .refusals()
            .iter()
            .map(|r| RefusalView {
                at_ms: r.at_ms,
                method: r.method,
                path: r.path.clone(),
                code: r.code.clone(),
                diagnostic: r.diagnostic.clone(),
            })
            .collect();
        Some(ClientDetail { summary, observer_list, refusals })
    }

    /// Ends a client: each of its observers gets a last 4.04 notification and is removed, its
    /// connection-mode session is closed (its token answers 4.01 afterwards). `None` when the
    /// gateway knows no such client. Ending is not banning: the rules still decide whether the
    /// device may come back.
    pub fn kick(&self, client_id: &str) -> Option<Kicked> {
        let now = Instant::now();
        let ended: Vec<(Relation, super::Observer)> = {
            let mut state = self.state();
            let known = state.clients.remove(client_id).is_some();
            let ids: Vec<Relation> = state.registry.of_client(client_id).into_iter().map(|(id, _)| id).collect();
            if !known && ids.is_empty() && state.sessions.info(client_id, now).is_none() {
                return None;
            }
            let mut ended = Vec::new();
            for id in ids {
                if let Some(observer) = state.registry.remove(id) {
                    state.registry.release(&observer.filter, now);
                    ended.push((id, observer));
                }
            }
            ended
        };
        for (id, observer) in &ended {
            observer.link.end(id.id, Code::NOT_FOUND.0, KICKED);
        }
        let session_closed = self.close_session(client_id);
        tracing::info!(client_id, observers = ended.len(), session_closed, "Client ended by an operator.");
        Some(Kicked { client_id: client_id.to_string(), observers_ended: ended.len(), session_closed })
    }

    /// Follows the requests of `client_id` (see [`super::Tracers`]).
    pub fn follow(&self, client_id: &str) -> tokio::sync::mpsc::Receiver<serde_json::Value> {
        self.tracers.follow(client_id)
    }

    /// Clients listed, open sessions.
    pub fn client_counts(&self) -> (usize, usize) {
        let state = self.state();
        (state.clients.len(), state.sessions.len())
    }

    /// Forgets quiet clients without observers or session.
    pub(super) fn expire_clients(&self) {
        let now = Instant::now();
        let mut state = self.state();
        let super::State { clients, sessions, .. } = &mut *state;
        clients.expire(super::Moment::now().unix_ms, |id| sessions.info(id, now).is_some());
    }
}

/// The transport of a `transport=` query value.
pub fn transport_of(text: &str) -> Option<Transport> {
    match text {
        "udp" => Some(Transport::Udp),
        "dtls" => Some(Transport::Dtls),
        _ => None,
    }
}
