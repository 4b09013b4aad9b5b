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

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_sdk::{Access, Downlink, Identity, MessageType, Method, Principal, Request, Rule, Uplink, abi};

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

/// `publish` or `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessSpec {
    /// [`Access::Publish`]
    Publish,
    /// [`Access::Subscribe`]
    Subscribe,
}

/// A path: `"a/b/c"` or `["a", "b/c"]` (a list keeps `/` inside a segment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathSpec {
    /// Segments joined with `/`.
    Joined(String),
    /// Segments one by one.
    Segments(Vec<String>),
}

/// A request as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// `GET` (default), `POST`, `PUT`, `DELETE`, `FETCH`, `PATCH`, `IPATCH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `CON` (default) or `NON`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The Uri-Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSpec>,
    /// Uri-Query entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<String>,
    /// Content-Format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_format: Option<u16>,
    /// Accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<u16>,
    /// Observe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<u32>,
    /// Max-Age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    /// The device's address (default `192.0.2.1:5683`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The payload as JSON (serialized compactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Value>,
    /// DTLS PSK identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_identity: Option<String>,
    /// Certificate subject CN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    /// Certificate SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
    /// Certificate SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
}

/// A principal as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    /// Client id.
    #[serde(default)]
    pub client_id: String,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// An uplink message as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSpec {
    /// The topic chosen by route.
    #[serde(default)]
    pub topic: String,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The payload as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Value>,
    /// Content-Format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_format: Option<u16>,
}

/// A downlink message as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkSpec {
    /// The MQTT topic.
    #[serde(default)]
    pub topic: String,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The payload as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Value>,
    /// MQTT v5 content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// MQTT v5 user properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_properties: BTreeMap<String, String>,
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

fn payload(text: &Option<String>, hex_text: &Option<String>, json: &Option<Value>) -> Result<Vec<u8>, VectorError> {
    match (text, hex_text, json) {
        (Some(t), None, None) => Ok(t.as_bytes().to_vec()),
        (None, Some(h), None) => hex::decode(h.trim()).map_err(VectorError::PayloadHex),
        (None, None, Some(j)) => Ok(j.to_string().into_bytes()),
        (None, None, None) => Ok(Vec::new()),
        _ => Err(VectorError::PayloadForms),
    }
}

impl RequestSpec {
    /// The SDK request.
    pub fn build(&self) -> Result<Request, VectorError> {
        let method = match self.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("DELETE") => Method::Delete,
            Some("FETCH") => Method::Fetch,
            Some("PATCH") => Method::Patch,
            Some("IPATCH") => Method::IPatch,
            Some(other) => return Err(VectorError::Method(other.into())),
        };
        let message_type = match self.message_type.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("CON") => MessageType::Confirmable,
            Some("NON") => MessageType::NonConfirmable,
            Some(other) => return Err(VectorError::MessageType(other.into())),
        };
        let path = match &self.path {
            None => Vec::new(),
            Some(PathSpec::Segments(s)) => s.clone(),
            Some(PathSpec::Joined(s)) => {
                s.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).map(str::to_owned).collect()
            }
        };
        Ok(Request {
            method,
            message_type,
            path,
            query: self.query.clone(),
            content_format: self.content_format,
            accept: self.accept,
            observe: self.observe,
            max_age: self.max_age,
            peer: self.peer.clone().unwrap_or_else(|| "192.0.2.1:5683".into()),
            identity: Identity {
                psk_identity: self.psk_identity.clone(),
                cert_subject: self.cert_subject.clone(),
                cert_sans: self.cert_sans.clone(),
                cert_fingerprint: self.cert_fingerprint.clone(),
            },
            payload: payload(&self.payload, &self.payload_hex, &self.payload_json)?,
        })
    }
}

impl PrincipalSpec {
    /// The SDK principal.
    pub fn build(&self) -> Principal {
        Principal {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            attributes: self.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

impl Vector {
    /// Runs the vector's hook on `rule` and renders the answer as JSON; `Err` when the vector
    /// itself is incomplete.
    pub fn answer(&self, rule: &dyn Rule) -> Result<Value, VectorError> {
        let who = self.principal.as_ref().map(PrincipalSpec::build).unwrap_or_default();
        let request = || self.request.as_ref().map(RequestSpec::build).unwrap_or_else(|| Ok(Request::default()));
        let run = |f: &dyn Fn() -> Value| catch_unwind(AssertUnwindSafe(f)).map_err(|_| VectorError::Panicked);
        match self.hook {
            Hook::Authenticate => {
                let req = request()?;
                run(&|| auth_json(&rule.authenticate(&req)))
            }
            Hook::Route => {
                let req = request()?;
                run(&|| route_json(&rule.route(&req, &who)))
            }
            Hook::Authorize => {
                let access = match self.access.ok_or(VectorError::NoAccess)? {
                    AccessSpec::Publish => Access::Publish,
                    AccessSpec::Subscribe => Access::Subscribe,
                };
                let topic = self.topic.as_deref().ok_or(VectorError::NoTopic)?;
                run(&|| authz_json(&rule.authorize(&who, access, topic)))
            }
            Hook::Uplink => {
                let spec = self.uplink.as_ref().ok_or(VectorError::NoUplink)?;
                let msg = Uplink {
                    topic: spec.topic.clone(),
                    payload: payload(&spec.payload, &spec.payload_hex, &spec.payload_json)?,
                    content_format: spec.content_format,
                };
                run(&|| transform_json(&rule.uplink(&msg, &who)))
            }
            Hook::Downlink => {
                let spec = self.downlink.as_ref().ok_or(VectorError::NoDownlink)?;
                let msg = Downlink {
                    topic: spec.topic.clone(),
                    payload: payload(&spec.payload, &spec.payload_hex, &spec.payload_json)?,
                    content_type: spec.content_type.clone(),
                    user_properties: spec.user_properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                };
                run(&|| transform_json(&rule.downlink(&msg, &who)))
            }
        }
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

/// A vector's inputs built once, so that its hook can be called many times without building
/// or rendering anything (`sluice rule bench`).
#[derive(Debug, Clone)]
pub struct Prepared {
    hook: Hook,
    request: Request,
    who: Principal,
    access: Access,
    topic: String,
    uplink: Uplink,
    downlink: Downlink,
}

impl Vector {
    /// The vector's inputs, ready to call; `Err` when the vector is incomplete.
    pub fn prepare(&self) -> Result<Prepared, VectorError> {
        let request = self.request.as_ref().map(RequestSpec::build).transpose()?.unwrap_or_default();
        let access = match self.access {
            Some(AccessSpec::Subscribe) => Access::Subscribe,
            _ => Access::Publish,
        };
        let uplink = match &self.uplink {
            Some(spec) => Uplink {
                topic: spec.topic.clone(),
                payload: payload(&spec.payload, &spec.payload_hex, &spec.payload_json)?,
                content_format: spec.content_format,
            },
            None => Uplink::default(),
        };
        let downlink = match &self.downlink {
            Some(spec) => Downlink {
                topic: spec.topic.clone(),
                payload: payload(&spec.payload, &spec.payload_hex, &spec.payload_json)?,
                content_type: spec.content_type.clone(),
                ..Downlink::default()
            },
            None => Downlink::default(),
        };
        Ok(Prepared {
            hook: self.hook,
            request,
            who: self.principal.as_ref().map(PrincipalSpec::build).unwrap_or_default(),
            access,
            topic: self.topic.clone().unwrap_or_default(),
            uplink,
            downlink,
        })
    }
}

impl Prepared {
    /// The hook the vector calls.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Calls the hook once; the answer is discarded (but not optimised away).
    pub fn call(&self, rule: &dyn Rule) {
        match self.hook {
            Hook::Authenticate => drop(std::hint::black_box(rule.authenticate(&self.request))),
            Hook::Route => drop(std::hint::black_box(rule.route(&self.request, &self.who))),
            Hook::Authorize => drop(std::hint::black_box(rule.authorize(&self.who, self.access, &self.topic))),
            Hook::Uplink => drop(std::hint::black_box(rule.uplink(&self.uplink, &self.who))),
            Hook::Downlink => drop(std::hint::black_box(rule.downlink(&self.downlink, &self.who))),
        }
    }
}
