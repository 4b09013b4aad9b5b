//! How the configuration is shown without its secrets ([`super::Config::redacted_json`]): the
//! `serialize_with` helpers of the `*Config` types, the broker URL's credentials, and the
//! free-form rule configs (any key that names a secret).

use std::path::PathBuf;

use serde::Serializer;

/// What a secret's value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// The words that make a key of a rule's free-form config a secret (lower case, matched
/// anywhere in the key: `password_hash`, `api_key`, `keys`, `psk`, `client_secret`, …).
const SECRET_WORDS: &[&str] = &["password", "passwd", "secret", "token", "key", "psk", "credential", "private"];

/// Whether a free-form key (`password`, `apiKey`, `users.0.password_hash`) holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| key.contains(word))
}

/// `serialize_with` for an optional secret: `null` when unset, [`REDACTED`] when set, never
/// the value.
pub fn secret<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for an optional path: the path as text (lossy: a path that is not UTF-8
/// is still shown), `null` when unset.
pub fn path<S: Serializer>(value: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(path) => s.serialize_str(&path.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for a rule's free-form config: as JSON, with every key that names a
/// secret ([`is_secret_key`]) replaced by [`REDACTED`], at any depth.
pub fn rule_config<S: Serializer>(value: &serde_yaml::Value, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&value_to_json(value), s)
}

/// A YAML value as JSON with its secrets redacted. Keys that are not strings are written as
/// YAML (`1`, `true`), tags are dropped (their value is kept).
pub fn value_to_json(value: &serde_yaml::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        serde_yaml::Value::Null => Json::Null,
        serde_yaml::Value::Bool(b) => Json::Bool(*b),
        serde_yaml::Value::Number(n) => serde_json::to_value(n).unwrap_or(Json::Null),
        serde_yaml::Value::String(s) => Json::String(s.clone()),
        serde_yaml::Value::Sequence(items) => Json::Array(items.iter().map(value_to_json).collect()),
        serde_yaml::Value::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                let v =
                    if is_secret_key(&key) && !v.is_null() { Json::String(REDACTED.into()) } else { value_to_json(v) };
                out.insert(key, v);
            }
            Json::Object(out)
        }
        serde_yaml::Value::Tagged(tagged) => value_to_json(&tagged.value),
    }
}

/// `mqtt.broker` without credentials: in each node's URL, whatever comes before an `@` (user
/// and password), a query or fragment, and a port that is not a number (the tail of a
/// password cut by a comma) become [`REDACTED`]. Nodes are separated by the commas that
/// start a new URL (`,mqtt://`), so a comma inside a password does not split it.
pub fn broker_url(urls: &str) -> String {
    let mut nodes: Vec<&str> = Vec::new();
    let mut start = 0;
    for (i, _) in urls.match_indices(',') {
        let next = urls[i + 1..].trim_start();
        if starts_with_scheme(next) {
            nodes.push(&urls[start..i]);
            start = i + 1;
        }
    }
    nodes.push(&urls[start..]);
    nodes.into_iter().map(broker_node).collect::<Vec<_>>().join(",")
}

/// Whether `text` starts like a URL (`letters://`).
fn starts_with_scheme(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// One node's URL without credentials (see [`broker_url`]).
fn broker_node(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (format!("{REDACTED}@"), &rest[at + 1..]),
        None => (String::new(), rest),
    };
    let (rest, query) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], format!("{}{REDACTED}", &rest[i..=i])),
        None => (rest, String::new()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once(':') {
        // The colon is inside an IPv6 address with no port (`[::1]`).
        Some((host, _)) if host.contains('[') && !host.ends_with(']') => authority.to_string(),
        Some((host, port)) if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}:{REDACTED}")
        }
        _ => authority.to_string(),
    };
    format!("{scheme}{userinfo}{authority}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_lose_their_credentials_only() {
        for (url, shown) in [
            ("mqtt://broker.local:1883", "mqtt://broker.local:1883"),
            ("mqtts://[::1]:8883/", "mqtts://[::1]:8883/"),
            ("mqtt://a:1883, mqtt://b:1883", "mqtt://a:1883, mqtt://b:1883"),
            ("mqtt://tom:hunter2@broker.local:1883", "mqtt://<redacted>@broker.local:1883"),
            ("mqtt://tom:pa/ss@w@rd@broker.local", "mqtt://<redacted>@broker.local"),
            ("mqtt://tom:hun,ter2@b:1883,mqtt://c:1883", "mqtt://<redacted>@b:1883,mqtt://c:1883"),
            ("mqtt://tom:hunter2", "mqtt://tom:<redacted>"),
            ("mqtt://b:1883?password=hunter2", "mqtt://b:1883?<redacted>"),
            ("tom:hunter2@b", "<redacted>@b"),
            ("tcp://x", "tcp://x"),
        ] {
            assert_eq!(broker_url(url), shown, "{url}");
            assert!(!broker_url(url).contains("hunter2"), "{url}");
        }
    }

    #[test]
    fn free_form_secrets_are_redacted_at_any_depth() {
        let yaml: serde_yaml::Value = serde_yaml::from_str(
            "users:\n  - username: tom\n    password: pw1\n    password_hash: h\nnested:\n  apiKey: k\n  deeper: [{client_secret: s, psk: {dev: p}}]\n  keep: 3\n1: one\nempty_token: ~\n",
        )
        .unwrap();
        let json = value_to_json(&yaml);
        assert_eq!(json["users"][0]["username"], "tom");
        assert_eq!(json["users"][0]["password"], REDACTED);
        assert_eq!(json["users"][0]["password_hash"], REDACTED);
        assert_eq!(json["nested"]["apiKey"], REDACTED);
        assert_eq!(json["nested"]["deeper"][0]["client_secret"], REDACTED);
        assert_eq!(json["nested"]["deeper"][0]["psk"], REDACTED);
        assert_eq!(json["nested"]["keep"], 3);
        assert_eq!(json["1"], "one");
        assert!(json["empty_token"].is_null());
        let text = json.to_string();
        for secret in ["pw1", "\"h\"", "\"k\"", "\"s\"", "\"p\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
