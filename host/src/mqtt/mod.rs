//! MQTT: our own MQTT 5 and 3.1.1 client and the embedded broker.
//!
//! The client is built on rumqttc's packet codec, not its event loop, because the gateway needs
//! what `rumqttc::AsyncClient` cannot give: the outcome of *each* publish (a CoAP CON is
//! answered 2.04 only after its own PUBACK), a bounded queue that refuses at once when full,
//! subscriptions restored on every reconnect, and a subscribe that returns only after the
//! retained messages sent with its SUBACK were delivered (with `track_processing`: handled by
//! the consumer of the incoming channel, which the gateway reads right after).
//!
//! It has the rumqtt shape:
//! - `client.rs`: the public types and the cloneable [`Handle`], which only sends commands;
//! - `driver.rs`: one tokio task that owns the connection, reconnects with back-off and feeds
//!   the sans-IO state;
//! - `state.rs` and `subscriptions.rs`: packet ids, queue, in-flight map, subscription set,
//!   keep-alive and the subscribe barrier, without I/O; `queue.rs`: the queue bound and
//!   withdraw-on-drop, shared with the handles;
//! - `wire.rs`: the packets' bytes in MQTT 5 or 3.1.1 (the state speaks MQTT 5 only);
//! - `transport.rs`: URLs, TCP and TLS.
//!
//! `embedded.rs` runs rumqttd in-process when no broker is configured.

mod client;
mod driver;
mod embedded;
mod queue;
mod state;
mod subscriptions;
mod transport;
mod wire;

pub use client::{
    ClientConfig, Handle, INCOMING_CAPACITY, Incoming, Message, PublishError, Receipt, SubscribeError, try_connect,
};
pub use embedded::{EmbeddedBroker, EmbeddedError, start_embedded};
pub use transport::ConfigError;
pub use wire::Wire;
