//! # sluice-rule-thingsboard: ThingsBoard's CoAP device API on Sluice
//!
//! Devices written for ThingsBoard's CoAP transport post to `/api/v1/{ACCESS_TOKEN}/telemetry`
//! and `/api/v1/{ACCESS_TOKEN}/attributes`. This rule makes Sluice accept them unchanged:
//!
//! * **authenticate**: the access token in the path names a device in the config
//!   (`devices: {TOKEN: device-name}`); the device name becomes the client id. An unknown token
//!   is refused with 4.01. Other paths are left to the next rule.
//! * **route**: POST (or PUT) publishes to `devices/{device}/telemetry` or
//!   `devices/{device}/attributes` (the `topic` template); another method is 4.05.
//! * **uplink**: on those topics, CBOR (60), SenML+JSON (110) and SenML+CBOR (112) payloads become
//!   one JSON object (50) — `{"temperature": 21.5}`, the shape ThingsBoard itself takes — using the
//!   decoders of `rules/senml` (the `sluice-senml` library). JSON passes unchanged; a payload
//!   that does not parse is 4.00.
//!
//! ```yaml
//! rules:
//!   - rule: rules/thingsboard.wasm
//!     config:
//!       devices: {A1_TEST_TOKEN: thermostat-1}
//!       topic: "devices/{device}/{kind}"   # default; {kind} is telemetry or attributes
//!       qos: 1                             # optional; default: the gateway's publish_qos
//! ```
//! Access tokens are secrets: the rule never logs or echoes them.

use sluice_sdk::content_format::JSON;
use sluice_sdk::{Auth, Code, Config, Method, Principal, Publish, Reject, Request, Route, Rule, Transform, Uplink};
use sluice_senml::{Options, Output};

/// The rule's name.
pub const NAME: &str = "thingsboard";

/// The resources under `/api/v1/{token}/` this rule maps.
const KINDS: &[&str] = &["telemetry", "attributes"];

struct Thingsboard {
    /// Access token → device name.
    devices: Vec<(String, String)>,
    /// The topic template, with `{device}` and `{kind}`.
    topic: String,
    qos: Option<u8>,
}

/// `api/v1/{token}/{kind}`: the token and the kind, when the path is one of ours.
fn parse_path(req: &Request) -> Option<(&str, &str)> {
    match req.path.as_slice() {
        [api, v1, token, kind] if api == "api" && v1 == "v1" && KINDS.contains(&kind.as_str()) => Some((token, kind)),
        _ => None,
    }
}

impl Thingsboard {
    fn device(&self, token: &str) -> Option<&str> {
        self.devices.iter().find(|(t, _)| t == token).map(|(_, d)| d.as_str())
    }

    fn topic(&self, device: &str, kind: &str) -> String {
        self.topic.replace("{device}", device).replace("{kind}", kind)
    }
}

impl Rule for Thingsboard {
    fn authenticate(&self, req: &Request) -> Auth {
        let Some((token, _)) = parse_path(req) else { return Auth::Continue };
        match self.device(token) {
            Some(device) => Auth::Allow(Principal::new(device)),
            None => Auth::Deny(Reject::new(Code::UNAUTHORIZED, "unknown access token: check the device's credentials")),
        }
    }

    fn route(&self, req: &Request, who: &Principal) -> Route {
        let Some((_, kind)) = parse_path(req) else { return Route::Continue };
        match req.method {
            Method::Post | Method::Put => {
                Route::Publish(Publish { qos: self.qos, ..Publish::to(self.topic(&who.client_id, kind)) })
            }
            _ => Route::Reject(Reject::new(Code::METHOD_NOT_ALLOWED, format!("use POST to send {kind}"))),
        }
    }

    fn uplink(&self, msg: &Uplink, who: &Principal) -> Transform {
        if !KINDS.iter().any(|kind| msg.topic == self.topic(&who.client_id, kind)) {
            return Transform::Continue;
        }
        let options = Options { output: Output::Object, resolve: true, cbor: true };
        match sluice_senml::to_json(&msg.payload, msg.content_format, &options) {
            Ok(Some(json)) => Transform::Replace { payload: json.into_bytes(), content_format: Some(JSON) },
            Ok(None) => Transform::Continue,
            Err(reason) => Transform::Reject(Reject::new(Code::BAD_REQUEST, reason)),
        }
    }
}

/// True when `name` can be one topic level.
fn valid_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#', '\0'])
}

/// Builds the rule from its config, or refuses naming the key and the fix.
pub fn init(config: &Config) -> Result<Box<dyn Rule>, String> {
    let mut devices = Vec::new();
    let mut topic = "devices/{device}/{kind}".to_string();
    let mut qos = None;
    for (key, value) in config.entries() {
        if let Some(token) = key.strip_prefix("devices.") {
            if !valid_level(value) {
                return Err(format!(
                    "devices: the device of a token must be one topic level (no /, + or #), found {value:?}"
                ));
            }
            devices.push((token.to_string(), value.clone()));
            continue;
        }
        match key.as_str() {
            "topic" => topic = value.clone(),
            "qos" => match value.as_str() {
                "0" | "1" | "2" => qos = value.parse().ok(),
                _ => return Err(format!("qos: expected 0, 1 or 2, found {value:?}")),
            },
            "devices" => {} // an empty map
            _ => return Err(format!("{key}: unknown key; use devices, topic or qos")),
        }
    }
    if devices.is_empty() {
        return Err(
            "devices: required: map each access token to a device name, e.g. devices: {A1_TEST_TOKEN: thermostat-1}"
                .into(),
        );
    }
    let sample = topic.replace("{device}", "d").replace("{kind}", "telemetry");
    if !topic.contains("{device}") || !sluice_sdk::topic::valid_topic(&sample) {
        return Err(format!("topic: {topic:?} must be a topic containing {{device}} (and usually {{kind}})"));
    }
    Ok(Box::new(Thingsboard { devices, topic, qos }))
}

sluice_sdk::export_rule!(init, [authenticate, route, uplink]);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule() -> Box<dyn Rule> {
        init(&Config::from_entries(vec![("devices.T1".into(), "thermostat-1".into())])).unwrap()
    }

    fn post(path: &str) -> Request {
        Request { method: Method::Post, path: path.split('/').map(String::from).collect(), ..Request::default() }
    }

    #[test]
    fn a_known_token_is_the_device_and_publishes_under_it() {
        let r = rule();
        let req = post("api/v1/T1/telemetry");
        let Auth::Allow(who) = r.authenticate(&req) else { panic!("not allowed") };
        assert_eq!(who, Principal::new("thermostat-1"));
        assert_eq!(r.route(&req, &who), Route::Publish(Publish::to("devices/thermostat-1/telemetry")));
        let req = post("api/v1/T1/attributes");
        assert_eq!(r.route(&req, &who), Route::Publish(Publish::to("devices/thermostat-1/attributes")));
    }

    #[test]
    fn an_unknown_token_is_unauthorized_and_never_echoed() {
        let Auth::Deny(reject) = rule().authenticate(&post("api/v1/SECRET/telemetry")) else { panic!("not denied") };
        assert_eq!(reject.code, Code::UNAUTHORIZED);
        assert!(!reject.reason.contains("SECRET"));
    }

    #[test]
    fn other_paths_and_methods() {
        let r = rule();
        assert_eq!(r.authenticate(&post("mqtt/a")), Auth::Continue);
        assert_eq!(r.authenticate(&post("api/v1/T1/rpc")), Auth::Continue);
        let get = Request { method: Method::Get, ..post("api/v1/T1/telemetry") };
        assert!(matches!(
            r.route(&get, &Principal::new("thermostat-1")),
            Route::Reject(Reject { code: Code::METHOD_NOT_ALLOWED, .. })
        ));
    }

    #[test]
    fn cbor_and_senml_become_one_json_object() {
        let r = rule();
        let who = Principal::new("thermostat-1");
        let up = |payload: &[u8], cf| Uplink {
            topic: "devices/thermostat-1/telemetry".into(),
            payload: payload.to_vec(),
            content_format: Some(cf),
        };
        // {"temperature": 21.5}
        let cbor = [0xa1, 0x6b, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r', b'e', 0xf9, 0x4d, 0x60];
        let json = |t: Transform| match t {
            Transform::Replace { payload, content_format: Some(50) } => String::from_utf8(payload).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(json(r.uplink(&up(&cbor, 60), &who)), r#"{"temperature":21.5}"#);
        assert_eq!(
            json(r.uplink(&up(br#"[{"n":"temperature","v":21.5},{"n":"on","vb":true}]"#, 110), &who)),
            r#"{"temperature":21.5,"on":true}"#
        );
        assert_eq!(r.uplink(&up(br#"{"a":1}"#, 50), &who), Transform::Continue);
        assert!(matches!(r.uplink(&up(&[0xa1], 60), &who), Transform::Reject(Reject { code: Code::BAD_REQUEST, .. })));
        let other = Uplink { topic: "elsewhere".into(), ..up(&cbor, 60) };
        assert_eq!(r.uplink(&other, &who), Transform::Continue);
    }

    #[test]
    fn bad_config_names_the_key() {
        let refuse = |e: &[(&str, &str)]| {
            init(&Config::from_entries(e.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())).err().unwrap()
        };
        assert!(refuse(&[]).starts_with("devices: required"));
        assert!(refuse(&[("devices.T", "a/b")]).starts_with("devices: the device"));
        assert!(refuse(&[("devices.T", "a"), ("qos", "3")]).starts_with("qos:"));
        assert!(refuse(&[("devices.T", "a"), ("topic", "x/{kind}")]).starts_with("topic:"));
        assert!(refuse(&[("devices.T", "a"), ("tpoic", "x")]).starts_with("tpoic: unknown key"));
    }
}
