//! The rule chain: runs each hook over the configured rules in order.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_sdk::{Access, Auth, Authz, Code, Downlink, Principal, Reject, Request, Route, Rule, Transform, Uplink};
use tracing::{debug_span, error};

use super::abi::Hook;
use super::engine::WasmError;
use super::load::MissingPackage;
use super::package::PackageError;
use super::vectors::{ConfigError, VectorFailure};
use super::{LimitsError, RuleStats, WasmRule};

/// Why a rule could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `builtin:NAME` names no linked rule.
    #[error("{0:?} is not a builtin rule; use one of: {1}")]
    UnknownBuiltin(String, String),
    /// The rule refused its configuration.
    #[error("{rule}: config refused: {reason}")]
    Config {
        /// The rule.
        rule: String,
        /// The rule's own words.
        reason: String,
    },
    /// The configuration cannot be handed to the rule (it does not convert to entries).
    #[error("{rule}: config refused: {error}")]
    ConfigFormat {
        /// The rule.
        rule: String,
        /// What does not convert.
        error: ConfigError,
    },
    /// The package file is not a valid package.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// A `rules:` entry names a package that is not there.
    #[error("{rule:?}: {reason}")]
    NotFound {
        /// The entry as written.
        rule: String,
        /// Where it was looked for, and the fix.
        reason: MissingPackage,
    },
    /// The package's SHA-256 is not the pinned one.
    #[error(
        "{file}: sha256 is {actual}, but the config pins {expected}; if this build is the one you want, set sha256: {actual}"
    )]
    PinMismatch {
        /// The package file.
        file: String,
        /// The pin in the config.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// A package referenced in a registry could not be pulled (nor found in the cache).
    #[error(transparent)]
    Registry(#[from] super::oci::RegistryError),
    /// The package's signature is not one `trust:` accepts.
    #[error(transparent)]
    Trust(#[from] super::signature::TrustError),
    /// The limits in the manifest or the config are invalid.
    #[error("{rule}: {error}")]
    Limits {
        /// The rule.
        rule: String,
        /// What is wrong and the fix.
        error: LimitsError,
    },
    /// The package fails its own test vectors.
    #[error("{file}: {} of its test vectors fail: {}", .failures.len(), join(.failures))]
    Vectors {
        /// The package file.
        file: String,
        /// Each failure.
        failures: Vec<VectorFailure>,
    },
    /// The Wasm runtime refused the module (ABI, imports, exports), could not compile it, or its
    /// `sluice_init` trapped; the error names the fix.
    #[error("{what}: {error}")]
    Wasm {
        /// What was refused: `Wasm module`, `NAME VERSION`, the engine or its cache.
        what: String,
        /// Why, and the fix.
        error: WasmError,
    },
}

/// The failures, `; `-separated.
fn join(failures: &[VectorFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// What the chain knows about one of its rules (for logs and the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// `builtin:emqx`, or the package's manifest name.
    pub name: String,
    /// The package's version; the gateway's version for builtins.
    pub version: String,
    /// SHA-256 of the package file (none for builtins).
    pub sha256: Option<String>,
    /// The package file (none for builtins).
    pub source: Option<PathBuf>,
    /// Who signed the package (`trust:`), if it is signed.
    pub signer: Option<String>,
    /// Which chain slot it fills: the `rule:` of its entry, or the file of an unnamed package
    /// in `rules_dir`. A reload swaps slot by slot.
    pub slot: String,
}

/// A rule and its counters, as the admin API reports them.
#[derive(Debug, Clone)]
pub struct RuleReport {
    /// What the rule is.
    pub info: RuleInfo,
    /// A Wasm rule's own counters (none for native rules).
    pub wasm: Option<RuleStats>,
    /// Fail-policy answers: a Wasm rule's, plus panics the chain caught (any rule).
    pub failures: u64,
}

/// One loaded rule; shared between chain versions when a reload leaves it unchanged.
pub struct Loaded {
    pub(crate) info: RuleInfo,
    pub(crate) rule: Arc<dyn Rule>,
    pub(crate) wasm: Option<Arc<WasmRule>>,
    /// Identifies the package bytes, config and limits it was built from.
    pub(crate) fingerprint: String,
    failures: AtomicU64,
}

impl Loaded {
    /// A native rule.
    pub(crate) fn native(info: RuleInfo, rule: Arc<dyn Rule>, fingerprint: String) -> Loaded {
        Loaded { info, rule, wasm: None, fingerprint, failures: AtomicU64::new(0) }
    }

    /// A Wasm rule.
    pub(crate) fn wasm(info: RuleInfo, rule: Arc<WasmRule>, fingerprint: String) -> Loaded {
        Loaded { info, rule: rule.clone(), wasm: Some(rule), fingerprint, failures: AtomicU64::new(0) }
    }
}

/// The rules of the gateway, in order.
pub struct Chain {
    rules: Vec<Arc<Loaded>>,
}

impl Chain {
    /// A chain of already-built rules (for tests and embedding).
    pub fn from_rules(rules: Vec<(String, Box<dyn Rule>)>) -> Chain {
        let rules = rules
            .into_iter()
            .map(|(name, rule)| {
                let info = RuleInfo {
                    name: name.clone(),
                    version: String::new(),
                    sha256: None,
                    source: None,
                    signer: None,
                    slot: name.clone(),
                };
                Arc::new(Loaded::native(info, Arc::from(rule), name))
            })
            .collect();
        Chain { rules }
    }

    /// A chain of loaded rules (the loader's and the reloader's constructor).
    pub(crate) fn from_loaded(rules: Vec<Arc<Loaded>>) -> Chain {
        Chain { rules }
    }

    /// The loaded rules, in order.
    pub(crate) fn loaded(&self) -> &[Arc<Loaded>] {
        &self.rules
    }

    /// What each rule is, in chain order.
    pub fn rules(&self) -> Vec<RuleInfo> {
        self.rules.iter().map(|r| r.info.clone()).collect()
    }

    /// Each rule with its counters, in chain order (for the admin API).
    pub fn reports(&self) -> Vec<RuleReport> {
        self.rules
            .iter()
            .map(|r| {
                let wasm = r.wasm.as_ref().map(|w| w.stats());
                let caught = r.failures.load(Ordering::Relaxed);
                RuleReport { info: r.info.clone(), wasm, failures: caught + wasm.map_or(0, |s| s.failures) }
            })
            .collect()
    }

    /// Each Wasm rule's name and counters.
    pub fn wasm_stats(&self) -> Vec<(String, RuleStats)> {
        self.rules.iter().filter_map(|r| Some((r.info.name.clone(), r.wasm.as_ref()?.stats()))).collect()
    }

    /// Runs `hook` on one rule, inside a `rule` span (debug level: when it is off, the span is
    /// one branch and nothing is formatted or allocated); a panic is the rule's failure and
    /// gives `fallback()`.
    fn call<T>(loaded: &Loaded, hook: Hook, fallback: impl FnOnce() -> T, f: impl FnOnce(&dyn Rule) -> T) -> T {
        let _span = debug_span!("rule", rule = %loaded.info.name, hook = hook.name()).entered();
        match catch_unwind(AssertUnwindSafe(|| f(loaded.rule.as_ref()))) {
            Ok(v) => v,
            Err(_) => {
                loaded.failures.fetch_add(1, Ordering::Relaxed);
                let (rule, version) = (&loaded.info.name, &loaded.info.version);
                error!(%rule, %version, hook = hook.name(), "Rule failed; applying its fail policy.");
                fallback()
            }
        }
    }

    /// Who is the device? `None` when every rule passes.
    pub fn authenticate(&self, req: &Request) -> Auth {
        self.authenticate_by(req).0
    }

    /// [`Chain::authenticate`], and the name of the rule that decided (`None`: none did).
    pub fn authenticate_by(&self, req: &Request) -> (Auth, Option<&str>) {
        for r in &self.rules {
            let deny = || Auth::Deny(Reject::new(Code::UNAUTHORIZED, "authentication failed (rule error)"));
            match Self::call(r, Hook::Authenticate, deny, |rule| rule.authenticate(req)) {
                Auth::Continue => continue,
                verdict => return (verdict, Some(r.info.name.as_str())),
            }
        }
        (Auth::Continue, None)
    }

    /// Which action? 4.04 when every rule passes.
    pub fn route(&self, req: &Request, who: &Principal) -> Route {
        self.route_by(req, who).0
    }

    /// [`Chain::route`], and the name of the rule that decided (`None`: none did).
    pub fn route_by(&self, req: &Request, who: &Principal) -> (Route, Option<&str>) {
        for r in &self.rules {
            let fail = || Route::Reject(Reject::new(Code::INTERNAL_SERVER_ERROR, "rule error"));
            match Self::call(r, Hook::Route, fail, |rule| rule.route(req, who)) {
                Route::Continue => continue,
                verdict => return (verdict, Some(r.info.name.as_str())),
            }
        }
        (Route::Reject(Reject::new(Code::NOT_FOUND, format!("no resource at /{}", req.path.join("/")))), None)
    }

    /// May `who` do `access` on `topic`? Allowed when every rule passes.
    pub fn authorize(&self, who: &Principal, access: Access, topic: &str) -> bool {
        for r in &self.rules {
            match Self::call(r, Hook::Authorize, || Authz::Deny, |rule| rule.authorize(who, access, topic)) {
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
            match Self::call(r, Hook::Uplink, super::uplink_failed, |rule| rule.uplink(&msg, who)) {
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
            match Self::call(r, Hook::Downlink, || Transform::Drop, |rule| rule.downlink(&msg, who)) {
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
        assert_eq!(chain.reports()[0].failures, 2);
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
    fn each_rule_call_runs_in_a_rule_span_named_for_the_rule_and_hook() {
        use std::sync::Mutex;

        use tracing::field::{Field, Visit};
        use tracing_subscriber::layer::{Context, SubscriberExt};

        /// Each new span as `name field=value …`.
        struct Spans(Arc<Mutex<Vec<String>>>);
        struct Line(String);
        impl Visit for Line {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0 += &format!(" {}={value:?}", field.name());
            }
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
            fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
                let mut line = Line(attrs.metadata().name().to_string());
                attrs.record(&mut line);
                self.0.lock().unwrap().push(line.0);
            }
        }

        let spans = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Spans(spans.clone()));
        let chain = Chain::from_rules(vec![("upper".into(), Box::new(Upper)), ("panics".into(), Box::new(Panics))]);
        tracing::subscriber::with_default(subscriber, || chain.route(&Request::default(), &Principal::default()));
        assert_eq!(*spans.lock().unwrap(), [r#"rule rule=upper hook="route""#, r#"rule rule=panics hook="route""#]);
    }
}
