//! Why a request was not carried out, and the one mapping from that to a CoAP response.
//!
//! The side that failed picks the code: the device's request (4.xx), the broker (5.02 when it
//! refused, 5.03 with Max-Age when it is unreachable, slow or its queue is full — the device
//! should retry), or a rule (whatever the rule chose; 5.00 when it failed). The diagnostic
//! payload names the fix and never contains a secret.

use sluice_sdk::{Access, Code, Reject};

use super::SessionError;
use crate::coap::Response;
use crate::mqtt::{PublishError, SubscribeError};

/// A request that was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A rule refused the request.
    #[error("{}", .0.reason)]
    Rejected(Reject),
    /// No rule routes this path.
    #[error("no resource at /{0}")]
    NotFound(String),
    /// Connection mode: unknown or expired session.
    #[error("{0}")]
    Session(SessionError),
    /// Not a valid MQTT topic or filter.
    #[error("invalid MQTT topic {0:?}: no empty topic, no + or # in a publish topic, # only at the end")]
    InvalidTopic(String),
    /// The rules do not permit the action.
    #[error("not permitted to {verb} {topic:?}", verb = access_verb(*.0), topic = .1)]
    Forbidden(Access, String),
    /// The gateways' own topics (the session revocations under `sessions.topic`).
    #[error("topic {0:?} is reserved for the gateways' session records (sessions.topic); use another topic")]
    Reserved(String),
    /// PubSub: the topic has no value.
    #[error("no value at topic {0:?}")]
    NoValue(String),
    /// The broker did not take the publish.
    #[error("{}", broker_reason(.0))]
    Broker(PublishError),
    /// The gateway waited for a broker it is not connected to (unreachable, or refusing the
    /// connection: the gateway's log says why and what to change).
    #[error("the gateway is not connected to the MQTT broker (its log says why); retry after Max-Age seconds")]
    Disconnected,
    /// The broker did not take the subscription.
    #[error("{}", subscribe_reason(.0))]
    Subscribe(SubscribeError),
}

fn access_verb(access: Access) -> &'static str {
    match access {
        Access::Publish => "publish to",
        Access::Subscribe => "subscribe to",
    }
}

fn broker_reason(e: &PublishError) -> String {
    match e {
        PublishError::QueueFull => "the broker queue is full; retry after Max-Age seconds".into(),
        PublishError::Rejected(reason) => format!("the broker refused the message: {reason}"),
        PublishError::Closed => "the gateway is shutting down; retry after Max-Age seconds".into(),
        PublishError::TimedOut => "the broker did not answer in time; retry after Max-Age seconds".into(),
    }
}

fn subscribe_reason(e: &SubscribeError) -> String {
    match e {
        SubscribeError::Rejected(reason) => format!("the broker refused the subscription: {reason}"),
        SubscribeError::Closed => "the gateway is shutting down; retry after Max-Age seconds".into(),
    }
}

impl Failure {
    /// The CoAP code.
    pub fn code(&self) -> Code {
        match self {
            Failure::Rejected(r) => r.code,
            Failure::NotFound(_) | Failure::NoValue(_) => Code::NOT_FOUND,
            Failure::Session(SessionError::Unknown) => Code::UNAUTHORIZED,
            Failure::Session(SessionError::Full) => Code::SERVICE_UNAVAILABLE,
            Failure::Session(SessionError::InUse) => Code::FORBIDDEN,
            Failure::InvalidTopic(_) => Code::BAD_REQUEST,
            Failure::Forbidden(..) | Failure::Reserved(_) => Code::FORBIDDEN,
            Failure::Broker(PublishError::Rejected(_)) | Failure::Subscribe(SubscribeError::Rejected(_)) => {
                Code::BAD_GATEWAY
            }
            Failure::Broker(_) | Failure::Subscribe(_) | Failure::Disconnected => Code::SERVICE_UNAVAILABLE,
        }
    }

    /// The response: the code, the diagnostic, and Max-Age on 5.03 (when to retry).
    pub fn response(&self, retry_after: u32) -> Response {
        let code = self.code();
        Response {
            code: code.0,
            payload: self.to_string().into_bytes(),
            max_age: (code == Code::SERVICE_UNAVAILABLE).then_some(retry_after),
            ..Response::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_gets_its_code() {
        assert_eq!(Failure::Forbidden(Access::Publish, "a".into()).code(), Code::FORBIDDEN);
        assert_eq!(Failure::Session(SessionError::Unknown).code(), Code::UNAUTHORIZED);
        assert_eq!(Failure::Session(SessionError::InUse).code(), Code::FORBIDDEN);
        assert_eq!(Failure::Broker(PublishError::QueueFull).code(), Code::SERVICE_UNAVAILABLE);
        assert_eq!(Failure::Broker(PublishError::Rejected("x".into())).code(), Code::BAD_GATEWAY);
        assert_eq!(Failure::NoValue("t".into()).code(), Code::NOT_FOUND);
    }

    #[test]
    fn unavailable_answers_say_when_to_retry() {
        let r = Failure::Broker(PublishError::TimedOut).response(7);
        assert_eq!(r.code, Code::SERVICE_UNAVAILABLE.0);
        assert_eq!(r.max_age, Some(7));
        assert!(String::from_utf8(r.payload).unwrap().contains("retry"));
        assert_eq!(Failure::Forbidden(Access::Subscribe, "a/#".into()).response(7).max_age, None);
    }
}
