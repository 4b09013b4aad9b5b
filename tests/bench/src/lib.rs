//! sluice-bench: the load generator for Sluice's performance targets (DESIGN.md §8).
//!
//! It plays many CoAP devices on loopback and measures what the gateway delivers:
//! - [`put`]: NON PUTs at a paced rate or CON PUTs with a window, counted at an MQTT
//!   subscriber ([`counter`]) or at a bare UDP [`sink`] (the physical ceiling);
//!   [`find_rate`] steps the NON rate to the highest one with < 0.1 % loss;
//! - [`fanout`]: N observers of one topic, one MQTT publisher;
//! - [`idle`]: N observing devices that do nothing, gateway memory per device;
//! - [`swaps`]: rule packages swapped in the gateway's rules folder during CON load;
//! - [`handshakes`]: DTLS PSK handshakes per second, each session proven by one request;
//! - [`soak`]: a mixed load for a bounded time ([`lane`]s of publishes, PubSub reads and writes,
//!   observers, DTLS sessions) with the gateway's RSS and fds sampled: no loss, no growth;
//! - [`noisy`]: the good devices' CON load alone and while attackers hit a faulty rule.
//!
//! Devices are spread over a [`pool`] of UDP sockets (distinct source ports), each with its own
//! client id, tokens and Message-IDs. The gateway's CPU time and RSS come from /proc
//! ([`procfs`]). Every scenario ends in a [`report::Report`]: a table, or one JSON object per
//! run. Every loop is bounded in count and time, and Ctrl-C ([`stop`]) ends a run early with
//! a report of what was measured.

pub mod coap;
pub mod counter;
pub mod fanout;
pub mod find_rate;
pub mod handshakes;
pub mod idle;
pub mod lane;
pub mod noisy;
pub mod observe;
pub mod pool;
pub mod procfs;
pub mod put;
pub mod report;
pub mod sink;
pub mod soak;
pub mod stop;
pub mod swaps;
