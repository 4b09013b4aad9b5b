//! The outputs of a call, checked as they are set, and the decoding of a verdict with its
//! outputs into the SDK's values.

use sluice_sdk::abi::{field, hook, status};
use sluice_sdk::{Auth, Authz, Code, Principal, Publish, Reject, Route, Transform, topic};

use super::Hook;

/// The largest text output (a topic, a client id, a property): MQTT's string limit.
pub(crate) const MAX_TEXT: usize = 65_535;
/// The largest `OUT_REASON`: it goes into a CoAP diagnostic payload.
pub(crate) const MAX_REASON: usize = 1024;
/// The largest `OUT_PAYLOAD` (also bounded by the rule's memory limit).
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;

/// Why a verdict and its outputs do not make an answer the host can act on (the rule's failure,
/// answered by the hook's fail policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VerdictError {
    /// The host refused one of the call's outputs, so the verdict misses it.
    #[error("the host refused output field {field} ({}), so the verdict is incomplete", status_name(*.status))]
    Refused {
        /// The field.
        field: i32,
        /// The status `set` returned.
        status: i32,
    },
    /// A verdict without an output it needs (`AUTH_ALLOW without OUT_CLIENT_ID`).
    #[error("{verdict} without {output}")]
    Missing {
        /// The verdict's name.
        verdict: &'static str,
        /// The output's name.
        output: &'static str,
    },
    /// A deny or reject with a code that is not an error.
    #[error("{verdict} with code {code}, which is not an error code (4.xx or 5.xx)")]
    NotAnErrorCode {
        /// The verdict's name.
        verdict: &'static str,
        /// The code.
        code: Code,
    },
    /// A subscribe or unsubscribe with an invalid filter.
    #[error("{verdict} with an invalid topic filter {topic:?}")]
    Filter {
        /// The verdict's name.
        verdict: &'static str,
        /// The filter.
        topic: String,
    },
    /// A publish, read or delete with wildcards in its topic.
    #[error("{verdict} with topic {topic:?}: a topic to publish to or read has no wildcards")]
    Wildcards {
        /// The verdict's name.
        verdict: &'static str,
        /// The topic.
        topic: String,
    },
    /// A negative verdict: the rule's own failure status.
    #[error("{} returned {verdict}: a failure ({})", .hook.export(), status_name(*.verdict))]
    Failed {
        /// The hook.
        hook: Hook,
        /// The verdict.
        verdict: i32,
    },
    /// A number that is not a verdict of the hook.
    #[error("{} returned {verdict}: not a verdict of this hook in ABI v1", .hook.export())]
    Unknown {
        /// The hook.
        hook: Hook,
        /// The verdict.
        verdict: i32,
    },
}

/// `verdict` without `output`.
fn missing(verdict: &'static str, output: &'static str) -> VerdictError {
    VerdictError::Missing { verdict, output }
}

/// The outputs the guest has set during the current call, already validated.
#[derive(Default)]
pub(crate) struct Outputs {
    client_id: Option<String>,
    username: Option<String>,
    attributes: Vec<(String, String)>,
    token: Option<String>,
    topic: Option<String>,
    qos: Option<u8>,
    retain: Option<bool>,
    expiry: Option<u32>,
    user_properties: Vec<(String, String)>,
    code: Option<u8>,
    reason: Option<String>,
    payload: Option<Vec<u8>>,
    content_format: Option<u16>,
    /// Bytes held by the outputs above.
    total: usize,
    /// The first `set` the host refused in this call: `(field, status)`.
    pub(super) refused: Option<(i32, i32)>,
}

impl Outputs {
    /// The reason the rule gave, if any (for init refusals).
    pub(crate) fn take_reason(&mut self) -> Option<String> {
        self.reason.take()
    }

    /// Fails when the host refused one of the call's outputs: a verdict is never acted on
    /// without the output the rule meant to give it, even if the rule ignored the status.
    pub(crate) fn check_refusals(&self) -> Result<(), VerdictError> {
        match self.refused {
            None => Ok(()),
            Some((field, status)) => Err(VerdictError::Refused { field, status }),
        }
    }

    pub(super) fn set_bytes(&mut self, field: i32, value: &[u8], max_total: usize) -> i32 {
        let cap = match field {
            field::OUT_REASON => MAX_REASON,
            field::OUT_PAYLOAD => MAX_PAYLOAD.min(max_total),
            _ => MAX_TEXT,
        };
        if value.len() > cap || self.total.saturating_add(value.len()) > max_total {
            return status::TOO_LARGE;
        }
        if field == field::OUT_PAYLOAD {
            self.total += value.len();
            self.total -= self.payload.replace(value.to_vec()).map_or(0, |old| old.len());
            return status::OK;
        }
        let Ok(text) = std::str::from_utf8(value) else { return status::INVALID };
        let slot = match field {
            field::OUT_ATTRIBUTE | field::OUT_USER_PROPERTY => {
                let (k, v) = text.split_once('\0').unwrap_or((text, ""));
                let list = if field == field::OUT_ATTRIBUTE { &mut self.attributes } else { &mut self.user_properties };
                list.push((k.to_string(), v.to_string()));
                self.total += value.len();
                return status::OK;
            }
            field::OUT_TOPIC if text.is_empty() || text.contains('\0') => return status::INVALID,
            field::OUT_CLIENT_ID | field::OUT_USERNAME | field::OUT_TOKEN if text.contains('\0') => {
                return status::INVALID;
            }
            field::OUT_CLIENT_ID => &mut self.client_id,
            field::OUT_USERNAME => &mut self.username,
            field::OUT_TOKEN => &mut self.token,
            field::OUT_TOPIC => &mut self.topic,
            field::OUT_REASON => &mut self.reason,
            _ => return status::UNKNOWN_FIELD,
        };
        self.total += value.len();
        self.total -= slot.replace(text.to_string()).map_or(0, |old| old.len());
        status::OK
    }

    pub(super) fn set_int(&mut self, field: i32, value: i64) -> i32 {
        let ok = match field {
            field::OUT_QOS => u8::try_from(value).ok().filter(|q| *q <= 2).map(|q| self.qos = Some(q)),
            field::OUT_RETAIN => matches!(value, 0 | 1).then(|| self.retain = Some(value == 1)),
            field::OUT_EXPIRY => u32::try_from(value).ok().map(|e| self.expiry = Some(e)),
            field::OUT_CODE => {
                u8::try_from(value).ok().filter(|c| matches!(Code(*c).class(), 2 | 4 | 5)).map(|c| self.code = Some(c))
            }
            field::OUT_CONTENT_FORMAT => u16::try_from(value).ok().map(|cf| self.content_format = Some(cf)),
            _ => return status::UNKNOWN_FIELD,
        };
        if ok.is_some() { status::OK } else { status::INVALID }
    }

    /// The refusal of a deny/reject verdict: `OUT_CODE` (or `default`), a 4.xx or 5.xx code,
    /// and `OUT_REASON`.
    fn reject(&mut self, verdict: &'static str, default: Option<Code>) -> Result<Reject, VerdictError> {
        let code = self.code.map(Code).or(default).ok_or(missing(verdict, "OUT_CODE"))?;
        if !matches!(code.class(), 4 | 5) {
            return Err(VerdictError::NotAnErrorCode { verdict, code });
        }
        Ok(Reject { code, reason: self.reason.take().unwrap_or_default() })
    }

    fn topic(&mut self, verdict: &'static str, filter: bool) -> Result<String, VerdictError> {
        let topic = self.topic.take().ok_or(missing(verdict, "OUT_TOPIC"))?;
        if filter && !topic::valid_filter(&topic) {
            return Err(VerdictError::Filter { verdict, topic });
        }
        if !filter && !topic::valid_topic(&topic) {
            return Err(VerdictError::Wildcards { verdict, topic });
        }
        Ok(topic)
    }

    fn publish(&mut self, verdict: &'static str) -> Result<Publish, VerdictError> {
        Ok(Publish {
            topic: self.topic(verdict, false)?,
            qos: self.qos,
            retain: self.retain.unwrap_or(false),
            expiry: self.expiry,
            user_properties: std::mem::take(&mut self.user_properties),
        })
    }
}

/// The name of a `set` status.
fn status_name(status: i32) -> &'static str {
    match status {
        status::NOT_WRITABLE => "NOT_WRITABLE: its hook may not write it",
        status::TOO_LARGE => "TOO_LARGE: over its size limit",
        status::INVALID => "INVALID: not a valid value for the field",
        status::UNKNOWN_FIELD => "UNKNOWN_FIELD: ABI v1 does not define it",
        _ => "the rule's own failure status",
    }
}

/// A verdict the host cannot act on.
fn bad_verdict(hook: Hook, verdict: i32) -> VerdictError {
    if verdict < 0 { VerdictError::Failed { hook, verdict } } else { VerdictError::Unknown { hook, verdict } }
}

/// Decodes an authenticate verdict.
pub(crate) fn decode_auth(verdict: i32, out: &mut Outputs) -> Result<Auth, VerdictError> {
    match verdict {
        hook::AUTH_CONTINUE => Ok(Auth::Continue),
        hook::AUTH_ALLOW => Ok(Auth::Allow(Principal {
            client_id: out.client_id.take().ok_or(missing("AUTH_ALLOW", "OUT_CLIENT_ID"))?,
            username: out.username.take(),
            attributes: std::mem::take(&mut out.attributes),
        })),
        hook::AUTH_SESSION => Ok(Auth::Session {
            client_id: out.client_id.take().ok_or(missing("AUTH_SESSION", "OUT_CLIENT_ID"))?,
            token: out.token.take().ok_or(missing("AUTH_SESSION", "OUT_TOKEN"))?,
        }),
        hook::AUTH_DENY => Ok(Auth::Deny(out.reject("AUTH_DENY", Some(Code::UNAUTHORIZED))?)),
        v => Err(bad_verdict(Hook::Authenticate, v)),
    }
}

/// Decodes a route verdict.
pub(crate) fn decode_route(verdict: i32, out: &mut Outputs) -> Result<Route, VerdictError> {
    Ok(match verdict {
        hook::ROUTE_CONTINUE => Route::Continue,
        hook::ROUTE_PUBLISH => Route::Publish(out.publish("ROUTE_PUBLISH")?),
        hook::ROUTE_SET_VALUE => Route::SetValue(out.publish("ROUTE_SET_VALUE")?),
        hook::ROUTE_SUBSCRIBE => Route::Subscribe { filter: out.topic("ROUTE_SUBSCRIBE", true)?, qos: out.qos },
        hook::ROUTE_UNSUBSCRIBE => Route::Unsubscribe { filter: out.topic("ROUTE_UNSUBSCRIBE", true)? },
        hook::ROUTE_READ => Route::Read { topic: out.topic("ROUTE_READ", false)? },
        hook::ROUTE_OBSERVE_VALUE => {
            Route::ObserveValue { topic: out.topic("ROUTE_OBSERVE_VALUE", false)?, qos: out.qos }
        }
        hook::ROUTE_DELETE => Route::Delete { topic: out.topic("ROUTE_DELETE", false)? },
        hook::ROUTE_CONNECT => Route::Connect,
        hook::ROUTE_HEARTBEAT => Route::Heartbeat,
        hook::ROUTE_DISCONNECT => Route::Disconnect,
        hook::ROUTE_RESPOND => Route::Respond {
            code: out.code.map(Code).ok_or(missing("ROUTE_RESPOND", "OUT_CODE"))?,
            payload: out.payload.take().unwrap_or_default(),
            content_format: out.content_format,
        },
        hook::ROUTE_REJECT => Route::Reject(out.reject("ROUTE_REJECT", None)?),
        v => return Err(bad_verdict(Hook::Route, v)),
    })
}

/// Decodes an authorize verdict.
pub(crate) fn decode_authz(verdict: i32) -> Result<Authz, VerdictError> {
    match verdict {
        hook::AUTHZ_CONTINUE => Ok(Authz::Continue),
        hook::AUTHZ_ALLOW => Ok(Authz::Allow),
        hook::AUTHZ_DENY => Ok(Authz::Deny),
        v => Err(bad_verdict(Hook::Authorize, v)),
    }
}

/// Decodes an uplink or downlink verdict.
pub(crate) fn decode_transform(hook: Hook, verdict: i32, out: &mut Outputs) -> Result<Transform, VerdictError> {
    match verdict {
        hook::TRANSFORM_CONTINUE => Ok(Transform::Continue),
        hook::TRANSFORM_REPLACE => Ok(Transform::Replace {
            payload: out.payload.take().ok_or(missing("TRANSFORM_REPLACE", "OUT_PAYLOAD"))?,
            content_format: out.content_format,
        }),
        hook::TRANSFORM_DROP => Ok(Transform::Drop),
        hook::TRANSFORM_REJECT => Ok(Transform::Reject(out.reject("TRANSFORM_REJECT", None)?)),
        v => Err(bad_verdict(hook, v)),
    }
}
