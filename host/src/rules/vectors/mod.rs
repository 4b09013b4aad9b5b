//! Test vectors: a rule's own examples of input and expected verdict, shipped inside its
//! package and run by `sluice rule test`, `sluice rule build` and before every hot swap.
//!
//! A vector names one hook, its inputs (`request`, `principal`, `access` + `topic`, `uplink`,
//! `downlink`) and the verdict it expects, written as the SDK value in JSON (or YAML in
//! `rule.yaml`): `"continue"`, `{"publish": {"topic": "a/b", "qos": null}}`,
//! `{"deny": {"code": "4.01"}}`, `{"replace": {"payload_json": {"t": 1}}}`, …
//!
//! Comparison is by shape: every key written in `expect` must match the rule's answer, keys
//! left out are not compared (so a `reason` is only checked when given). A payload may be
//! expected as `payload` (UTF-8 text), `payload_hex`, or `payload_json` (compared as JSON).
//! The same runner serves native (`builtin:`) and Wasm rules, so one set of vectors proves
//! both backends give identical answers.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_sdk::{Access, Downlink, Principal, Request, Rule, Uplink, abi};

mod spec;

pub use spec::{AccessSpec, DownlinkSpec, PathSpec, PrincipalSpec, RequestSpec, UplinkSpec};

pub use super::verdict::matches;
use super::verdict::{auth_json, authz_json, project, route_json, transform_json};

/// One test vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// What it shows, as a sentence (`telemetry is published`).
    pub name: String,
    /// The hook it runs.
    pub hook: Hook,
    /// Config merged over the manifest's `defaults` for this vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// authenticate, route: the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestSpec>,
    /// route, authorize, uplink, downlink: the authenticated device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalSpec>,
    /// authorize: `publish` or `subscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSpec>,
    /// authorize: the topic or filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// uplink: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkSpec>,
    /// downlink: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink: Option<DownlinkSpec>,
    /// The expected verdict.
    pub expect: Value,
}

/// The hook a vector runs: one of the hooks a chain runs ([`abi::Hook::chain`]; a vector cannot
/// run `init`, which every vector runs implicitly). Written by its ABI name (`route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Hook {
    /// `authenticate(request)`
    Authenticate,
    /// `route(request, principal)`
    Route,
    /// `authorize(principal, access, topic)`
    Authorize,
    /// `uplink(message, principal)`
    Uplink,
    /// `downlink(message, principal)`
    Downlink,
}

impl Hook {
    /// The hook's name as written in vectors and manifests.
    pub fn name(self) -> &'static str {
        abi::Hook::from(self).name()
    }
}

impl From<Hook> for abi::Hook {
    fn from(hook: Hook) -> abi::Hook {
        match hook {
            Hook::Authenticate => abi::Hook::Authenticate,
            Hook::Route => abi::Hook::Route,
            Hook::Authorize => abi::Hook::Authorize,
            Hook::Uplink => abi::Hook::Uplink,
            Hook::Downlink => abi::Hook::Downlink,
        }
    }
}

impl From<Hook> for &'static str {
    fn from(hook: Hook) -> &'static str {
        hook.name()
    }
}

impl TryFrom<String> for Hook {
    type Error = VectorError;

    fn try_from(name: String) -> Result<Hook, VectorError> {
        Hook::ALL.into_iter().find(|h| h.name() == name).ok_or(VectorError::Hook(name))
    }
}

impl Hook {
    /// Every hook a vector may run, in chain order.
    pub const ALL: [Hook; 5] = [Hook::Authenticate, Hook::Route, Hook::Authorize, Hook::Uplink, Hook::Downlink];
}

/// Why a vector cannot run: it is incomplete or malformed, or its rule panicked.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// `hook:` names no hook a vector can run.
    #[error("hook {0:?} is not a hook a vector runs; use {names}", names = hook_names())]
    Hook(String),
    /// `payload_hex` is not hex.
    #[error("payload_hex is not hex: {0}")]
    PayloadHex(hex::FromHexError),
    /// More than one of the payload forms.
    #[error("give at most one of payload, payload_hex, payload_json")]
    PayloadForms,
    /// `request.method` is not a CoAP method.
    #[error("request.method {0:?}: use GET, POST, PUT, DELETE, FETCH, PATCH or IPATCH")]
    Method(String),
    /// `request.type` is neither CON nor NON.
    #[error("request.type {0:?}: use CON or NON")]
    MessageType(String),
    /// An authorize vector without `access`.
    #[error("authorize vectors need access: publish|subscribe")]
    NoAccess,
    /// An authorize vector without `topic`.
    #[error("authorize vectors need topic:")]
    NoTopic,
    /// An uplink vector without `uplink`.
    #[error("uplink vectors need uplink: {{topic, payload, content_format}}")]
    NoUplink,
    /// A downlink vector without `downlink`.
    #[error("downlink vectors need downlink: {{topic, payload, content_type}}")]
    NoDownlink,
    /// The rule panicked while answering.
    #[error("the rule panicked (see the log above)")]
    Panicked,
}

/// The hooks a vector may name, for messages.
fn hook_names() -> String {
    Hook::ALL.map(Hook::name).join(", ")
}

/// A config (manifest `defaults`, a vector's or an entry's `config`) that cannot be read as
/// the dotted entries a rule reads.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not representable as YAML.
    #[error("config: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Not representable as JSON.
    #[error("config: {0}")]
    Json(#[from] serde_json::Error),
}

/// A vector whose answer differed from its expectation (or could not run).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorFailure {
    /// The vector's name.
    pub vector: String,
    /// What went wrong: expected vs actual, or why it could not run.
    pub message: String,
}

impl fmt::Display for VectorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vector {:?}: {}", self.vector, self.message)
    }
}

impl Vector {
    /// The vector's inputs, built once, so that its hook can be called many times without
    /// building or rendering anything (`sluice rule bench`); `Err` when the vector lacks what
    /// its hook needs.
    pub fn prepare(&self) -> Result<Prepared, VectorError> {
        let request = || self.request.as_ref().map(RequestSpec::build).unwrap_or_else(|| Ok(Request::default()));
        let call = match self.hook {
            Hook::Authenticate => Call::Authenticate(request()?),
            Hook::Route => Call::Route(request()?),
            Hook::Authorize => {
                let access = match self.access.ok_or(VectorError::NoAccess)? {
                    AccessSpec::Publish => Access::Publish,
                    AccessSpec::Subscribe => Access::Subscribe,
                };
                Call::Authorize(access, self.topic.clone().ok_or(VectorError::NoTopic)?)
            }
            Hook::Uplink => Call::Uplink(self.uplink.as_ref().ok_or(VectorError::NoUplink)?.build()?),
            Hook::Downlink => Call::Downlink(self.downlink.as_ref().ok_or(VectorError::NoDownlink)?.build()?),
        };
        Ok(Prepared { who: self.principal.as_ref().map(PrincipalSpec::build).unwrap_or_default(), call })
    }

    /// Runs the vector's hook on `rule` and renders the answer as JSON; `Err` when the vector
    /// itself is incomplete or the rule panicked.
    pub fn answer(&self, rule: &dyn Rule) -> Result<Value, VectorError> {
        let prepared = self.prepare()?;
        catch_unwind(AssertUnwindSafe(|| prepared.answer(rule))).map_err(|_| VectorError::Panicked)
    }

    /// Runs the vector; `None` when it passes.
    pub fn check(&self, rule: &dyn Rule) -> Option<VectorFailure> {
        let fail = |message| Some(VectorFailure { vector: self.name.clone(), message });
        match self.answer(rule) {
            Err(reason) => fail(reason.to_string()),
            Ok(actual) if matches(&self.expect, &actual) => None,
            Ok(actual) => {
                fail(format!("{:?} hook: expected {}, got {}", self.hook, self.expect, project(&actual, &self.expect)))
            }
        }
    }
}

/// A vector's inputs, built ([`Vector::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    who: Principal,
    call: Call,
}

/// The hook a prepared vector calls, with its inputs.
#[derive(Debug, Clone)]
enum Call {
    Authenticate(Request),
    Route(Request),
    Authorize(Access, String),
    Uplink(Uplink),
    Downlink(Downlink),
}

impl Prepared {
    /// The hook the vector calls.
    pub fn hook(&self) -> Hook {
        match self.call {
            Call::Authenticate(_) => Hook::Authenticate,
            Call::Route(_) => Hook::Route,
            Call::Authorize(..) => Hook::Authorize,
            Call::Uplink(_) => Hook::Uplink,
            Call::Downlink(_) => Hook::Downlink,
        }
    }

    /// Calls the hook once and renders the answer as JSON.
    fn answer(&self, rule: &dyn Rule) -> Value {
        let who = &self.who;
        match &self.call {
            Call::Authenticate(req) => auth_json(&rule.authenticate(req)),
            Call::Route(req) => route_json(&rule.route(req, who)),
            Call::Authorize(access, topic) => authz_json(&rule.authorize(who, *access, topic)),
            Call::Uplink(msg) => transform_json(&rule.uplink(msg, who)),
            Call::Downlink(msg) => transform_json(&rule.downlink(msg, who)),
        }
    }

    /// Calls the hook once; the answer is discarded (but not optimised away).
    pub fn call(&self, rule: &dyn Rule) {
        let who = &self.who;
        match &self.call {
            Call::Authenticate(req) => drop(std::hint::black_box(rule.authenticate(req))),
            Call::Route(req) => drop(std::hint::black_box(rule.route(req, who))),
            Call::Authorize(access, topic) => drop(std::hint::black_box(rule.authorize(who, *access, topic))),
            Call::Uplink(msg) => drop(std::hint::black_box(rule.uplink(msg, who))),
            Call::Downlink(msg) => drop(std::hint::black_box(rule.downlink(msg, who))),
        }
    }
}

/// Runs every vector on an initialized rule; returns the failures (empty: all passed).
pub fn run_vectors(rule: &dyn Rule, vectors: &[Vector]) -> Vec<VectorFailure> {
    vectors.iter().filter_map(|v| v.check(rule)).collect()
}

/// Runs vectors that may each need a different config: the rule is built by `load` once per
/// distinct config (`defaults` merged with the vector's `config`); a refusal (the rule's own
/// words, or the loader's error) fails the vectors of that config.
pub fn run_package_vectors<E: fmt::Display>(
    load: impl Fn(&sluice_sdk::Config) -> Result<Box<dyn Rule>, E>,
    defaults: &Value,
    vectors: &[Vector],
) -> Vec<VectorFailure> {
    let mut groups: Vec<(Value, Vec<&Vector>)> = Vec::new();
    for v in vectors {
        let config = match &v.config {
            Some(c) => merge(defaults, c),
            None => defaults.clone(),
        };
        match groups.iter_mut().find(|(c, _)| *c == config) {
            Some((_, list)) => list.push(v),
            None => groups.push((config, vec![v])),
        }
    }
    let mut failures = Vec::new();
    for (config, list) in groups {
        let built = match json_config(&config) {
            Ok(config) => load(&config).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match built {
            Ok(rule) => failures.extend(list.iter().filter_map(|v| v.check(rule.as_ref()))),
            Err(reason) => failures.extend(list.iter().map(|v| VectorFailure {
                vector: v.name.clone(),
                message: format!("the rule refused the vector's config: {reason}"),
            })),
        }
    }
    failures
}

/// A JSON config (manifest `defaults`, vector `config`) as the dotted entries a rule reads.
pub fn json_config(config: &Value) -> Result<sluice_sdk::Config, ConfigError> {
    let yaml: serde_yaml::Value = serde_yaml::to_value(config)?;
    Ok(crate::config::flatten(&yaml))
}

/// `over` merged into `base`: mappings key by key (recursively), anything else replaced.
pub fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(existing) => merge(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, Value::Null) => base.clone(),
        _ => over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_sdk::{Publish, Route, Transform};

    use super::*;

    fn vector(yaml: &str) -> Vector {
        serde_yaml::from_str(yaml).unwrap()
    }

    struct Hello;
    impl Rule for Hello {
        fn route(&self, req: &Request, _: &Principal) -> Route {
            match req.path.first().map(String::as_str) {
                Some("hello") => Route::Publish(Publish::to(format!("hello/{}", req.path[1..].join("/")))),
                _ => Route::Continue,
            }
        }
        fn uplink(&self, msg: &Uplink, _: &Principal) -> Transform {
            Transform::Replace {
                payload: format!("{{\"v\": {}}}", String::from_utf8_lossy(&msg.payload)).into_bytes(),
                content_format: Some(50),
            }
        }
    }

    #[test]
    fn matching_vectors_pass_and_others_show_expected_and_actual() {
        let ok = vector(
            "name: hello\nhook: route\nrequest: {method: POST, path: hello/a/b}\nexpect: {publish: {topic: hello/a/b, qos: null}}\n",
        );
        assert_eq!(ok.check(&Hello), None);
        let bad = vector("name: wrong\nhook: route\nrequest: {path: hello/x}\nexpect: {publish: {topic: hello/y}}\n");
        let failure = bad.check(&Hello).unwrap();
        assert!(failure.to_string().contains("hello/y") && failure.to_string().contains("hello/x"), "{failure}");
        let other = vector("name: other\nhook: route\nrequest: {path: nope}\nexpect: continue\n");
        assert_eq!(other.check(&Hello), None);
    }

    #[test]
    fn payloads_compare_as_json_and_codes_as_numbers_or_text() {
        let v = vector(
            "name: j\nhook: uplink\nuplink: {topic: t, payload: '3'}\nexpect: {replace: {payload_json: {v: 3}, content_format: 50}}\n",
        );
        assert_eq!(v.check(&Hello), None);
        assert!(matches(&json!({"deny": {"code": 4.01}}), &json!({"deny": {"code": "4.01", "reason": "x"}})));
        assert!(!matches(&json!({"deny": {"code": "4.03"}}), &json!({"deny": {"code": "4.01"}})));
    }

    #[test]
    fn configs_merge_key_by_key() {
        let merged = merge(&json!({"a": 1, "m": {"x": 1, "y": 2}}), &json!({"m": {"y": 3}, "b": true}));
        assert_eq!(merged, json!({"a": 1, "m": {"x": 1, "y": 3}, "b": true}));
    }
}
