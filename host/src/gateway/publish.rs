//! `Route::Publish`: authorize, run the uplink rules, publish at the QoS the request asks for,
//! and wait for the broker as that QoS requires. Also the one way any message of a request goes
//! to the broker ([`Gateway::send`]), counted by outcome.

use sluice_sdk::{Access, Publish, Uplink, content_format};
use tracing::debug;

use super::{Call, Failure, Gateway};
use crate::mqtt::{Message, PublishError};
use crate::telemetry::{DropReason, PublishResult};

impl Call<'_> {
    /// Publishes `p` with the request's payload (after authorization and the uplink rules).
    /// A `value` is retained and expires after its Max-Age (PubSub). Returns what was
    /// published, or `None` if a rule dropped it.
    pub(super) async fn publish(&self, p: Publish, value: bool) -> Result<Option<Message>, Failure> {
        self.check_topic(Access::Publish, &p.topic)?;
        let gateway = self.gateway;
        let req = &self.req;
        let uplink =
            Uplink { topic: p.topic.clone(), payload: req.payload.clone(), content_format: req.content_format };
        let Some(up) = self.chain.uplink(uplink, &self.who).map_err(Failure::Rejected)? else {
            debug!(topic = %p.topic, "Uplink rule dropped the message.");
            gateway.metrics.dropped(DropReason::UplinkRule);
            return Ok(None);
        };
        let qos = p.qos.unwrap_or_else(|| gateway.settings.publish_qos.for_request(self.confirmable()));
        let expiry = if value { Some(p.expiry.unwrap_or(gateway.settings.default_max_age)) } else { p.expiry };
        let msg = Message {
            topic: p.topic,
            payload: up.payload.into(),
            qos,
            retain: p.retain || value,
            expiry,
            content_type: up.content_format.map(content_format::to_mime),
            user_properties: p.user_properties,
            subscriptions: Vec::new(),
        };
        gateway.send(msg.clone()).await?;
        Ok(Some(msg))
    }
}

impl Gateway {
    /// Publishes `msg` and waits for the broker as its QoS requires (QoS 0: not at all).
    pub(super) async fn send(&self, msg: Message) -> Result<(), Failure> {
        let qos = msg.qos;
        let result = self.send_and_wait(msg).await;
        let counted = match &result {
            Ok(()) => PublishResult::Ok,
            Err(PublishError::QueueFull) => PublishResult::QueueFull,
            Err(PublishError::Rejected(_)) => PublishResult::Rejected,
            Err(PublishError::TimedOut) => PublishResult::TimedOut,
            Err(PublishError::Closed) => PublishResult::Closed,
        };
        self.metrics.publish(qos, counted);
        result.map_err(|e| self.broker_failure(e))
    }

    /// The failure a device is told of: a wait that ran out while the gateway is not
    /// connected is not the broker's slowness (the broker refused or is unreachable).
    pub(super) fn broker_failure(&self, error: PublishError) -> Failure {
        match error {
            PublishError::TimedOut if !self.mqtt.is_connected() => Failure::Disconnected,
            error => Failure::Broker(error),
        }
    }

    async fn send_and_wait(&self, msg: Message) -> Result<(), PublishError> {
        let qos = msg.qos;
        let done = self.mqtt.publish(msg)?;
        if qos == 0 {
            // Written when the connection allows; QoS 0 promises no more.
            done.detach();
            return Ok(());
        }
        match tokio::time::timeout(self.settings.publish_timeout, done).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::TimedOut),
        }
    }
}
