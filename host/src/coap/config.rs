//! Endpoint limits and timers, and the counters it keeps.

use std::time::Duration;

use crate::config::CoapConfig;

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
    /// Every this many notifications to an observer, one NON goes as CON (RFC 7641 §4.5);
    /// 0: only `con_notification_interval` applies.
    pub con_notification_every: u32,
    /// A NON notification goes as CON when the observer's last CON is this old.
    pub con_notification_interval: Duration,
    /// Observe relations one peer (address and port) may hold; beyond, a registration is
    /// answered without Observe.
    pub max_observers_per_peer: usize,
    /// Requests per second one peer may send, refilled continuously; 0 is unlimited. Beyond,
    /// a CON gets 5.03 with Max-Age 1 and a NON is dropped (both counted).
    pub peer_rate: u32,
    /// Requests one peer may send at once before `peer_rate` applies.
    pub peer_burst: u32,
    /// Return-routability (RFC 9175 §2.4): a response up to this many times its request goes
    /// to any peer; beyond, to an unverified peer, only while `amplification_budget` pays for
    /// the excess, and so do Observe registrations and notifications; without budget the
    /// request is answered 4.01 with an Echo value the client repeats it with. 0 turns the
    /// check off (for links where it is done already, like DTLS).
    pub amplification_factor: u32,
    /// Bytes per second sent to unverified peers beyond the factor, in all; 0: none (strict).
    pub amplification_budget: u32,
    /// The same per address prefix (/24, /64).
    pub amplification_budget_per_prefix: u32,
    /// Peers remembered as verified at most; the oldest verification is forgotten first.
    pub max_verified_peers: usize,
    /// How long a peer stays verified after returning an Echo value.
    pub verified_for: Duration,
}

/// RFC 7252 ACK_RANDOM_FACTOR.
const ACK_RANDOM_FACTOR: f64 = 1.5;
/// RFC 7252 EXCHANGE_LIFETIME with the default transmission parameters.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// RFC 7252 NON_LIFETIME with the default transmission parameters.
const NON_LIFETIME: Duration = Duration::from_secs(145);

impl Default for EndpointConfig {
    /// The endpoint of a default `coap:` section: there is one set of defaults, and it is
    /// [`CoapConfig`]'s (abuse limits on, as a deployment gets them).
    fn default() -> Self {
        EndpointConfig::from_config(&CoapConfig::default())
    }
}

impl EndpointConfig {
    /// The endpoint a `coap:` section describes; the RFC 7252 values it does not name are the
    /// RFC's defaults.
    pub fn from_config(c: &CoapConfig) -> EndpointConfig {
        EndpointConfig {
            ack_timeout: c.ack_timeout,
            ack_random_factor: ACK_RANDOM_FACTOR,
            max_retransmit: c.max_retransmit,
            exchange_lifetime: EXCHANGE_LIFETIME,
            non_lifetime: NON_LIFETIME,
            separate_response_after: c.separate_response_after,
            max_dedup_entries: c.max_dedup_entries,
            block_size: c.block_size,
            max_body_size: c.max_body_size,
            max_block_transfers: c.max_block_transfers,
            max_block_memory: c.max_block_memory,
            max_observers: c.max_observers,
            observe_queue: c.observe_queue,
            con_notification_every: c.notify_con_every,
            con_notification_interval: c.notify_con_interval,
            max_observers_per_peer: c.max_observers_per_peer,
            peer_rate: c.peer_rate,
            peer_burst: c.peer_burst,
            amplification_factor: c.amplification_factor,
            amplification_budget: c.amplification_budget,
            amplification_budget_per_prefix: c.amplification_budget_per_prefix,
            max_verified_peers: c.max_verified_peers,
            verified_for: c.verified_for,
        }
    }

    /// One of `drivers` endpoints that share a listener (`coap.drivers`): the listener-wide
    /// limits split evenly between them (rounded up, at least 1), so that together they hold
    /// what the config says. Per-device limits stay as they are: a device talks to one driver.
    pub fn share_of(mut self, drivers: usize) -> EndpointConfig {
        let n = drivers.max(1);
        let part = |limit: usize| limit.div_ceil(n).max(1);
        self.max_dedup_entries = part(self.max_dedup_entries);
        self.max_block_transfers = part(self.max_block_transfers);
        self.max_block_memory = part(self.max_block_memory);
        self.max_observers = part(self.max_observers);
        self.max_verified_peers = part(self.max_verified_peers);
        let budget = |bytes: u32| if bytes == 0 { 0 } else { bytes.div_ceil(n as u32).max(1) };
        self.amplification_budget = budget(self.amplification_budget);
        self.amplification_budget_per_prefix = budget(self.amplification_budget_per_prefix);
        self
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
    /// Peers verified: they returned a valid Echo value or acknowledged a CON.
    pub peers_verified: u64,
    /// Bytes sent to unverified peers beyond `amplification_factor` × their requests, paid
    /// from `amplification_budget`.
    pub budget_bytes: u64,
    /// Retransmissions to unverified peers skipped because the budget was spent.
    pub retransmissions_skipped: u64,
    /// Observe registrations answered without Observe because `max_observers` or
    /// `max_observers_per_peer` was reached.
    pub observer_limit: u64,
}

impl std::ops::AddAssign<&Stats> for Stats {
    /// Adds the counters (and the gauge) of another endpoint: the drivers of one listener
    /// are reported as one.
    fn add_assign(&mut self, other: &Stats) {
        self.received += other.received;
        self.malformed += other.malformed;
        self.duplicates += other.duplicates;
        self.requests += other.requests;
        self.answered_locally += other.answered_locally;
        self.separate_acks += other.separate_acks;
        self.retransmissions += other.retransmissions;
        self.transmit_timeouts += other.transmit_timeouts;
        self.resets_sent += other.resets_sent;
        self.resets_received += other.resets_received;
        self.notifications_sent += other.notifications_sent;
        self.notifications_dropped += other.notifications_dropped;
        self.observers += other.observers;
        self.dedup_evictions += other.dedup_evictions;
        self.block_evictions += other.block_evictions;
        self.busy_rejections += other.busy_rejections;
        self.send_errors += other.send_errors;
        self.rate_limited += other.rate_limited;
        self.echo_challenges += other.echo_challenges;
        self.peers_verified += other.peers_verified;
        self.budget_bytes += other.budget_bytes;
        self.retransmissions_skipped += other.retransmissions_skipped;
        self.observer_limit += other.observer_limit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_share_the_listener_wide_limits_and_keep_the_per_device_ones() {
        let whole = EndpointConfig { max_observers: 100_001, max_verified_peers: 1, ..EndpointConfig::default() };
        let part = whole.clone().share_of(2);
        assert_eq!(part.max_observers, 50_001, "rounded up: together at least the whole");
        assert_eq!(part.max_verified_peers, 1, "never 0");
        assert_eq!(part.max_dedup_entries, whole.max_dedup_entries / 2);
        assert_eq!(part.max_block_memory, whole.max_block_memory / 2);
        assert_eq!((part.max_observers_per_peer, part.peer_rate), (whole.max_observers_per_peer, whole.peer_rate));
        assert_eq!(whole.clone().share_of(1), whole);
    }

    #[test]
    fn the_defaults_are_the_coap_sections() {
        let (endpoint, section) = (EndpointConfig::default(), CoapConfig::default());
        assert_eq!(endpoint, EndpointConfig::from_config(&section));
        assert_eq!((endpoint.peer_rate, endpoint.peer_burst), (section.peer_rate, section.peer_burst));
        assert_eq!(endpoint.amplification_factor, section.amplification_factor);
        assert_eq!(endpoint.max_observers_per_peer, section.max_observers_per_peer);
        assert_eq!(endpoint.clone().normalized(), endpoint, "already in range");
    }

    #[test]
    fn block_size_is_rounded_down_to_a_power_of_two() {
        let config = EndpointConfig { block_size: 1000, ..Default::default() };
        assert_eq!(config.normalized().block_size, 512);
    }

    #[test]
    fn oversized_block_size_is_clamped() {
        let config = EndpointConfig { block_size: 4096, ..Default::default() };
        assert_eq!(config.normalized().block_size, 1024);
    }
}
