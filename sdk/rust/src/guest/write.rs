//! Outputs: writes a verdict's fields and returns its number (`sluice_abi::hook`).
//!
//! A `set` the host refuses (a QoS above 2, a topic over the size limit, …) makes the hook
//! return that negative status instead of the verdict, so the host applies the hook's fail
//! policy rather than acting on half a verdict; the refusal is logged.

use super::Fields;
use crate::{Auth, Code, Principal, Publish, Reject, Route, Transform};
use sluice_abi::{field, hook};

/// A refused `set`: the negative status the hook returns.
type Refused = i32;

fn put(host: &mut impl Fields, field: i32, value: &[u8]) -> Result<(), Refused> {
    check(field, host.set(field, value))
}

fn put_i64(host: &mut impl Fields, field: i32, value: i64) -> Result<(), Refused> {
    check(field, host.set_i64(field, value))
}

fn put_pair(host: &mut impl Fields, field: i32, key: &str, value: &str) -> Result<(), Refused> {
    let mut entry = Vec::with_capacity(key.len() + 1 + value.len());
    entry.extend_from_slice(key.as_bytes());
    entry.push(0);
    entry.extend_from_slice(value.as_bytes());
    put(host, field, &entry)
}

fn check(field: i32, status: i32) -> Result<(), Refused> {
    if status >= 0 {
        return Ok(());
    }
    crate::log::write(crate::log::Level::Error, &format!("the host refused output field {field}: status {status}"));
    Err(status)
}

fn reject(host: &mut impl Fields, code: Code, reason: &str) -> Result<(), Refused> {
    put_i64(host, field::OUT_CODE, i64::from(code.0))?;
    put(host, field::OUT_REASON, reason.as_bytes())
}

/// Returns `verdict` once `outputs` are written, or the refused status.
fn verdict(outputs: Result<(), Refused>, verdict: i32) -> i32 {
    outputs.map_or_else(|status| status, |()| verdict)
}

fn allow(host: &mut impl Fields, who: &Principal) -> Result<(), Refused> {
    put(host, field::OUT_CLIENT_ID, who.client_id.as_bytes())?;
    if let Some(name) = &who.username {
        put(host, field::OUT_USERNAME, name.as_bytes())?;
    }
    who.attributes.iter().try_for_each(|(k, v)| put_pair(host, field::OUT_ATTRIBUTE, k, v))
}

fn payload_and_format(host: &mut impl Fields, payload: &[u8], content_format: Option<u16>) -> Result<(), Refused> {
    put(host, field::OUT_PAYLOAD, payload)?;
    content_format.map_or(Ok(()), |cf| put_i64(host, field::OUT_CONTENT_FORMAT, i64::from(cf)))
}

/// Writes an [`Auth`] verdict.
pub fn auth(host: &mut impl Fields, auth: &Auth) -> i32 {
    match auth {
        Auth::Continue => hook::AUTH_CONTINUE,
        Auth::Allow(who) => verdict(allow(host, who), hook::AUTH_ALLOW),
        Auth::Session { client_id, token } => {
            let outputs = put(host, field::OUT_CLIENT_ID, client_id.as_bytes())
                .and_then(|()| put(host, field::OUT_TOKEN, token.as_bytes()));
            verdict(outputs, hook::AUTH_SESSION)
        }
        Auth::Deny(Reject { code, reason }) => verdict(reject(host, *code, reason), hook::AUTH_DENY),
    }
}

fn publish(host: &mut impl Fields, p: &Publish) -> Result<(), Refused> {
    put(host, field::OUT_TOPIC, p.topic.as_bytes())?;
    if let Some(qos) = p.qos {
        put_i64(host, field::OUT_QOS, i64::from(qos))?;
    }
    put_i64(host, field::OUT_RETAIN, i64::from(p.retain))?;
    if let Some(expiry) = p.expiry {
        put_i64(host, field::OUT_EXPIRY, i64::from(expiry))?;
    }
    p.user_properties.iter().try_for_each(|(k, v)| put_pair(host, field::OUT_USER_PROPERTY, k, v))
}

fn topic_qos(host: &mut impl Fields, topic: &str, qos: Option<u8>) -> Result<(), Refused> {
    put(host, field::OUT_TOPIC, topic.as_bytes())?;
    qos.map_or(Ok(()), |qos| put_i64(host, field::OUT_QOS, i64::from(qos)))
}

/// Writes a [`Route`] verdict.
pub fn route(host: &mut impl Fields, route: &Route) -> i32 {
    match route {
        Route::Continue => hook::ROUTE_CONTINUE,
        Route::Publish(p) => verdict(publish(host, p), hook::ROUTE_PUBLISH),
        Route::SetValue(p) => verdict(publish(host, p), hook::ROUTE_SET_VALUE),
        Route::Subscribe { filter, qos } => verdict(topic_qos(host, filter, *qos), hook::ROUTE_SUBSCRIBE),
        Route::Unsubscribe { filter } => verdict(topic_qos(host, filter, None), hook::ROUTE_UNSUBSCRIBE),
        Route::Read { topic } => verdict(topic_qos(host, topic, None), hook::ROUTE_READ),
        Route::ObserveValue { topic, qos } => verdict(topic_qos(host, topic, *qos), hook::ROUTE_OBSERVE_VALUE),
        Route::Delete { topic } => verdict(topic_qos(host, topic, None), hook::ROUTE_DELETE),
        Route::Connect => hook::ROUTE_CONNECT,
        Route::Heartbeat => hook::ROUTE_HEARTBEAT,
        Route::Disconnect => hook::ROUTE_DISCONNECT,
        Route::Respond { code, payload, content_format } => {
            let outputs = put_i64(host, field::OUT_CODE, i64::from(code.0))
                .and_then(|()| payload_and_format(host, payload, *content_format));
            verdict(outputs, hook::ROUTE_RESPOND)
        }
        Route::Reject(Reject { code, reason }) => verdict(reject(host, *code, reason), hook::ROUTE_REJECT),
    }
}

/// Writes a [`Transform`] verdict (uplink, downlink).
pub fn transform(host: &mut impl Fields, transform: &Transform) -> i32 {
    match transform {
        Transform::Continue => hook::TRANSFORM_CONTINUE,
        Transform::Replace { payload, content_format } => {
            verdict(payload_and_format(host, payload, *content_format), hook::TRANSFORM_REPLACE)
        }
        Transform::Drop => hook::TRANSFORM_DROP,
        Transform::Reject(Reject { code, reason }) => verdict(reject(host, *code, reason), hook::TRANSFORM_REJECT),
    }
}
