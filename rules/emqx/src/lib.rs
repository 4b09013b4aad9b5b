//! # sluice-rule-emqx: EMQX's CoAP gateway URL model as an ordinary Sluice rule
//!
//! The default rule (`builtin:emqx`). Devices written for EMQX's CoAP gateway work unchanged:
//!
//! | request | action |
//! |---|---|
//! | PUT `/mqtt/{topic}` | publish (`q`, `r`, `expiry` override QoS, retain, expiry) |
//! | GET `/mqtt/{filter}` Observe=0 / 1 | subscribe (wildcards allowed) / unsubscribe |
//! | GET `/mqtt/…` without Observe | keep-alive: 2.05, empty |
//! | POST, DELETE `/mqtt/…` | 4.05 |
//! | PUT or POST `/ps/{topic}` | set the topic's value: a retained publish expiring after `expiry`, else the request's Max-Age, else `default_max_age`; with `r=false` a plain publish |
//! | GET `/ps/{topic}` (Observe=0 / 1) | read the value (observe it / stop) |
//! | DELETE `/ps/{topic}` | clear the value |
//! | POST / PUT / DELETE `/mqtt/connection` | EMQX 5 connection mode: connect / heartbeat / close |
//!
//! Any other path is left to the next rule. `ps` topics may not contain `+` or `#` (4.00).
//! Because `/mqtt/connection` is the connection resource, the MQTT topic `connection` cannot be
//! published to in mqtt mode (as in EMQX).
//!
//! Query keys, short or long: `c`/`clientid`, `u`/`username`, `p`/`password`, `t`/`token`,
//! `q`/`qos` (0–2), `r`/`retain` (`true`/`false`/`1`/`0`), `expiry` (seconds). A value may
//! contain `=`; an empty value counts as absent.
//!
//! ## Authentication
//! - A client id (`c`) is required (4.00 with the fix otherwise).
//! - No `u`: let in as anonymous (principal: the client id, no username) when `anonymous` is
//!   true, else 4.01.
//! - `u` names a configured user: `p` must match its password (else 4.01 "bad username or
//!   password", never echoing the password), and if the user has a `clientid`, `c` must equal it.
//! - `u` names no configured user: 4.01, or anonymous when `anonymous` is true. A known user with
//!   a wrong password is always 4.01.
//! - Connection mode: POST `/mqtt/connection` logs in as above. PUT/DELETE on it, and any other
//!   request carrying `t`/`token`, answer [`Auth::Session`] so that the gateway checks the token.
//! - `clientid_from_identity`: when DTLS proved an identity (PSK identity, else certificate
//!   subject), it becomes client id and username; query credentials are ignored.
//!
//! ## Authorization
//! A principal's lists are its user's (looked up by username) or, with no username, the
//! `anonymous_*` ones. An absent list allows everything; a list allows a publish when a pattern
//! matches the topic and a subscribe when a pattern covers the whole filter ([`filter_covers`]).
//! `${clientid}` and `${username}` are replaced per principal; a value that is empty, missing or
//! contains `/`, `+`, `#` or NUL (or would start a `$` topic) makes that pattern match nothing, so
//! a crafted client id can never widen a pattern. A principal whose username is not a configured
//! user (a DTLS identity with no user entry, or another rule's principal) gets
//! [`Authz::Continue`]: the next rule, or the chain's default, decides.
//!
//! The principals this rule lets in carry the attribute `emqx_login`: `user` (a password was
//! checked) or `anonymous`. A connection-mode session keeps its principal, so after a reload
//! that removes the user (or turns `anonymous` off) such a principal is denied everything
//! instead of falling through to the chain's default.
//!
//! ## Config (`config:` of the rule; unknown keys are refused, naming the nearest known key)
//! ```yaml
//! anonymous: false               # default false
//! default_max_age: 60            # seconds a ps value lives by default
//! clientid_from_identity: false  # DTLS identity as client id and username
//! anonymous_publish: ["public/${clientid}/#"]   # absent: everything
//! anonymous_subscribe: none                     # none: nothing
//! users:
//!   - username: tom
//!     password_hash: "sha256$<salt hex>$<hex sha256(salt ++ password)>"   # see hash_password
//!     # password: plain-text   # instead of password_hash, for examples only
//!     clientid: dev1           # optional: tom may only connect as dev1
//!     publish: ["devices/${clientid}/#"]
//!     subscribe: ["devices/${clientid}/#", "broadcast/+"]
//! ```
//! An empty YAML list (`publish: []`) cannot be told from an absent one once the host flattens
//! the config, so it means "everything"; write the scalar `none` to allow nothing.
//!
//! Modules: `config` checks the keys, `auth` and `route` implement the hooks, `acl` the
//! patterns, `topic` MQTT matching, `password` the hashes. Nothing here touches the OS, so the
//! crate also builds for `wasm32-unknown-unknown`: `sluice rule build rules/emqx` gives
//! `emqx.wasm`, whose answers equal the builtin's on every vector of `rule.yaml`
//! (`host/tests/conformance.rs`).

mod acl;
mod auth;
mod config;
mod password;
mod query;
mod route;
mod suggest;
mod topic;

use sluice_sdk::{Access, Auth, Authz, Config, Principal, Request, Route, Rule};

pub use password::{hash_password, verify_password};
pub use route::DISCOVERY;
pub use topic::{filter_covers, topic_matches};

/// The rule's name: the host links it as `builtin:emqx`.
pub const NAME: &str = "emqx";

/// The rule, built from checked settings.
struct Emqx {
    settings: config::Settings,
}

impl Rule for Emqx {
    fn authenticate(&self, req: &Request) -> Auth {
        auth::authenticate(&self.settings, req)
    }

    fn route(&self, req: &Request, _who: &Principal) -> Route {
        route::route(&self.settings, req)
    }

    fn authorize(&self, who: &Principal, access: Access, topic: &str) -> Authz {
        let login = who.attribute(auth::LOGIN);
        let acl = match &who.username {
            // Let in as anonymous while `anonymous` was on; it is off now (a reload): nothing.
            None if login == Some(auth::ANONYMOUS) && !self.settings.anonymous => return Authz::Deny,
            None => &self.settings.anonymous_acl,
            Some(name) => match self.settings.users.get(name) {
                Some(user) => &user.acl,
                // A user this rule let in, removed since (a reload) while a session of theirs
                // lives on: nothing, rather than whatever the chain's default allows.
                None if login == Some(auth::USER) => return Authz::Deny,
                None => return Authz::Continue,
            },
        };
        if acl.permits(who, access, topic) { Authz::Allow } else { Authz::Deny }
    }
}

/// Builds the rule from its config, or refuses with a reason that names the key and the fix.
pub fn init(config: &Config) -> Result<Box<dyn Rule>, String> {
    Ok(Box::new(Emqx { settings: config::parse(config)? }))
}

sluice_sdk::export_rule!(init, [authenticate, route, authorize]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_accepts_an_empty_config_and_refuses_unknown_keys() {
        assert!(init(&Config::default()).is_ok());
        let bad = Config::from_entries(vec![("users.0.passwd".into(), "x".into())]);
        assert_eq!(init(&bad).err().as_deref(), Some("users.0.passwd: unknown key; did you mean password_hash?"));
    }

    #[test]
    fn a_principal_whose_login_was_revoked_gets_nothing() {
        let with = |entries: &[(&str, &str)]| {
            init(&Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let login = |username: Option<&str>, how: &str| Principal {
            client_id: "d".into(),
            username: username.map(Into::into),
            attributes: vec![(auth::LOGIN.into(), how.into())],
        };
        let tom = login(Some("tom"), auth::USER);
        let anon = login(None, auth::ANONYMOUS);
        let before = with(&[("anonymous", "true"), ("users.0.username", "tom"), ("users.0.password", "x")]);
        assert_eq!(before.authorize(&tom, Access::Publish, "a"), Authz::Allow);
        assert_eq!(before.authorize(&anon, Access::Publish, "a"), Authz::Allow);
        // The config after a reload: tom removed, anonymous off.
        let after = with(&[("users.0.username", "ann"), ("users.0.password", "y")]);
        assert_eq!(after.authorize(&tom, Access::Publish, "a"), Authz::Deny);
        assert_eq!(after.authorize(&tom, Access::Subscribe, "#"), Authz::Deny);
        assert_eq!(after.authorize(&anon, Access::Publish, "a"), Authz::Deny);
        // Principals from elsewhere (a DTLS identity, another rule) are still someone else's.
        assert_eq!(after.authorize(&Principal::new("d"), Access::Publish, "a"), Authz::Allow);
        let other = Principal { username: Some("psk-dev".into()), ..Principal::new("d") };
        assert_eq!(after.authorize(&other, Access::Publish, "a"), Authz::Continue);
    }

    #[test]
    fn other_hooks_pass() {
        let rule = init(&Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let who = Principal::new("d");
        assert_eq!(rule.uplink(&sluice_sdk::Uplink::default(), &who), sluice_sdk::Transform::Continue);
        assert_eq!(rule.downlink(&sluice_sdk::Downlink::default(), &who), sluice_sdk::Transform::Continue);
    }
}
