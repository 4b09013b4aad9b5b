//! # sluice-rule-senml: SenML and CBOR payloads become JSON on the way up
//!
//! An uplink transform. A request's payload, by its Content-Format:
//!
//! | Content-Format | becomes (Content-Format 50, `application/json`) |
//! |---|---|
//! | 110 `application/senml+json` | the pack, resolved (RFC 8428 §4.6), as JSON records — or one object, see `output` |
//! | 112 `application/senml+cbor` | the same, from CBOR (integer labels become their names; `vd` becomes base64url) |
//! | 60 `application/cbor` | the item as JSON (byte strings base64url, non-text map keys as text) |
//! | anything else | unchanged |
//!
//! A payload that does not parse is refused with 4.00 and the reason (where and what), unless
//! `on_error` says otherwise.
//!
//! ## Config
//! ```yaml
//! output: records     # records (a SenML+JSON array) | object ({"name": value, …})
//! resolve: true       # apply base values (bn, bt, bu, bv, bs); records output only
//! cbor: true          # also turn plain CBOR (60) into JSON
//! on_error: reject    # reject (4.00) | pass (leave the payload) | drop
//! topics: ["devices/+/telemetry"]   # optional: only messages to these topic filters
//! ```
//!
//! The decoders are the `sluice-senml` library (`rules/senml/codec`), which other rules use
//! directly (`examples/thingsboard` does): a rule crate must not depend on another rule crate,
//! or the second rule's exports would end up in its module.

use sluice_sdk::content_format::JSON;
use sluice_sdk::{Code, Config, Principal, Reject, Rule, Transform, Uplink};

pub use sluice_senml::{Options, Output, to_json};

/// The rule's name.
pub const NAME: &str = "senml";

/// What to do with a payload that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnError {
    Reject,
    Pass,
    Drop,
}

struct Senml {
    options: Options,
    on_error: OnError,
    topics: Vec<String>,
}

impl Rule for Senml {
    fn uplink(&self, msg: &Uplink, _who: &Principal) -> Transform {
        if !self.topics.is_empty() && !self.topics.iter().any(|f| sluice_sdk::topic::matches(f, &msg.topic)) {
            return Transform::Continue;
        }
        match to_json(&msg.payload, msg.content_format, &self.options) {
            Ok(None) => Transform::Continue,
            Ok(Some(json)) => Transform::Replace { payload: json.into_bytes(), content_format: Some(JSON) },
            Err(reason) => match self.on_error {
                OnError::Reject => Transform::Reject(Reject::new(Code::BAD_REQUEST, reason)),
                OnError::Pass => Transform::Continue,
                OnError::Drop => Transform::Drop,
            },
        }
    }
}

/// Builds the rule from its config, or refuses naming the key and the fix.
pub fn init(config: &Config) -> Result<Box<dyn Rule>, String> {
    let mut topics = Vec::new();
    for (key, value) in config.entries() {
        match key.split('.').next().unwrap_or_default() {
            "output" | "resolve" | "cbor" | "on_error" => {}
            "topics" => {
                if !sluice_sdk::topic::valid_filter(value) {
                    return Err(format!("{key}: {value:?} is not a topic filter"));
                }
                topics.push(value.clone());
            }
            _ => return Err(format!("{key}: unknown key; use output, resolve, cbor, on_error or topics")),
        }
    }
    let output = match config.get("output") {
        None | Some("records") => Output::Records,
        Some("object") => Output::Object,
        Some(other) => return Err(format!("output: expected records or object, found {other:?}")),
    };
    let on_error = match config.get("on_error") {
        None | Some("reject") => OnError::Reject,
        Some("pass") => OnError::Pass,
        Some("drop") => OnError::Drop,
        Some(other) => return Err(format!("on_error: expected reject, pass or drop, found {other:?}")),
    };
    let options = Options { output, resolve: config.bool_or("resolve", true)?, cbor: config.bool_or("cbor", true)? };
    Ok(Box::new(Senml { options, on_error, topics }))
}

sluice_sdk::export_rule!(init, [uplink]);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(entries: &[(&str, &str)]) -> Box<dyn Rule> {
        init(&Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())).unwrap()
    }

    fn up(payload: &[u8], cf: u16) -> Uplink {
        Uplink { topic: "devices/d/telemetry".into(), payload: payload.to_vec(), content_format: Some(cf) }
    }

    fn json(t: &Transform) -> String {
        match t {
            Transform::Replace { payload, content_format: Some(50) } => String::from_utf8(payload.clone()).unwrap(),
            other => panic!("not JSON: {other:?}"),
        }
    }

    // [{-2: "d/", 0: "temp", 1: "Cel", 2: 21.5}, {0: "on", 4: true}]
    const SENML_CBOR_PACK: &[u8] = &[
        0x82, 0xa4, 0x21, 0x62, b'd', b'/', 0x00, 0x64, b't', b'e', b'm', b'p', 0x01, 0x63, b'C', b'e', b'l', 0x02,
        0xf9, 0x4d, 0x60, 0xa2, 0x00, 0x62, b'o', b'n', 0x04, 0xf5,
    ];

    #[test]
    fn senml_cbor_becomes_resolved_json_records() {
        let t = rule(&[]).uplink(&up(SENML_CBOR_PACK, 112), &Principal::default());
        assert_eq!(json(&t), r#"[{"n":"d/temp","u":"Cel","v":21.5},{"n":"d/on","vb":true}]"#);
    }

    #[test]
    fn the_object_output_maps_names_to_values() {
        let t = rule(&[("output", "object")]).uplink(&up(SENML_CBOR_PACK, 112), &Principal::default());
        assert_eq!(json(&t), r#"{"d/temp":21.5,"d/on":true}"#);
        let pack = br#"[{"bn":"room/","n":"t","v":20},{"n":"h","v":40}]"#;
        assert_eq!(
            json(&rule(&[("output", "object")]).uplink(&up(pack, 110), &Principal::default())),
            r#"{"room/t":20,"room/h":40}"#
        );
    }

    #[test]
    fn plain_cbor_becomes_json_and_other_formats_pass() {
        let t = rule(&[]).uplink(&up(&[0xa1, 0x61, b'a', 0x01], 60), &Principal::default());
        assert_eq!(json(&t), r#"{"a":1}"#);
        assert_eq!(
            rule(&[("cbor", "false")]).uplink(&up(&[0xa1, 0x61, b'a', 0x01], 60), &Principal::default()),
            Transform::Continue
        );
        assert_eq!(rule(&[]).uplink(&up(b"21.5", 0), &Principal::default()), Transform::Continue);
        let none = Uplink { content_format: None, ..up(b"x", 0) };
        assert_eq!(rule(&[]).uplink(&none, &Principal::default()), Transform::Continue);
    }

    #[test]
    fn a_bad_payload_follows_on_error() {
        let bad = up(&[0x82, 0x01], 112);
        assert_eq!(
            rule(&[]).uplink(&bad, &Principal::default()),
            Transform::Reject(Reject::new(Code::BAD_REQUEST, "SenML+CBOR: more items than bytes left at byte 1"))
        );
        assert_eq!(rule(&[("on_error", "pass")]).uplink(&bad, &Principal::default()), Transform::Continue);
        assert_eq!(rule(&[("on_error", "drop")]).uplink(&bad, &Principal::default()), Transform::Drop);
    }

    #[test]
    fn topics_limit_the_transform() {
        let r = rule(&[("topics.0", "devices/+/telemetry")]);
        assert!(matches!(r.uplink(&up(SENML_CBOR_PACK, 112), &Principal::default()), Transform::Replace { .. }));
        let other = Uplink { topic: "other".into(), ..up(SENML_CBOR_PACK, 112) };
        assert_eq!(r.uplink(&other, &Principal::default()), Transform::Continue);
    }

    #[test]
    fn bad_config_names_the_key() {
        let refuse = |entries: &[(&str, &str)]| {
            init(&Config::from_entries(entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
                .err()
                .unwrap()
        };
        assert_eq!(refuse(&[("outptu", "x")]), "outptu: unknown key; use output, resolve, cbor, on_error or topics");
        assert_eq!(refuse(&[("output", "table")]), "output: expected records or object, found \"table\"");
        assert_eq!(refuse(&[("topics.0", "a/#/b")]), "topics.0: \"a/#/b\" is not a topic filter");
        assert_eq!(refuse(&[("resolve", "yes")]), "resolve: expected true or false, found \"yes\"");
    }
}
