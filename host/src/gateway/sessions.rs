//! EMQX 5 connection mode: sessions opened by `POST /mqtt/connection`, each with a token that
//! later requests present. Sessions live in the gateway (not in rules, so that they survive
//! rule reloads) and end after `sessions.timeout` without a request, or on `DELETE`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_sdk::Principal;

/// One open session.
struct Session {
    token: String,
    principal: Principal,
    last_seen: Instant,
}

/// Why a session could not be used or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No session for the client id, an expired one, or a different token.
    #[error("unknown or expired session: connect again with POST /mqtt/connection")]
    Unknown,
    /// The table is full.
    #[error("too many sessions: retry later")]
    Full,
    /// The client id has a live session of another user, which a login must not end.
    #[error(
        "this client id has a live session of another user: use your own client id, or wait until that session ends"
    )]
    InUse,
}

/// The session table.
pub struct Sessions {
    by_client: HashMap<String, Session>,
    timeout: Duration,
    max: usize,
}

impl Sessions {
    /// An empty table.
    pub fn new(timeout: Duration, max: usize) -> Sessions {
        Sessions { by_client: HashMap::new(), timeout, max }
    }

    /// Opens (or takes over) the session of `principal.client_id` and returns its new token:
    /// 128 random bits in hex from the thread-local CSPRNG, so that tokens cannot be guessed.
    /// A device that reconnects after a reboot replaces its old session and the old token
    /// stops working; but only the same user may do that: a live session of another username
    /// (or of an anonymous device, for a user) is not taken over ([`SessionError::InUse`]).
    pub fn open(&mut self, principal: Principal, now: Instant) -> Result<String, SessionError> {
        self.expire(now);
        match self.by_client.get(&principal.client_id) {
            Some(live) if live.principal.username != principal.username => return Err(SessionError::InUse),
            Some(_) => {}
            None if self.by_client.len() >= self.max => return Err(SessionError::Full),
            None => {}
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        self.by_client.insert(principal.client_id.clone(), Session { token: token.clone(), principal, last_seen: now });
        Ok(token)
    }

    /// The principal of a live session whose token matches, refreshing it.
    pub fn check(&mut self, client_id: &str, token: &str, now: Instant) -> Result<Principal, SessionError> {
        let timeout = self.timeout;
        let session = self.by_client.get_mut(client_id).ok_or(SessionError::Unknown)?;
        if now.duration_since(session.last_seen) > timeout {
            self.by_client.remove(client_id);
            return Err(SessionError::Unknown);
        }
        if !constant_time_eq(session.token.as_bytes(), token.as_bytes()) {
            return Err(SessionError::Unknown);
        }
        session.last_seen = now;
        Ok(session.principal.clone())
    }

    /// Closes a session; true if it existed.
    pub fn close(&mut self, client_id: &str) -> bool {
        self.by_client.remove(client_id).is_some()
    }

    /// Drops sessions idle for longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.by_client.retain(|_, s| now.duration_since(s.last_seen) <= timeout);
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_accepts_its_token_and_refuses_others() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let now = Instant::now();
        let token = s.open(Principal::new("dev1"), now).unwrap();
        assert_eq!(token.len(), 32);
        assert_eq!(s.check("dev1", &token, now).unwrap().client_id, "dev1");
        assert_eq!(s.check("dev1", "0000", now), Err(SessionError::Unknown));
        assert_eq!(s.check("dev2", &token, now), Err(SessionError::Unknown));
    }

    #[test]
    fn reconnecting_replaces_the_old_token() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let now = Instant::now();
        let old = s.open(Principal::new("dev1"), now).unwrap();
        let new = s.open(Principal::new("dev1"), now).unwrap();
        assert_ne!(old, new);
        assert!(s.check("dev1", &old, now).is_err());
        assert!(s.check("dev1", &new, now).is_ok());
    }

    #[test]
    fn idle_sessions_expire_and_requests_keep_them_alive() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let t0 = Instant::now();
        let token = s.open(Principal::new("dev1"), t0).unwrap();
        assert!(s.check("dev1", &token, t0 + Duration::from_secs(80)).is_ok());
        assert!(s.check("dev1", &token, t0 + Duration::from_secs(160)).is_ok());
        assert!(s.check("dev1", &token, t0 + Duration::from_secs(300)).is_err());
        assert!(s.is_empty());
    }

    #[test]
    fn another_user_cannot_take_a_live_session_over() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let t0 = Instant::now();
        let user = |name: Option<&str>| Principal { username: name.map(Into::into), ..Principal::new("dev1") };
        let tom = s.open(user(Some("tom")), t0).unwrap();
        assert_eq!(s.open(user(Some("ann")), t0), Err(SessionError::InUse));
        assert_eq!(s.open(user(None), t0), Err(SessionError::InUse));
        assert!(s.check("dev1", &tom, t0).is_ok(), "tom's token still works");
        // Once tom's session has ended, the client id is free.
        let later = t0 + Duration::from_secs(100);
        assert!(s.open(user(Some("ann")), later).is_ok());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut s = Sessions::new(Duration::from_secs(90), 1);
        let now = Instant::now();
        s.open(Principal::new("a"), now).unwrap();
        assert_eq!(s.open(Principal::new("b"), now), Err(SessionError::Full));
        assert!(s.open(Principal::new("a"), now).is_ok());
        assert!(s.close("a"));
        assert!(!s.close("a"));
    }
}
