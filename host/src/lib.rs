//! # Sluice: a CoAP gateway for IoT fleets
//!
//! (crate overview: see README.md; written at integration)

pub mod coap;
pub mod config;
pub mod gateway;
pub mod mqtt;
pub mod rules;
pub mod transport;
