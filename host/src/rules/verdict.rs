//! The SDK's verdicts as JSON, the way test vectors write them (`"continue"`,
//! `{"publish": {"topic": …}}`, `{"deny": {"code": "4.01"}}`, …), and the comparison of an
//! answer with an expectation: by shape, every key written must match, keys left out are not
//! compared, codes compare as `"4.01"` or `4.01`, payloads may be expected as `payload` (UTF-8),
//! `payload_hex` or `payload_json`.

use serde_json::{Map, Value, json};
use sluice_sdk::{Auth, Authz, Code, Publish, Reject, Route, Transform};

/// True when every key of `expected` matches `actual` (keys left out are not compared).
pub fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, ev)| match a.get(k) {
            Some(av) if k == "code" => code_text(ev) == code_text(av),
            Some(av) => matches(ev, av),
            None => ev.is_null(),
        }),
        _ => expected == actual,
    }
}

/// A code written as `"4.01"` or (YAML without quotes) `4.01`.
fn code_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => n.as_f64().map(|f| format!("{f:.2}")),
        _ => None,
    }
}

/// The part of `actual` that `expected` looks at (the whole answer when the shape differs).
pub(crate) fn project(actual: &Value, expected: &Value) -> Value {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) if a.keys().any(|k| e.contains_key(k)) => {
            let kept: Map<String, Value> = a
                .iter()
                .filter(|(k, _)| e.contains_key(*k))
                .map(|(k, v)| (k.clone(), e.get(k).map(|ev| project(v, ev)).unwrap_or_else(|| v.clone())))
                .collect();
            Value::Object(kept)
        }
        _ => actual.clone(),
    }
}

fn code(c: Code) -> Value {
    Value::String(c.to_string())
}

fn reject_json(r: &Reject) -> Value {
    json!({"code": code(r.code), "reason": r.reason})
}

fn pairs(list: &[(String, String)]) -> Value {
    Value::Object(list.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

/// A payload in the three forms an expectation may use.
fn payload_fields(out: &mut Map<String, Value>, bytes: &[u8]) {
    out.insert("payload".into(), std::str::from_utf8(bytes).map_or(Value::Null, |s| Value::String(s.into())));
    out.insert("payload_hex".into(), Value::String(hex::encode(bytes)));
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        out.insert("payload_json".into(), v);
    }
}

pub(crate) fn auth_json(a: &Auth) -> Value {
    match a {
        Auth::Continue => json!("continue"),
        Auth::Allow(p) => {
            json!({"allow": {"client_id": p.client_id, "username": p.username, "attributes": pairs(&p.attributes)}})
        }
        Auth::Session { client_id, token } => json!({"session": {"client_id": client_id, "token": token}}),
        Auth::Deny(r) => json!({ "deny": reject_json(r) }),
    }
}

fn publish_json(p: &Publish) -> Value {
    json!({"topic": p.topic, "qos": p.qos, "retain": p.retain, "expiry": p.expiry, "user_properties": pairs(&p.user_properties)})
}

pub(crate) fn route_json(r: &Route) -> Value {
    match r {
        Route::Continue => json!("continue"),
        Route::Publish(p) => json!({ "publish": publish_json(p) }),
        Route::SetValue(p) => json!({ "set_value": publish_json(p) }),
        Route::Subscribe { filter, qos } => json!({"subscribe": {"filter": filter, "qos": qos}}),
        Route::Unsubscribe { filter } => json!({"unsubscribe": {"filter": filter}}),
        Route::Read { topic } => json!({"read": {"topic": topic}}),
        Route::ObserveValue { topic, qos } => json!({"observe_value": {"topic": topic, "qos": qos}}),
        Route::Delete { topic } => json!({"delete": {"topic": topic}}),
        Route::Connect => json!("connect"),
        Route::Heartbeat => json!("heartbeat"),
        Route::Disconnect => json!("disconnect"),
        Route::Respond { code: c, payload, content_format } => {
            let mut out = Map::new();
            out.insert("code".into(), code(*c));
            payload_fields(&mut out, payload);
            out.insert("content_format".into(), json!(content_format));
            json!({ "respond": out })
        }
        Route::Reject(r) => json!({ "reject": reject_json(r) }),
    }
}

pub(crate) fn authz_json(a: &Authz) -> Value {
    match a {
        Authz::Continue => json!("continue"),
        Authz::Allow => json!("allow"),
        Authz::Deny => json!("deny"),
    }
}

pub(crate) fn transform_json(t: &Transform) -> Value {
    match t {
        Transform::Continue => json!("continue"),
        Transform::Replace { payload, content_format } => {
            let mut out = Map::new();
            payload_fields(&mut out, payload);
            out.insert("content_format".into(), json!(content_format));
            json!({ "replace": out })
        }
        Transform::Drop => json!("drop"),
        Transform::Reject(r) => json!({ "reject": reject_json(r) }),
    }
}
