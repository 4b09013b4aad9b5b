//! Endpoint limits and timers, and the counters it keeps.

use std::time::Duration;

/// Transmission parameters (RFC 7252 §4.8) and limits of an [`Endpoint`](super::Endpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    /// ACK_TIMEOUT: first retransmission timeout of a CON we send.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: the first timeout is `ack_timeout × random[1, factor]`.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a CON before giving up.
    pub max_retransmit: u32,
    /// EXCHANGE_LIFETIME: how long a CON's Message-ID is remembered for deduplication.
    pub exchange_lifetime: Duration,
    /// NON_LIFETIME: how long a NON's Message-ID is remembered for deduplication.
    pub non_lifetime: Duration,
    /// Without an answer this long after a CON request, an empty ACK is sent and the answer
    /// follows as a separate response.
    pub separate_response_after: Duration,
    /// Message-IDs remembered at most; the oldest is forgotten first.
    pub max_dedup_entries: usize,
    /// Block size we ask for (Block1) and send (Block2): a power of two in 16..=1024.
    pub block_size: usize,
    /// Largest request body reassembled from Block1; larger ones get 4.13 with Size1.
    pub max_body_size: usize,
    /// Block-wise bodies held at once, uploads and cached downloads together.
    pub max_block_transfers: usize,
    /// Bytes of block-wise bodies held at once; beyond, the least recently used is forgotten.
    pub max_block_memory: usize,
    /// Observe relations at most; beyond, a registration is answered without Observe.
    pub max_observers: usize,
    /// CON notifications queued per observer while one is in flight; the oldest is dropped.
    pub observe_queue: usize,
    /// Observe relations one peer (address and port) may hold; beyond, a registration is
    /// answered without Observe.
    pub max_observers_per_peer: usize,
    /// Requests per second one peer may send, refilled continuously; 0 is unlimited. Beyond,
    /// a CON gets 5.03 with Max-Age 1 and a NON is dropped (both counted).
    pub peer_rate: u32,
    /// Requests one peer may send at once before `peer_rate` applies.
    pub peer_burst: u32,
    /// Return-routability (RFC 9175 §2.4): a response larger than this many times its request
    /// goes to a peer only after it has returned an Echo option, and so do Observe
    /// registrations; until then the request is answered 4.01 with an Echo value the client
    /// repeats it with. 0 turns the check off (for links where it is done already, like DTLS).
    pub amplification_factor: u32,
    /// Peers remembered as verified at most; the oldest verification is forgotten first.
    pub max_verified_peers: usize,
    /// How long a peer stays verified after returning an Echo value.
    pub verified_for: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            separate_response_after: Duration::from_secs(1),
            max_dedup_entries: 1_000_000,
            block_size: 1024,
            max_body_size: 1_048_576,
            max_block_transfers: 10_000,
            max_block_memory: 64 << 20,
            max_observers: 100_000,
            observe_queue: 100,
            max_observers_per_peer: usize::MAX,
            peer_rate: 0,
            peer_burst: 0,
            amplification_factor: 0,
            max_verified_peers: 100_000,
            verified_for: Duration::from_secs(3600),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `block_size` is not a power of two in 16..=1024.
    #[error("block_size {0} is not a power of two between 16 and 1024")]
    BlockSize(usize),
    /// `ack_random_factor` is below 1 or not finite.
    #[error("ack_random_factor {0} must be a finite number of at least 1")]
    RandomFactor(f64),
}

impl EndpointConfig {
    /// The endpoint a `coap:` section describes (the RFC 7252 values it does not name keep
    /// their defaults).
    pub fn from_config(c: &crate::config::CoapConfig) -> EndpointConfig {
        EndpointConfig {
            ack_timeout: c.ack_timeout,
            max_retransmit: c.max_retransmit,
            separate_response_after: c.separate_response_after,
            max_dedup_entries: c.max_dedup_entries,
            block_size: c.block_size,
            max_body_size: c.max_body_size,
            max_block_transfers: c.max_block_transfers,
            max_block_memory: c.max_block_memory,
            max_observers: c.max_observers,
            observe_queue: c.observe_queue,
            max_observers_per_peer: c.max_observers_per_peer,
            peer_rate: c.peer_rate,
            peer_burst: c.peer_burst,
            amplification_factor: c.amplification_factor,
            max_verified_peers: c.max_verified_peers,
            verified_for: c.verified_for,
            ..EndpointConfig::default()
        }
    }

    /// Checks the values that have a defined range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.block_size.is_power_of_two() || !(16..=1024).contains(&self.block_size) {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        if !self.ack_random_factor.is_finite() || self.ack_random_factor < 1.0 {
            return Err(ConfigError::RandomFactor(self.ack_random_factor));
        }
        Ok(())
    }

    /// A copy with out-of-range values brought into range (block size rounded down).
    pub(crate) fn normalized(mut self) -> Self {
        let size = self.block_size.clamp(16, 1024);
        self.block_size = 1 << size.ilog2();
        if !self.ack_random_factor.is_finite() || self.ack_random_factor < 1.0 {
            self.ack_random_factor = 1.0;
        }
        self
    }
}

/// Counters of an endpoint (all monotonic except `observers`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to the endpoint.
    pub received: u64,
    /// Datagrams that could not be decoded or carried a code that makes no sense.
    pub malformed: u64,
    /// Duplicate CON or NON messages (by peer and Message-ID).
    pub duplicates: u64,
    /// Requests delivered to the app as [`Event::Request`](super::Event::Request).
    pub requests: u64,
    /// Requests answered by the endpoint itself (4.0x, 5.05, 2.31, cached Block2).
    pub answered_locally: u64,
    /// Empty ACKs sent because the app took longer than `separate_response_after`.
    pub separate_acks: u64,
    /// CON retransmissions.
    pub retransmissions: u64,
    /// CONs given up on after `max_retransmit` retransmissions.
    pub transmit_timeouts: u64,
    /// RSTs sent (pings, rejected messages).
    pub resets_sent: u64,
    /// RSTs received that matched one of our messages.
    pub resets_received: u64,
    /// Notifications sent (first transmissions).
    pub notifications_sent: u64,
    /// CON notifications dropped from a full per-observer queue.
    pub notifications_dropped: u64,
    /// Observe relations now (a gauge).
    pub observers: u64,
    /// Message-IDs forgotten early because `max_dedup_entries` was reached.
    pub dedup_evictions: u64,
    /// Block-wise bodies dropped early because `max_block_transfers` was reached.
    pub block_evictions: u64,
    /// Requests answered 5.03 because the app's event queue was full (see the UDP driver).
    pub busy_rejections: u64,
    /// Datagrams the transport failed to send.
    pub send_errors: u64,
    /// Requests refused (CON, 5.03) or dropped (NON) because their peer exceeded `peer_rate`.
    pub rate_limited: u64,
    /// Requests answered 4.01 with an Echo value because the peer was not verified yet.
    pub echo_challenges: u64,
    /// Peers that returned a valid Echo value.
    pub peers_verified: u64,
    /// Observe registrations answered without Observe because `max_observers` or
    /// `max_observers_per_peer` was reached.
    pub observer_limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(EndpointConfig::default().validate(), Ok(()));
    }

    #[test]
    fn block_size_must_be_a_power_of_two() {
        let config = EndpointConfig { block_size: 1000, ..Default::default() };
        assert_eq!(config.validate(), Err(ConfigError::BlockSize(1000)));
        assert_eq!(config.normalized().block_size, 512);
    }

    #[test]
    fn oversized_block_size_is_clamped() {
        let config = EndpointConfig { block_size: 4096, ..Default::default() };
        assert_eq!(config.normalized().block_size, 1024);
    }
}
