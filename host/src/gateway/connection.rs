//! Connection mode (EMQX's `/mqtt/connection`): `Connect` opens a session and answers its
//! token, requests that carry the token are authenticated by it, `Heartbeat` keeps it alive
//! and `Disconnect` ends it. The sessions themselves, and how the gateways of a deployment
//! share them, are in [`super::sessions`]; this file publishes and follows the revocations.

use std::time::Instant;

use sluice_sdk::{Code, Principal, content_format};
use tracing::{debug, warn};

use super::sessions::{Moment, Revocation};
use super::{Call, Failure, Gateway, reply};
use crate::coap::Response;
use crate::mqtt::{Incoming, Message};

impl Call<'_> {
    /// Opens a session for the authenticated device; answers 2.01 with its token. With signed
    /// tokens the answer waits until the broker has the revocation of the tokens it replaces
    /// (else 5.03, like a publish): a device that connects again is sure its old token is void
    /// on every gateway that follows the broker.
    pub(super) async fn connect(&self) -> Result<Response, Failure> {
        let (token, revocation) =
            self.gateway.state().sessions.open(self.who.clone(), Moment::now()).map_err(Failure::Session)?;
        if let Some(revocation) = revocation {
            self.gateway.send(self.gateway.revocation_message(&revocation)).await?;
        }
        Ok(Response {
            code: Code::CREATED.0,
            payload: token.into_bytes(),
            content_format: Some(content_format::TEXT_PLAIN),
            secret: true,
            ..Response::default()
        })
    }

    /// Ends the device's session; answers 2.02. The revocation for the other gateways is
    /// queued, not awaited: the session is closed here whatever the broker does, and the
    /// queue sends it once the broker is back.
    pub(super) fn disconnect(&self) -> Response {
        self.gateway.close_session(&self.who.client_id);
        reply(Code::DELETED)
    }
}

impl Gateway {
    /// Ends the session of `client_id` (and, with signed tokens, tells the other gateways
    /// without waiting for the broker); true if it had one here.
    pub(super) fn close_session(&self, client_id: &str) -> bool {
        let (had, revocation) = {
            let mut state = self.state();
            let had = state.sessions.info(client_id, Instant::now()).is_some();
            (had, state.sessions.close(client_id, Moment::now()))
        };
        if let Some(revocation) = revocation {
            match self.mqtt.publish(self.revocation_message(&revocation)) {
                Ok(receipt) => receipt.detach(),
                Err(error) => {
                    warn!(client_id = %revocation.client_id, %error, "Could not tell the other gateways that a session closed; its token stays valid on them until sessions.lifetime.")
                }
            }
        }
        had
    }

    /// The device a session token stands for (and the session is kept alive).
    pub(super) fn check_session(&self, client_id: &str, token: &str) -> Result<Principal, Failure> {
        self.state().sessions.check(client_id, token, Moment::now()).map_err(Failure::Session)
    }

    /// Ends the sessions whose devices went quiet for longer than `sessions.timeout`.
    pub(super) fn expire_sessions(&self) {
        self.state().sessions.expire(Moment::now());
    }

    /// The retained record of a revocation (QoS 1; it expires with the tokens it voids).
    fn revocation_message(&self, revocation: &Revocation) -> Message {
        Message {
            topic: revocation.topic(&self.settings.sessions_topic),
            payload: revocation.to_json().into(),
            qos: 1,
            retain: true,
            expiry: Some(self.settings.sessions_lifetime),
            ..Message::default()
        }
    }

    /// True for the topics of the revocation records (devices may not publish there).
    pub(super) fn is_session_topic(&self, topic: &str) -> bool {
        self.settings.shared_sessions
            && topic.strip_prefix(self.settings.sessions_topic.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }

    /// With signed tokens: follows the other gateways' revocations (retained, so a gateway
    /// that starts learns the ones still in force). Returns when subscribed; the MQTT client
    /// subscribes again after every reconnect.
    pub async fn follow_sessions(&self) {
        // While the broker is away there is nothing to retry: wait for the connection. Once
        // the client is closed (the gateway stops) there is nothing to follow.
        if !self.settings.shared_sessions {
            return;
        }
        while !self.mqtt.is_closed() {
            if self.mqtt.wait_connected(std::time::Duration::from_secs(3600)).await
                && self.subscribe_revocations().await
            {
                return;
            }
            if self.mqtt.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    }

    /// Subscribes to the revocation records; false (and logged) when the broker refused or did
    /// not answer. Once taken, the MQTT client keeps the filter across reconnects (asking again
    /// while a broker refuses it, as NATS does during a leader election), and every restore
    /// brings the retained records again.
    ///
    /// At QoS 0 on purpose. The gateway's MQTT session is clean, so QoS 1 would keep nothing
    /// more across a reconnect (the retained records come again with every subscribe), while on
    /// NATS a QoS 1 subscription is a JetStream consumer, created — and deleted at the next
    /// connect — inside the connection's read loop: while a cluster elects new leaders after a
    /// node died, each attempt held every publish of the gateway for NATS's 4 s timeout.
    async fn subscribe_revocations(&self) -> bool {
        let filter = format!("{}/+", self.settings.sessions_topic);
        let error = match tokio::time::timeout(self.settings.publish_timeout, self.mqtt.subscribe(&filter, 0)).await {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "the broker did not answer in time".to_string(),
        };
        warn!(%filter, %error, "Could not follow the other gateways' session revocations; retrying. Allow the gateway's MQTT user to subscribe to it.");
        false
    }

    /// A message on a revocation topic: applies it (an empty one is a cleared record).
    pub(super) fn revocation_arrived(&self, msg: &Incoming) {
        match Revocation::from_json(&msg.payload) {
            Some(revocation) => self.state().sessions.revoke(&revocation),
            None if msg.payload.is_empty() => {}
            None => {
                debug!(topic = %msg.topic, "Ignored a message on the session revocation topic that is not a revocation.")
            }
        }
    }
}
