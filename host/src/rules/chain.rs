//! The rule chain: runs each hook over the configured rules in order.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_sdk::{Access, Auth, Authz, Code, Downlink, Principal, Reject, Request, Route, Rule, Transform, Uplink};
use tracing::error;

use crate::config::{RuleConfig, flatten};

/// Why a rule could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `builtin:NAME` names no linked rule.
    #[error("{0:?} is not a builtin rule; use one of: {1}")]
    UnknownBuiltin(String, String),
    /// Packages (`.wasm` files) are not supported by this build yet.
    #[error("{0:?}: Wasm rule packages are not supported by this release; use builtin:emqx")]
    PackagesUnsupported(String),
    /// The rule refused its configuration.
    #[error("{rule}: config refused: {reason}")]
    Config {
        /// The rule.
        rule: String,
        /// The rule's own words.
        reason: String,
    },
}

/// One loaded rule.
struct Loaded {
    name: String,
    rule: Box<dyn Rule>,
    failures: AtomicU64,
}

/// The rules of the gateway, in order.
pub struct Chain {
    rules: Vec<Loaded>,
}

pub(crate) fn load_one(config: &RuleConfig) -> Result<Box<dyn Rule>, LoadError> {
    let Some(name) = config.rule.strip_prefix("builtin:") else {
        return Err(LoadError::PackagesUnsupported(config.rule.clone()));
    };
    let Some(builtin) = super::builtin(name) else {
        let names: Vec<_> = super::BUILTINS.iter().map(|b| format!("builtin:{}", b.name)).collect();
        return Err(LoadError::UnknownBuiltin(config.rule.clone(), names.join(", ")));
    };
    (builtin.init)(&flatten(&config.config)).map_err(|reason| LoadError::Config { rule: config.rule.clone(), reason })
}

impl Chain {
    /// Loads every rule of the chain, in order.
    pub fn load(configs: &[RuleConfig]) -> Result<Chain, LoadError> {
        let mut rules = Vec::with_capacity(configs.len());
        for config in configs {
            let rule = load_one(config)?;
            rules.push(Loaded { name: config.rule.clone(), rule, failures: AtomicU64::new(0) });
        }
        Ok(Chain { rules })
    }

    /// A chain of already-built rules (for tests and embedding).
    pub fn from_rules(rules: Vec<(String, Box<dyn Rule>)>) -> Chain {
        Chain {
            rules: rules.into_iter().map(|(name, rule)| Loaded { name, rule, failures: AtomicU64::new(0) }).collect(),
        }
    }

    /// Runs `f` on one rule; a panic is the rule's failure and gives `fallback`.
    fn call<T>(loaded: &Loaded, hook: &str, fallback: T, f: impl FnOnce(&dyn Rule) -> T) -> T {
        match catch_unwind(AssertUnwindSafe(|| f(loaded.rule.as_ref()))) {
            Ok(v) => v,
            Err(_) => {
                loaded.failures.fetch_add(1, Ordering::Relaxed);
                error!(rule = %loaded.name, hook, "Rule failed; applying its fail policy.");
                fallback
            }
        }
    }

    /// Who is the device? `None` when every rule passes.
    pub fn authenticate(&self, req: &Request) -> Auth {
        for r in &self.rules {
            let deny = Auth::Deny(Reject::new(Code::UNAUTHORIZED, "authentication failed (rule error)"));
            match Self::call(r, "authenticate", deny, |rule| rule.authenticate(req)) {
                Auth::Continue => continue,
                verdict => return verdict,
            }
        }
        Auth::Continue
    }

    /// Which action? 4.04 when every rule passes.
    pub fn route(&self, req: &Request, who: &Principal) -> Route {
        for r in &self.rules {
            let fail = Route::Reject(Reject::new(Code::INTERNAL_SERVER_ERROR, "rule error"));
            match Self::call(r, "route", fail, |rule| rule.route(req, who)) {
                Route::Continue => continue,
                verdict => return verdict,
            }
        }
        Route::Reject(Reject::new(Code::NOT_FOUND, format!("no resource at /{}", req.path.join("/"))))
    }

    /// May `who` do `access` on `topic`? Allowed when every rule passes.
    pub fn authorize(&self, who: &Principal, access: Access, topic: &str) -> bool {
        for r in &self.rules {
            match Self::call(r, "authorize", Authz::Deny, |rule| rule.authorize(who, access, topic)) {
                Authz::Continue => continue,
                Authz::Allow => return true,
                Authz::Deny => return false,
            }
        }
        true
    }

    /// Runs every rule's uplink in turn: each sees the previous one's payload.
    pub fn uplink(&self, mut msg: Uplink, who: &Principal) -> Result<Option<Uplink>, Reject> {
        for r in &self.rules {
            match Self::call(r, "uplink", Transform::Drop, |rule| rule.uplink(&msg, who)) {
                Transform::Continue => {}
                Transform::Replace { payload, content_format } => {
                    msg.payload = payload;
                    if content_format.is_some() {
                        msg.content_format = content_format;
                    }
                }
                Transform::Drop => return Ok(None),
                Transform::Reject(reject) => return Err(reject),
            }
        }
        Ok(Some(msg))
    }

    /// Runs every rule's downlink in turn; `None` means drop. Returns the payload and the
    /// Content-Format set by a rule, if any.
    pub fn downlink(&self, mut msg: Downlink, who: &Principal) -> Option<(Downlink, Option<u16>)> {
        let mut format = None;
        for r in &self.rules {
            match Self::call(r, "downlink", Transform::Drop, |rule| rule.downlink(&msg, who)) {
                Transform::Continue => {}
                Transform::Replace { payload, content_format } => {
                    msg.payload = payload;
                    if content_format.is_some() {
                        format = content_format;
                    }
                }
                Transform::Drop | Transform::Reject(_) => return None,
            }
        }
        Some((msg, format))
    }

    /// Whether any rule implements a payload hook is not knowable for native rules; this
    /// reports the number of rules instead (used to skip empty chains).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when the chain has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Each rule's name and failure count.
    pub fn failures(&self) -> Vec<(String, u64)> {
        self.rules.iter().map(|r| (r.name.clone(), r.failures.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Panics;
    impl Rule for Panics {
        fn authenticate(&self, _: &Request) -> Auth {
            panic!("boom")
        }
        fn route(&self, _: &Request, _: &Principal) -> Route {
            panic!("boom")
        }
    }

    struct Upper;
    impl Rule for Upper {
        fn uplink(&self, msg: &Uplink, _: &Principal) -> Transform {
            Transform::Replace { payload: msg.payload.to_ascii_uppercase(), content_format: Some(0) }
        }
    }

    #[test]
    fn a_panicking_rule_is_denied_not_crashed() {
        let chain = Chain::from_rules(vec![("panics".into(), Box::new(Panics))]);
        let req = Request::default();
        assert!(matches!(chain.authenticate(&req), Auth::Deny(r) if r.code == Code::UNAUTHORIZED));
        assert!(
            matches!(chain.route(&req, &Principal::default()), Route::Reject(r) if r.code == Code::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(chain.failures()[0].1, 2);
    }

    #[test]
    fn unrouted_requests_are_not_found() {
        let chain = Chain::from_rules(vec![("upper".into(), Box::new(Upper))]);
        let req = Request { path: vec!["nothing".into()], ..Request::default() };
        assert!(matches!(chain.route(&req, &Principal::default()), Route::Reject(r) if r.code == Code::NOT_FOUND));
        assert!(chain.authorize(&Principal::default(), Access::Publish, "a"));
    }

    #[test]
    fn uplink_transforms_run_in_order() {
        let chain = Chain::from_rules(vec![("upper".into(), Box::new(Upper))]);
        let out = chain
            .uplink(
                Uplink { topic: "t".into(), payload: b"hi".to_vec(), content_format: Some(50) },
                &Principal::default(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(out.payload, b"HI");
        assert_eq!(out.content_format, Some(0));
    }

    #[test]
    fn unknown_builtins_and_packages_name_the_fix() {
        let cfg =
            RuleConfig { rule: "builtin:nope".into(), config: serde_yaml::Value::Null, sha256: None, limits: None };
        let err = load_one(&cfg).err().unwrap().to_string();
        assert!(err.contains("builtin:emqx"), "{err}");
        let cfg =
            RuleConfig { rule: "rules/x.wasm".into(), config: serde_yaml::Value::Null, sha256: None, limits: None };
        assert!(load_one(&cfg).err().unwrap().to_string().contains("not supported"));
    }
}
