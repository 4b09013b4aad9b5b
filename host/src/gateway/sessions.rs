//! EMQX 5 connection mode: sessions opened by `POST /mqtt/connection`, each with a token that
//! later requests present. Sessions live in the gateway (not in rules, so that they survive
//! rule reloads) and end after `sessions.timeout` without a request, or on `DELETE`.
//!
//! ## Tokens every gateway of a deployment takes
//!
//! Without `sessions.secret` a token is 128 random bits that only the gateway which issued it
//! knows: a device that moves to another gateway (its gateway died, the balancer moved it) gets
//! 4.01 there and connects again. With a secret shared by the gateways, the token *carries* the
//! session — when it was opened, the user name, the principal's attributes — and an
//! HMAC-SHA256 over that and the client id, so any gateway can check it without asking the
//! one that issued it ([`Signer`]):
//!
//! - a gateway that has not served the session takes it over (*adopts* it) if it was opened
//!   less than `sessions.lifetime` ago and nothing newer is known for the client id;
//! - a gateway that served it still closes it after `sessions.timeout` without a request and
//!   refuses its token afterwards (it remembers the client id's cut-off: [`Sessions::expire`]);
//! - connecting again and `DELETE` produce a [`Revocation`]: "tokens of this client id opened
//!   before this instant are void". The gateway publishes it retained on
//!   `{sessions.topic}/{hash of the client id}` and every gateway follows that topic
//!   ([`Sessions::revoke`]), so a replaced or closed token stops working everywhere — on a
//!   gateway that has not heard of it yet for as long as the broker takes to deliver it.
//!
//! What the rules decide per request (a user removed by a reload gets nothing) is decided on
//! every gateway from the principal in the token, as on the one that issued it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sluice_sdk::Principal;
use tracing::warn;

use crate::config::SessionsConfig;

/// One open session.
struct Session {
    token: String,
    principal: Principal,
    /// When it was opened (Unix milliseconds, the clock every gateway shares).
    opened: u64,
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

/// Now, on both clocks: the monotonic one for idle timeouts, the wall clock (shared by the
/// gateways of a deployment) for when sessions were opened.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// Monotonic time.
    pub at: Instant,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

impl Moment {
    /// The current moment.
    pub fn now() -> Moment {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Moment { at: Instant::now(), unix_ms }
    }

    /// This moment plus `d`.
    pub fn after(self, d: Duration) -> Moment {
        Moment { at: self.at + d, unix_ms: self.unix_ms + d.as_millis() as u64 }
    }
}

/// "Tokens of `client_id` opened before `not_before` are void": what a gateway tells the others
/// when a device connects again or disconnects (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// The device.
    pub client_id: String,
    /// Unix milliseconds.
    pub not_before: u64,
}

impl Revocation {
    /// The retained topic of the record under `prefix`: one per client id, named by a hash (a
    /// client id may hold `+`, `#` or `/`, which a topic level may not).
    pub fn topic(&self, prefix: &str) -> String {
        let digest = Sha256::digest(self.client_id.as_bytes());
        format!("{prefix}/{}", hex::encode(&digest[..16]))
    }

    /// The record's payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A record read from the broker (`None` for an empty, cleared one or garbage).
    pub fn from_json(payload: &[u8]) -> Option<Revocation> {
        serde_json::from_slice(payload).ok()
    }
}

/// The session table.
pub struct Sessions {
    by_client: HashMap<String, Session>,
    /// With a signer: per client id, tokens opened before this (Unix ms) are void.
    not_before: HashMap<String, u64>,
    timeout: Duration,
    max: usize,
    signer: Option<Signer>,
    lifetime: Duration,
}

impl Sessions {
    /// An empty table of tokens only this gateway takes.
    pub fn new(timeout: Duration, max: usize) -> Sessions {
        Sessions {
            by_client: HashMap::new(),
            not_before: HashMap::new(),
            timeout,
            max,
            signer: None,
            lifetime: Duration::ZERO,
        }
    }

    /// The table `sessions:` describes: signed tokens when it has a secret.
    pub fn from_config(config: &SessionsConfig) -> Sessions {
        let sessions = Sessions::new(config.timeout, config.max);
        match &config.key {
            Some(key) => sessions.signed(key.clone(), config.lifetime),
            None => sessions,
        }
    }

    /// Signs tokens with `key`; other gateways with the same key adopt them for `lifetime`.
    pub fn signed(mut self, key: Arc<[u8]>, lifetime: Duration) -> Sessions {
        self.signer = Some(Signer { key });
        self.lifetime = lifetime;
        self
    }

    /// Opens (or takes over) the session of `principal.client_id` and returns its new token,
    /// and with signed tokens the revocation of the tokens it replaces, for the other gateways.
    ///
    /// A token is 128 random bits in hex from the thread-local CSPRNG, or signed (module docs):
    /// neither can be guessed. A device that reconnects after a reboot replaces its old session
    /// and the old token stops working; but only the same user may do that: a live session of
    /// another username (or of an anonymous device, for a user) is not taken over
    /// ([`SessionError::InUse`]).
    pub fn open(&mut self, principal: Principal, now: Moment) -> Result<(String, Option<Revocation>), SessionError> {
        self.expire(now);
        match self.by_client.get(&principal.client_id) {
            Some(live) if live.principal.username != principal.username => return Err(SessionError::InUse),
            Some(_) => {}
            None if self.by_client.len() >= self.max => return Err(SessionError::Full),
            None => {}
        }
        // Never before a revocation already known, so that a login right after a logout on
        // another gateway (whose clock may be a little ahead) is not void at once.
        let opened = now.unix_ms.max(self.not_before.get(&principal.client_id).copied().unwrap_or(0));
        let signed = self.signer.as_ref().and_then(|signer| {
            let token = signer.sign(&principal, opened);
            if token.is_none() {
                warn!(
                    client_id = %principal.client_id,
                    "The principal is too long for a signed session token (user name and attributes over {MAX_CLAIMS} bytes); this session works on this gateway only. Keep the rule's attributes shorter."
                );
            }
            token
        });
        let revocation = signed.is_some().then(|| {
            self.not_before.insert(principal.client_id.clone(), opened);
            Revocation { client_id: principal.client_id.clone(), not_before: opened }
        });
        let token = signed.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
        let session = Session { token: token.clone(), principal, opened, last_seen: now.at };
        self.by_client.insert(session.principal.client_id.clone(), session);
        Ok((token, revocation))
    }

    /// The principal of a live session whose token matches, refreshing it; with signed
    /// tokens, a session opened by another gateway is adopted (module docs).
    pub fn check(&mut self, client_id: &str, token: &str, now: Moment) -> Result<Principal, SessionError> {
        if let Some(session) = self.by_client.get_mut(client_id) {
            if now.at.duration_since(session.last_seen) > self.timeout {
                self.end(client_id);
            } else if constant_time_eq(session.token.as_bytes(), token.as_bytes()) {
                session.last_seen = now.at;
                return Ok(session.principal.clone());
            }
        }
        let claims = self.signer.as_ref().and_then(|s| s.verify(client_id, token)).ok_or(SessionError::Unknown)?;
        let void_before = self.not_before.get(client_id).copied().unwrap_or(0);
        let local_newer = self.by_client.get(client_id).is_some_and(|s| s.opened > claims.opened);
        let too_old = now.unix_ms.saturating_sub(claims.opened) > self.lifetime.as_millis() as u64;
        if claims.opened < void_before || local_newer || too_old {
            return Err(SessionError::Unknown);
        }
        if !self.by_client.contains_key(client_id) && self.by_client.len() >= self.max {
            return Err(SessionError::Full);
        }
        let principal = claims.principal;
        let session =
            Session { token: token.to_owned(), principal: principal.clone(), opened: claims.opened, last_seen: now.at };
        self.by_client.insert(client_id.to_owned(), session);
        Ok(principal)
    }

    /// When the session of `client_id` was opened (Unix ms) and how long ago it was last used.
    pub fn info(&self, client_id: &str, now: Instant) -> Option<(u64, Duration)> {
        self.by_client.get(client_id).map(|s| (s.opened, now.saturating_duration_since(s.last_seen)))
    }

    /// Closes a session; with signed tokens, returns the revocation of its token (and of any
    /// older one) for the other gateways.
    pub fn close(&mut self, client_id: &str, now: Moment) -> Option<Revocation> {
        let session = self.by_client.remove(client_id);
        self.signer.as_ref()?;
        let not_before = now.unix_ms.max(session.map_or(0, |s| s.opened)) + 1;
        self.void(client_id, not_before);
        Some(Revocation { client_id: client_id.to_owned(), not_before })
    }

    /// A revocation another gateway published: ends the sessions it voids.
    pub fn revoke(&mut self, revocation: &Revocation) {
        if self.signer.is_none() {
            return;
        }
        if self.by_client.get(&revocation.client_id).is_some_and(|s| s.opened < revocation.not_before) {
            self.by_client.remove(&revocation.client_id);
        }
        self.void(&revocation.client_id, revocation.not_before);
    }

    /// Drops sessions idle for longer than the timeout (their tokens stay void here), and
    /// forgets cut-offs older than the lifetime (the tokens they void are refused as too old).
    pub fn expire(&mut self, now: Moment) {
        let timeout = self.timeout;
        let idle: Vec<String> = self
            .by_client
            .iter()
            .filter(|(_, s)| now.at.duration_since(s.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in idle {
            self.end(&client_id);
        }
        let lifetime = self.lifetime.as_millis() as u64;
        self.not_before.retain(|_, at| now.unix_ms.saturating_sub(*at) <= lifetime);
    }

    /// Removes a session that ended here; a signed token of it stays refused.
    fn end(&mut self, client_id: &str) {
        if let Some(session) = self.by_client.remove(client_id)
            && self.signer.is_some()
        {
            self.void(client_id, session.opened + 1);
        }
    }

    fn void(&mut self, client_id: &str, not_before: u64) {
        let at = self.not_before.entry(client_id.to_owned()).or_default();
        *at = (*at).max(not_before);
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

/// The most bytes of claims a token carries: with the tag, in base64, it stays within the 255
/// bytes of a CoAP Uri-Query option (`token=…`).
const MAX_CLAIMS: usize = 160;
/// Bytes of the HMAC-SHA256 kept in a token (128 bits).
const TAG: usize = 16;
/// The first byte of the claims: their layout.
const VERSION: u8 = 1;
/// Binds a tag to this use of the key.
const DOMAIN: &[u8] = b"sluice connection-mode session\0";

/// What a signed token says.
struct Claims {
    opened: u64,
    principal: Principal,
}

/// Signs and checks tokens. A token is `base64url(claims ‖ tag)`: the claims are the layout
/// version, when the session was opened (u64 Unix ms, big-endian), the user name (a length
/// byte, 255 for none, and the bytes) and the attributes (a count, then length-prefixed keys
/// and values); the tag is the first 16 bytes of HMAC-SHA256(secret, domain ‖ client id's
/// length (u16) ‖ client id ‖ claims). The client id comes with every request, so it is
/// signed but not carried.
struct Signer {
    key: Arc<[u8]>,
}

impl Signer {
    /// The keyed MAC over what a tag covers (`None` never happens: HMAC takes keys of any length).
    fn mac(&self, client_id: &str, claims: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(DOMAIN);
        mac.update(&(client_id.len() as u16).to_be_bytes());
        mac.update(client_id.as_bytes());
        mac.update(claims);
        Some(mac)
    }

    /// The token of a session, or `None` when the principal does not fit in one.
    fn sign(&self, principal: &Principal, opened: u64) -> Option<String> {
        let mut claims = vec![VERSION];
        claims.extend_from_slice(&opened.to_be_bytes());
        match &principal.username {
            None => claims.push(u8::MAX),
            Some(name) => push_field(&mut claims, name, u8::MAX - 1)?,
        }
        claims.push(u8::try_from(principal.attributes.len()).ok()?);
        for (key, value) in &principal.attributes {
            push_field(&mut claims, key, u8::MAX)?;
            push_field(&mut claims, value, u8::MAX)?;
        }
        if claims.len() > MAX_CLAIMS || principal.client_id.len() > usize::from(u16::MAX) {
            return None;
        }
        let tag = self.mac(&principal.client_id, &claims)?.finalize().into_bytes();
        claims.extend_from_slice(&tag[..TAG]);
        Some(URL_SAFE_NO_PAD.encode(claims))
    }

    /// The claims of a token signed with this key for `client_id`.
    fn verify(&self, client_id: &str, token: &str) -> Option<Claims> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (claims, tag) = bytes.split_at_checked(bytes.len().checked_sub(TAG)?)?;
        self.mac(client_id, claims)?.verify_truncated_left(tag).ok()?;
        let mut r = Reader(claims);
        if r.byte()? != VERSION {
            return None;
        }
        let opened = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let username = match r.byte()? {
            u8::MAX => None,
            len => Some(r.text(len)?),
        };
        let mut attributes = Vec::new();
        for _ in 0..r.byte()? {
            let key = r.field()?;
            attributes.push((key, r.field()?));
        }
        let principal = Principal { client_id: client_id.to_owned(), username, attributes };
        Some(Claims { opened, principal })
    }
}

/// Appends a length byte and `text`; `None` when it is longer than `max`.
fn push_field(out: &mut Vec<u8>, text: &str, max: u8) -> Option<()> {
    out.push(u8::try_from(text.len()).ok().filter(|len| *len <= max)?);
    out.extend_from_slice(text.as_bytes());
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn text(&mut self, len: u8) -> Option<String> {
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }

    fn field(&mut self) -> Option<String> {
        let len = self.byte()?;
        self.text(len)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &mut Sessions, p: Principal, now: Moment) -> String {
        s.open(p, now).unwrap().0
    }

    #[test]
    fn a_session_accepts_its_token_and_refuses_others() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let now = Moment::now();
        let token = token(&mut s, Principal::new("dev1"), now);
        assert_eq!(token.len(), 32);
        assert_eq!(s.check("dev1", &token, now).unwrap().client_id, "dev1");
        assert_eq!(s.check("dev1", "0000", now), Err(SessionError::Unknown));
        assert_eq!(s.check("dev2", &token, now), Err(SessionError::Unknown));
    }

    #[test]
    fn reconnecting_replaces_the_old_token() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let now = Moment::now();
        let old = token(&mut s, Principal::new("dev1"), now);
        let new = token(&mut s, Principal::new("dev1"), now);
        assert_ne!(old, new);
        assert!(s.check("dev1", &old, now).is_err());
        assert!(s.check("dev1", &new, now).is_ok());
    }

    #[test]
    fn idle_sessions_expire_and_requests_keep_them_alive() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let t0 = Moment::now();
        let token = token(&mut s, Principal::new("dev1"), t0);
        assert!(s.check("dev1", &token, t0.after(Duration::from_secs(80))).is_ok());
        assert!(s.check("dev1", &token, t0.after(Duration::from_secs(160))).is_ok());
        assert!(s.check("dev1", &token, t0.after(Duration::from_secs(300))).is_err());
        assert!(s.is_empty());
    }

    #[test]
    fn another_user_cannot_take_a_live_session_over() {
        let mut s = Sessions::new(Duration::from_secs(90), 10);
        let t0 = Moment::now();
        let user = |name: Option<&str>| Principal { username: name.map(Into::into), ..Principal::new("dev1") };
        let tom = token(&mut s, user(Some("tom")), t0);
        assert_eq!(s.open(user(Some("ann")), t0), Err(SessionError::InUse));
        assert_eq!(s.open(user(None), t0), Err(SessionError::InUse));
        assert!(s.check("dev1", &tom, t0).is_ok(), "tom's token still works");
        // Once tom's session has ended, the client id is free.
        assert!(s.open(user(Some("ann")), t0.after(Duration::from_secs(100))).is_ok());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut s = Sessions::new(Duration::from_secs(90), 1);
        let now = Moment::now();
        s.open(Principal::new("a"), now).unwrap();
        assert_eq!(s.open(Principal::new("b"), now), Err(SessionError::Full));
        assert!(s.open(Principal::new("a"), now).is_ok());
        assert_eq!(s.close("a", now), None, "unsigned tokens revoke nothing elsewhere");
    }

    fn signed(max: usize) -> Sessions {
        let key: Arc<[u8]> = Arc::from(&b"a shared secret of the deployment"[..]);
        Sessions::new(Duration::from_secs(90), max).signed(key, Duration::from_secs(3600))
    }

    fn tom() -> Principal {
        Principal {
            username: Some("tom".into()),
            attributes: vec![("tenant".into(), "acme".into())],
            ..Principal::new("dev1")
        }
    }

    #[test]
    fn another_gateway_with_the_secret_adopts_a_signed_session() {
        let (mut a, mut b) = (signed(10), signed(10));
        let now = Moment::now();
        let (token, revocation) = a.open(tom(), now).unwrap();
        assert!(token.len() <= 249, "fits a Uri-Query option: {}", token.len());
        assert_eq!(revocation, Some(Revocation { client_id: "dev1".into(), not_before: now.unix_ms }));
        assert_eq!(b.check("dev1", &token, now.after(Duration::from_secs(1))), Ok(tom()), "user and attributes travel");
        assert_eq!(b.len(), 1);
        // Bound to the client id and the key.
        assert_eq!(b.check("dev2", &token, now), Err(SessionError::Unknown));
        let other_key: Arc<[u8]> = Arc::from(&b"another deployment's secret"[..]);
        let mut c = Sessions::new(Duration::from_secs(90), 10).signed(other_key, Duration::from_secs(3600));
        assert_eq!(c.check("dev1", &token, now), Err(SessionError::Unknown));
        // Any change to the token breaks it.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[12] ^= 1;
        assert_eq!(signed(10).check("dev1", &URL_SAFE_NO_PAD.encode(bytes), now), Err(SessionError::Unknown));
        // Only within the lifetime.
        assert_eq!(signed(10).check("dev1", &token, now.after(Duration::from_secs(3601))), Err(SessionError::Unknown));
    }

    #[test]
    fn revocations_void_replaced_and_closed_tokens_everywhere() {
        let (mut a, mut b) = (signed(10), signed(10));
        let t0 = Moment::now();
        let (old, _) = a.open(tom(), t0).unwrap();
        assert!(b.check("dev1", &old, t0).is_ok());
        // Logging in again on gateway A: B hears of it and refuses the old token.
        let t1 = t0.after(Duration::from_millis(5));
        let (new, revocation) = a.open(tom(), t1).unwrap();
        b.revoke(&revocation.unwrap());
        assert_eq!(b.check("dev1", &old, t1), Err(SessionError::Unknown));
        assert!(b.check("dev1", &new, t1).is_ok());
        // Without hearing of it, a gateway that knows the newer session refuses the older.
        let mut c = signed(10);
        assert!(c.check("dev1", &new, t1).is_ok());
        assert_eq!(c.check("dev1", &old, t1), Err(SessionError::Unknown));
        // DELETE on B: A hears of it.
        let revocation = b.close("dev1", t1).unwrap();
        assert_eq!(b.check("dev1", &new, t1), Err(SessionError::Unknown));
        a.revoke(&revocation);
        assert_eq!(a.check("dev1", &new, t1), Err(SessionError::Unknown));
        // A login right after the logout, in the same millisecond, is not void.
        let (after, _) = a.open(tom(), t1).unwrap();
        assert!(a.check("dev1", &after, t1).is_ok());
        assert!(b.check("dev1", &after, t1).is_ok());
    }

    #[test]
    fn an_idle_signed_session_stays_closed_where_it_timed_out() {
        let mut a = signed(10);
        let t0 = Moment::now();
        let (token, _) = a.open(tom(), t0).unwrap();
        a.expire(t0.after(Duration::from_secs(100)));
        assert!(a.is_empty());
        assert_eq!(a.check("dev1", &token, t0.after(Duration::from_secs(101))), Err(SessionError::Unknown));
    }

    #[test]
    fn a_principal_too_long_for_a_token_gets_a_local_one() {
        let mut a = signed(10);
        let now = Moment::now();
        let big = Principal { attributes: vec![("k".into(), "v".repeat(200))], ..Principal::new("dev1") };
        let (token, revocation) = a.open(big, now).unwrap();
        assert_eq!((token.len(), revocation), (32, None));
        assert!(a.check("dev1", &token, now).is_ok());
        assert_eq!(signed(10).check("dev1", &token, now), Err(SessionError::Unknown));
    }

    #[test]
    fn revocation_records_round_trip() {
        let r = Revocation { client_id: "a/b+#".into(), not_before: 42 };
        assert_eq!(Revocation::from_json(&r.to_json()), Some(r.clone()));
        let topic = r.topic("sluice/sessions");
        assert!(topic.starts_with("sluice/sessions/") && !topic["sluice/sessions/".len()..].contains(['/', '+', '#']));
        assert_eq!(Revocation::from_json(b""), None);
    }
}
