//! # Sluice: a CoAP gateway for IoT fleets
//!
//! Devices speak CoAP over UDP or DTLS; Sluice connects them to an MQTT broker. Every decision about a
//! request is made by rules ([`rules`]); the default rule, `builtin:emqx`, gives EMQX's CoAP URL
//! model.
//!
//! ```text
//!  device ──UDP───▶ transport::udp ──┐  one driver loop (transport::core) each, owning a
//!  device ──DTLS──▶ transport::dtls ─┴▶ coap::Endpoint (sans-IO: dedup, retransmission,
//!                                      separate responses, Block1/Block2, Observe relations)
//!                                          │ a complete request + the driver's transport::Link
//!                                          ▼
//!                  gateway::Gateway (the drivers' transport::Service):
//!                    rules::Chain (authenticate → route → authorize → uplink)
//!                    → the action: publish, pubsub values, observe, connection sessions
//!                    → the answer, back through the Link
//!                                          │                          ▲ notifications, through
//!                                          ▼                          │ each observer's Link
//!                  mqtt::Handle ──▶ broker (external, or the embedded rumqttd)
//! ```
//!
//! Ownership: each transport's driver task owns its socket and its CoAP protocol state (the
//! DTLS driver also its sessions, each handshake in a task of its own); the MQTT driver
//! task owns the broker connection; the gateway owns observers, the PubSub value cache and
//! sessions behind one short-held lock (never across an `.await`). A request runs on its
//! driver's task until it first has to wait; the rest (a PUBACK, a SUBACK) is polled by the
//! driver among its waiting requests, so a slow broker never stalls the socket loop; every wait
//! is bounded and ends in a CoAP answer, shutdown included ([`shutdown`]). [`check::prepare`]
//! builds what a configuration describes, for `run` and `sluice check` alike;
//! [`server::start`] wires the parts together; the `sluice` binary adds the CLI. [`admin`]
//! serves operators over HTTP (loopback by default): health, Prometheus metrics counted with
//! atomics on the hot path ([`telemetry`]), and the loaded rules. Which module may use which
//! is in the README's Layout.

pub mod admin;
pub mod check;
pub mod cli;
pub mod coap;
pub mod config;
/// The fuzz targets' entry points (fuzz/), with the `fuzzing` feature (and in tests) only.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod mqtt;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transport;
