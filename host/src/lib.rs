//! # Sluice: a CoAP gateway for IoT fleets
//!
//! Devices speak CoAP over UDP or DTLS; Sluice connects them to an MQTT broker. Every decision about a
//! request is made by rules ([`rules`]); the default rule, `builtin:emqx`, gives EMQX's CoAP URL
//! model.
//!
//! ```text
//!  device ──UDP───▶ transport::udp ──┐
//!  device ──DTLS──▶ transport::dtls ─┴▶ coap::Endpoint (sans-IO: dedup, retransmission,
//!                                      separate responses, Block1/Block2, Observe relations)
//!                                          │ complete requests (coap::Event)
//!                                          ▼
//!                  gateway::Gateway: rules::Chain (authenticate → route → authorize → uplink)
//!                                    → the action: publish, subscribe, read/set/delete a value,
//!                                      connection-mode sessions
//!                                          │                          ▲ notifications
//!                                          ▼                          │ (downlink rules)
//!                  mqtt::Handle ──▶ broker (external, or the embedded rumqttd)
//! ```
//!
//! Ownership: each transport's driver task owns its socket and its CoAP protocol state (the
//! DTLS driver also its sessions, each handshake in a task of its own); the MQTT driver
//! task owns the broker connection; the gateway owns observers, the PubSub value cache and
//! sessions behind one short-held lock (never across an `.await`). Each request runs in its
//! own task, so a slow broker never stalls the socket loop; every wait is bounded and ends in a
//! CoAP answer. [`server::start`] wires the parts together; the `sluice` binary adds the CLI.
//! [`admin`] serves operators over HTTP (loopback by default): health, Prometheus metrics
//! counted with atomics on the hot path, and the loaded rules.

pub mod admin;
pub mod check;
pub mod cli;
pub mod coap;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod mqtt;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transport;
