//! The client's public face: [`ClientConfig`], [`Message`], the errors, the cloneable
//! [`Handle`] and the [`Receipt`] a publish returns.
//!
//! A handle never touches the network: it puts commands on a channel to the driver task
//! (`driver.rs`), which owns the connection and the protocol [`State`](super::state::State).
//! The queue bound is a counter shared with the driver, so `publish` can refuse at once.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::valid_filter;
use tokio::sync::{mpsc, oneshot, watch};

use super::driver::{Command, Driver};
use super::queue::{PublishResult, Queued, Shared, Ticket};
use super::transport::{ConfigError, Endpoint};
use super::wire::Wire;
use crate::config::MqttProtocol;

/// Capacity of the channel of incoming messages.
pub const INCOMING_CAPACITY: usize = 10_000;

/// How to reach the broker and how much to buffer.
#[derive(Clone)]
pub struct ClientConfig {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883); several,
    /// separated by commas, are tried in turn (the nodes of a broker cluster): the client
    /// stays on the one it reached and moves to the next when an attempt fails.
    pub url: String,
    /// MQTT client identifier.
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password; never logged.
    pub password: Option<String>,
    /// Keep-alive interval; a PINGREQ goes out when nothing else was sent for this long.
    pub keep_alive: Duration,
    /// Publishes queued plus in flight; beyond it `publish` fails with `QueueFull`.
    pub queue_capacity: usize,
    /// QoS ≥ 1 publishes in flight, further capped by the broker's Receive Maximum.
    pub max_inflight: u16,
    /// PEM CA for `mqtts://`; None uses the system roots.
    pub ca_file: Option<PathBuf>,
    /// Reconnect back-off grows from 100 ms to this.
    pub reconnect_delay_max: Duration,
    /// A publish waiting this long for its acknowledgement ends the connection (the next one
    /// resends what was in flight); zero never.
    pub stall_timeout: Duration,
    /// Sends the MQTT v5 publish properties (Message Expiry Interval, Content Type, User
    /// Properties). Off for the embedded rumqttd: its MQTT 3.1.1 listener cannot deliver a
    /// message that carries properties (the connection's task panics), and plain
    /// `mosquitto_sub` speaks 3.1.1. The gateway then keeps PubSub expiry itself.
    pub publish_properties: bool,
    /// The MQTT version: 5, 3.1.1, or 5 falling back to 3.1.1 when the broker refuses it.
    pub protocol: MqttProtocol,
    /// The consumer of the incoming channel calls [`Handle::processed`] after handling each
    /// message, and [`Handle::subscribe`] then returns only once the retained messages that
    /// came with its SUBACK were handled, not merely queued: a caller that reads what the
    /// consumer maintains (the gateway's PubSub values, an Observe registration's buffer)
    /// sees them. Off by default: a consumer that never calls `processed` would stall every
    /// subscribe.
    pub track_processing: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "sluice".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            queue_capacity: 10_000,
            max_inflight: 1_000,
            ca_file: None,
            reconnect_delay_max: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            publish_properties: true,
            protocol: MqttProtocol::Auto,
            track_processing: false,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_inflight", &self.max_inflight)
            .field("ca_file", &self.ca_file)
            .field("reconnect_delay_max", &self.reconnect_delay_max)
            .field("stall_timeout", &self.stall_timeout)
            .field("publish_properties", &self.publish_properties)
            .field("protocol", &self.protocol)
            .field("track_processing", &self.track_processing)
            .finish()
    }
}

impl ClientConfig {
    /// The client an `mqtt:` section describes, connecting to `url` (the section's broker, or
    /// the embedded broker's address once it runs). `embedded`: the embedded rumqttd, which
    /// gets no MQTT v5 properties. The client id defaults to `sluice-` and a random suffix.
    pub fn from_config(section: &crate::config::MqttConfig, url: String, embedded: bool) -> ClientConfig {
        let client_id =
            section.client_id.clone().unwrap_or_else(|| format!("sluice-{}", hex::encode(rand::random::<[u8; 4]>())));
        ClientConfig {
            url,
            client_id,
            username: section.username.clone(),
            password: section.password.clone(),
            keep_alive: section.keep_alive,
            queue_capacity: section.queue,
            ca_file: section.ca_file.clone(),
            stall_timeout: section.stall_timeout,
            publish_properties: !embedded,
            // The embedded rumqttd is spoken to on its MQTT 5 listener.
            protocol: if embedded { MqttProtocol::V5 } else { section.protocol },
            // A subscribe returns once its retained messages were dispatched to the gateway,
            // so the first read of a PubSub value and an Observe registration see them.
            track_processing: true,
            ..ClientConfig::default()
        }
    }

    /// Checks the URL, the limits and (for `mqtts://`) the trusted roots.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoints().map(|_| ())
    }

    /// The brokers of `url`: one URL, or several separated by commas (tried in turn).
    pub(crate) fn endpoints(&self) -> Result<Vec<Endpoint>, ConfigError> {
        if self.queue_capacity == 0 {
            return Err(ConfigError::Invalid("queue_capacity must be at least 1"));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::Invalid("max_inflight must be at least 1"));
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return Err(ConfigError::Invalid("keep_alive must be at most 65535 s"));
        }
        self.url.split(',').map(|url| Endpoint::new(url.trim(), self.ca_file.as_deref())).collect()
    }
}

/// An application message, published or received.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retain flag. On a received message: sent because of a (new) subscription (MQTT
    /// §3.3.1.3), i.e. a stored value rather than a live publish.
    pub retain: bool,
    /// Message Expiry Interval in seconds.
    pub expiry: Option<u32>,
    /// Content Type property.
    pub content_type: Option<String>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// On a received message: which of the client's subscriptions (their filters) it was sent
    /// for, when the broker tells (MQTT v5 Subscription Identifiers); empty when it does not.
    /// A broker sends one copy per matching subscription (mosquitto does), so a consumer
    /// serving several overlapping filters hands each copy only to its own filters' users.
    pub subscriptions: Vec<String>,
}

impl Message {
    /// A QoS 0, non-retained message without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), payload: payload.into(), ..Self::default() }
    }

    fn into_publish(self, with_properties: bool) -> Result<Publish, PublishError> {
        let qos = rumqttc::v5::mqttbytes::qos(self.qos)
            .ok_or_else(|| PublishError::Rejected(format!("invalid QoS {}", self.qos)))?;
        if self.topic.is_empty() || self.topic.len() > usize::from(u16::MAX) || self.topic.contains(['+', '#', '\0']) {
            return Err(PublishError::Rejected(format!("invalid topic {:?}", self.topic)));
        }
        let properties = (with_properties
            && (self.expiry.is_some() || self.content_type.is_some() || !self.user_properties.is_empty()))
        .then(|| PublishProperties {
            message_expiry_interval: self.expiry,
            content_type: self.content_type,
            user_properties: self.user_properties,
            ..PublishProperties::default()
        });
        let mut publish = Publish::new(self.topic, qos, self.payload, properties);
        publish.retain = self.retain;
        Ok(publish)
    }
}

/// A message delivered by the broker. `retain` is true when it was sent because of a (new)
/// subscription (MQTT §3.3.1.3), i.e. a stored value, not a live publish.
pub type Incoming = Message;

/// Why a publish did not reach the broker (as far as its QoS can tell).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// `queue_capacity` publishes are already queued or in flight.
    #[error("the MQTT publish queue is full")]
    QueueFull,
    /// Refused: a PUBACK/PUBREC reason code ≥ 0x80, or refused locally (invalid topic or QoS,
    /// larger than the broker's Maximum Packet Size).
    #[error("the MQTT publish was rejected: {0}")]
    Rejected(String),
    /// The client was closed before the publish completed.
    #[error("the MQTT client is closed")]
    Closed,
    /// The caller gave up waiting. The client itself never times out a publish; this is for
    /// callers that bound the wait (dropping the [`Receipt`] withdraws an unsent publish).
    #[error("timed out waiting for the MQTT broker")]
    TimedOut,
}

/// Why a subscribe or unsubscribe failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// Refused by the broker (SUBACK/UNSUBACK reason code ≥ 0x80) or an invalid filter or QoS.
    #[error("the MQTT subscription was rejected: {0}")]
    Rejected(String),
    /// The client was closed.
    #[error("the MQTT client is closed")]
    Closed,
}

/// The outcome of one publish: QoS 0 resolves when written to the socket, QoS 1 at its PUBACK,
/// QoS 2 at its PUBCOMP.
///
/// Dropping it before the publish was written withdraws the publish: it is never sent. Call
/// [`Receipt::detach`] to publish without waiting.
#[must_use = "dropping a Receipt withdraws an unsent publish; call detach() to fire and forget"]
#[derive(Debug)]
pub struct Receipt {
    rx: oneshot::Receiver<PublishResult>,
    ticket: Arc<Ticket>,
    shared: Arc<Shared>,
    detached: bool,
}

impl Receipt {
    /// Lets the publish go ahead without anyone awaiting its outcome.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Future for Receipt {
    type Output = Result<(), PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(PublishError::Closed)))
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.detached && self.ticket.withdraw() {
            self.shared.release();
        }
    }
}

/// A cloneable handle to the client; the driver task stops when the last handle is dropped or
/// [`Handle::close`] is called.
#[derive(Clone, Debug)]
pub struct Handle {
    cmds: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    connected: watch::Receiver<bool>,
    capacity: usize,
    publish_properties: bool,
    track_processing: bool,
}

impl Handle {
    /// Queues a publish and returns at once (never blocks, never awaits the network).
    ///
    /// Fails with `QueueFull` when `queue_capacity` publishes are queued or in flight, with
    /// `Rejected` for an invalid topic or QoS and with `Closed` after [`Handle::close`]. While
    /// disconnected, publishes wait in the queue; QoS ≥ 1 publishes in flight at a disconnect
    /// are sent again with DUP after the reconnect (at-least-once).
    ///
    /// Between [`Handle::begin_batch`] and [`Handle::end_batch`] (of any handle of the client)
    /// the driver is not woken for each publish: the batch's end wakes it once for them all.
    pub fn publish(&self, msg: Message) -> Result<Receipt, PublishError> {
        if self.shared.closed.load(Ordering::Acquire) || self.cmds.is_closed() {
            return Err(PublishError::Closed);
        }
        let publish = msg.into_publish(self.publish_properties)?;
        if !self.shared.try_reserve(self.capacity) {
            return Err(PublishError::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        let ticket = Arc::new(Ticket::default());
        self.shared.hand_over(Queued { publish, tx, ticket: ticket.clone(), losses: 0 });
        if !self.shared.batching() {
            self.signal();
        }
        Ok(Receipt { rx, ticket, shared: self.shared.clone(), detached: false })
    }

    /// Starts a batch of publishes (see [`Handle::publish`]); the CoAP drivers open one around
    /// each batch of datagrams, so the driver's thread is woken once per batch, not per publish.
    pub fn begin_batch(&self) {
        self.shared.begin_batch();
    }

    /// Ends a batch begun with [`Handle::begin_batch`] and wakes the driver for the publishes
    /// handed over meanwhile (once, however many, and not at all for none).
    pub fn end_batch(&self) {
        self.shared.end_batch();
        self.signal();
    }

    fn signal(&self) {
        if self.shared.needs_signal() {
            let _ = self.cmds.send(Command::Take);
        }
    }

    /// Subscribes and resolves after the SUBACK *and* a PINGREQ → PINGRESP round trip, so that
    /// retained messages a broker sends along with the SUBACK are in the incoming channel first
    /// (with `track_processing`: handled by its consumer).
    ///
    /// The filter stays in the client's set and is subscribed again after every reconnect
    /// (retain handling 0, no-local false, retain-as-published false). While disconnected the
    /// call waits for the next connection.
    pub async fn subscribe(&self, filter: &str, qos: u8) -> Result<(), SubscribeError> {
        let qos =
            rumqttc::v5::mqttbytes::qos(qos).ok_or_else(|| SubscribeError::Rejected(format!("invalid QoS {qos}")))?;
        if !valid_filter(filter) || filter.len() > usize::from(u16::MAX) {
            return Err(SubscribeError::Rejected(format!("invalid topic filter {filter:?}")));
        }
        self.request(|tx| Command::Subscribe { filter: filter.to_owned(), qos, tx }).await?;
        if self.track_processing {
            self.shared.wait_processed().await;
        }
        Ok(())
    }

    /// With `track_processing`: the consumer of the incoming channel handled one more message.
    /// Call it after handling each message taken from the channel, in order.
    pub fn processed(&self) {
        self.shared.processed();
    }

    /// Unsubscribes and removes the filter from the set.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), SubscribeError> {
        self.request(|tx| Command::Unsubscribe { filter: filter.to_owned(), tx }).await
    }

    async fn request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), SubscribeError>>) -> Command,
    ) -> Result<(), SubscribeError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(command(tx)).map_err(|_| SubscribeError::Closed)?;
        rx.await.unwrap_or(Err(SubscribeError::Closed))
    }

    /// True while a session with the broker is up (after CONNACK).
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// True once the client was closed (its driver stopped): it will never connect again.
    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed()
    }

    /// Waits until connected, for at most `timeout`; true if connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut connected = self.connected.clone();
        matches!(tokio::time::timeout(timeout, connected.wait_for(|c| *c)).await, Ok(Ok(_)))
    }

    /// Publishes queued or in flight.
    pub fn queue_len(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    /// Successful connections after the first.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }

    /// The MQTT version of the current (or last) connection; None before the first one.
    pub fn protocol(&self) -> Option<Wire> {
        match self.shared.protocol_level.load(Ordering::Acquire) {
            5 => Some(Wire::V5),
            4 => Some(Wire::V311),
            _ => None,
        }
    }

    /// Whether publishes carry MQTT 5 properties on the current connection (Message Expiry,
    /// Content Type, User Properties): false on MQTT 3.1.1 and for the embedded broker, where
    /// the gateway then keeps what they would have said itself.
    pub fn sends_properties(&self) -> bool {
        self.publish_properties && self.protocol() != Some(Wire::V311)
    }

    /// Sends DISCONNECT and stops the driver (graceful shutdown). Pending publishes and
    /// subscribe calls resolve with `Closed`.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.caught_up.notify_waiters();
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Validates `config`, then starts the driver on a thread of its own. It connects in the
/// background (first attempt at once) and keeps reconnecting with back-off.
///
/// Incoming publishes go to the returned channel (capacity [`INCOMING_CAPACITY`]); when it is
/// full the driver stops reading from the broker (back-pressure) and never drops a message.
/// QoS 1 deliveries are PUBACKed after they are in the channel.
pub fn try_connect(config: ClientConfig) -> Result<(Handle, mpsc::Receiver<Incoming>), ConfigError> {
    let endpoints = config.endpoints()?;
    let shared = Arc::new(Shared::default());
    let (cmds, cmd_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_CAPACITY);
    let (connected_tx, connected) = watch::channel(false);
    let handle = Handle {
        cmds,
        shared: shared.clone(),
        connected,
        capacity: config.queue_capacity,
        publish_properties: config.publish_properties,
        track_processing: config.track_processing,
    };
    let driver = Driver::new(config, endpoints, shared, cmd_rx, incoming_tx, connected_tx);
    // Its own thread: as a task beside the CoAP drivers it waited in their worker's LIFO slot
    // (which other workers cannot steal from) until the CoAP driver's budget ran out, long
    // enough under load for the publish queue to fill (tests/bench/PROFILE.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConfigError::Thread(e.to_string()))?;
    std::thread::Builder::new()
        .name("sluice-mqtt".into())
        .spawn(move || runtime.block_on(driver.run()))
        .map_err(|e| ConfigError::Thread(e.to_string()))?;
    Ok((handle, incoming_rx))
}
