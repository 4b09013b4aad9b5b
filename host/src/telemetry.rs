//! The gateway's counters: fixed arrays of atomics indexed by small enums, so that counting on
//! the hot path is one relaxed `fetch_add` with no lock and no allocation. Gauges (queue depth,
//! observers, sessions) and the per-rule counters are read from their owners when `/metrics` is
//! scraped; the admin API (`crate::admin`) turns both into the Prometheus text format.
//!
//! A leaf module: the hot path (gateway, transports) counts here without depending on the
//! admin HTTP server that reads the counters.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Which listener a request or notification went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// CoAP over UDP.
    Udp,
    /// CoAP over DTLS.
    Dtls,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Dtls];

    /// The `transport` label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Dtls => "dtls",
        }
    }
}

/// What a request asked the gateway to do (the rules' route), as the `action` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refused before a route was chosen (authentication), or no rule routed it (4.04).
    None,
    /// `/.well-known/core` answered by a rule (RFC 6690 discovery; builtin:emqx lists its URL model).
    WellKnown,
    /// A rule answered itself.
    Respond,
    /// Publish to a topic.
    Publish,
    /// Set a PubSub value.
    SetValue,
    /// Read a PubSub value.
    Read,
    /// Delete a PubSub value.
    Delete,
    /// Observe a topic filter.
    Subscribe,
    /// Observe a PubSub value.
    ObserveValue,
    /// End an observation.
    Unsubscribe,
    /// Open a connection-mode session.
    Connect,
    /// Keep a session alive.
    Heartbeat,
    /// Close a session.
    Disconnect,
}

impl Action {
    /// Every action, in label order.
    pub const ALL: [Action; 13] = [
        Action::None,
        Action::WellKnown,
        Action::Respond,
        Action::Publish,
        Action::SetValue,
        Action::Read,
        Action::Delete,
        Action::Subscribe,
        Action::ObserveValue,
        Action::Unsubscribe,
        Action::Connect,
        Action::Heartbeat,
        Action::Disconnect,
    ];

    /// The `action` label.
    pub fn label(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::WellKnown => "well_known",
            Action::Respond => "respond",
            Action::Publish => "publish",
            Action::SetValue => "set_value",
            Action::Read => "read",
            Action::Delete => "delete",
            Action::Subscribe => "subscribe",
            Action::ObserveValue => "observe_value",
            Action::Unsubscribe => "unsubscribe",
            Action::Connect => "connect",
            Action::Heartbeat => "heartbeat",
            Action::Disconnect => "disconnect",
        }
    }
}

/// Request methods with a series of their own; anything else counts as `other`.
pub const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "FETCH", "other"];

fn method_index(code: u8) -> usize {
    match code {
        1..=4 => usize::from(code - 1),
        5 => 4,
        _ => 5,
    }
}

/// Response codes with a series of their own (CoAP `c.dd` as a byte); the last slot is `other`.
pub const CODES: [u8; 24] = [
    0x41, 0x42, 0x43, 0x44, 0x45, 0x5F, // 2.01–2.05, 2.31
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x88, 0x8C, 0x8D, 0x8F, // 4.00–4.06, 4.08, 4.12, 4.13, 4.15
    0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, // 5.00–5.05
    0x00, // other
];

fn code_index(code: u8) -> usize {
    CODES.iter().position(|c| *c == code).unwrap_or(CODES.len() - 1)
}

/// `2.05` for 0x45; `other` for the catch-all slot.
pub fn code_label(code: u8) -> String {
    if code == 0 { "other".to_string() } else { format!("{}.{:02}", code >> 5, code & 0x1F) }
}

/// How a publish ended, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishResult {
    /// Accepted (QoS 0: queued for writing; QoS ≥ 1: acknowledged by the broker).
    Ok,
    /// The publish queue was full.
    QueueFull,
    /// The broker or the client refused it.
    Rejected,
    /// The broker did not acknowledge in time.
    TimedOut,
    /// The client was closed.
    Closed,
}

/// The `result` labels of [`PublishResult`], in index order.
pub const PUBLISH_RESULTS: [&str; 5] = ["ok", "queue_full", "rejected", "timed_out", "closed"];

/// Why something was dropped or refused without reaching its destination, as the `reason`
/// label. Counted here: the gateway's and the DTLS listener's own drops; the CoAP endpoint's
/// (malformed, duplicate, …) are read from its statistics when scraped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A publish found the MQTT queue full (the device got 5.03).
    MqttQueueFull,
    /// An uplink rule dropped the message (the device got 2.04).
    UplinkRule,
    /// A downlink rule dropped a notification.
    DownlinkRule,
    /// A ClientHello beyond `dtls.max_sessions`.
    DtlsSessionLimit,
    /// A ClientHello beyond `dtls.max_handshakes`.
    DtlsHandshakeLimit,
    /// A datagram for a DTLS session whose queue was full.
    DtlsSessionQueueFull,
    /// A datagram from an unknown peer that is not a ClientHello.
    DtlsNotClientHello,
}

/// The `reason` labels of [`DropReason`], in index order.
pub const DROPS: [&str; 7] = [
    "mqtt_queue_full",
    "uplink_rule",
    "downlink_rule",
    "dtls_session_limit",
    "dtls_handshake_limit",
    "dtls_session_queue_full",
    "dtls_not_client_hello",
];

/// How a DTLS handshake ended, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A session was established.
    Ok,
    /// The handshake failed (bad key, bad certificate, no common cipher suite, …).
    Failed,
    /// The client went silent or took longer than `dtls.handshake_timeout`.
    TimedOut,
}

/// The `result` labels of [`Handshake`], in index order.
pub const HANDSHAKES: [&str; 3] = ["ok", "failed", "timeout"];

/// Upper bounds (seconds) of the request-duration histogram's buckets (`+Inf` follows).
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BUCKETS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

const ACTIONS: usize = Action::ALL.len();

/// One action's request durations: per-bucket counts (not cumulative; summed when rendered),
/// the `+Inf` overflow, the total count and the sum in microseconds.
#[derive(Default)]
pub(crate) struct Histogram {
    pub(crate) buckets: [AtomicU64; BUCKETS.len() + 1],
    pub(crate) count: AtomicU64,
    pub(crate) sum_micros: AtomicU64,
}

/// The counters one gateway keeps (shared by its gateway, transports and admin API).
#[derive(Default)]
pub struct Metrics {
    pub(crate) requests: [[AtomicU64; METHODS.len()]; 2],
    pub(crate) responses: [[[AtomicU64; ACTIONS]; CODES.len()]; 2],
    pub(crate) publishes: [[AtomicU64; PUBLISH_RESULTS.len()]; 3],
    /// Notifications handed to a transport: [non, con].
    pub(crate) notifications: [AtomicU64; 2],
    pub(crate) drops: [AtomicU64; DROPS.len()],
    pub(crate) handshakes: [AtomicU64; HANDSHAKES.len()],
    pub(crate) dtls_sessions: AtomicI64,
    pub(crate) durations: [Histogram; ACTIONS],
    /// Rule reloads by result: [ok, refused, failed].
    pub(crate) reloads: [AtomicU64; 3],
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A request reached the gateway.
    pub fn request(&self, transport: Transport, method: u8) {
        if let Some(c) = self.requests.get(transport as usize).and_then(|m| m.get(method_index(method))) {
            bump(c);
        }
    }

    /// The gateway answered a request with `code` after `elapsed`.
    pub fn response(&self, transport: Transport, code: u8, action: Action, elapsed: Duration) {
        if let Some(c) = self
            .responses
            .get(transport as usize)
            .and_then(|t| t.get(code_index(code)))
            .and_then(|a| a.get(action as usize))
        {
            bump(c);
        }
        if let Some(h) = self.durations.get(action as usize) {
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            let slot = BUCKETS_MICROS.iter().position(|b| micros <= *b).unwrap_or(BUCKETS_MICROS.len());
            if let Some(b) = h.buckets.get(slot) {
                bump(b);
            }
            bump(&h.count);
            h.sum_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// A publish at `qos` ended with `result`.
    pub fn publish(&self, qos: u8, result: PublishResult) {
        if let Some(c) = self.publishes.get(usize::from(qos)).and_then(|r| r.get(result as usize)) {
            bump(c);
        }
        if result == PublishResult::QueueFull {
            self.dropped(DropReason::MqttQueueFull);
        }
    }

    /// A notification was handed to a transport.
    pub fn notification(&self, confirmable: bool) {
        if let Some(c) = self.notifications.get(usize::from(confirmable)) {
            bump(c);
        }
    }

    /// Something was dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason as usize) {
            bump(c);
        }
    }

    /// A DTLS handshake ended.
    pub fn handshake(&self, result: Handshake) {
        if let Some(c) = self.handshakes.get(result as usize) {
            bump(c);
        }
    }

    /// A DTLS session was established (`+1`) or ended (`-1`).
    pub fn dtls_session(&self, delta: i64) {
        self.dtls_sessions.fetch_add(delta, Ordering::Relaxed);
    }

    /// `n` rule reloads finished with `outcome`.
    pub(crate) fn reloads(&self, outcome: ReloadOutcome, n: u64) {
        self.reloads[outcome as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// How a rule reload ended (the `result` label of `sluice_rule_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Every changed package was swapped in.
    Ok = 0,
    /// At least one package was refused; its old version (if any) serves on.
    Refused = 1,
    /// The reload failed as a whole (e.g. the config file did not parse).
    Failed = 2,
}

impl ReloadOutcome {
    /// Every outcome, in label order.
    pub const ALL: [ReloadOutcome; 3] = [ReloadOutcome::Ok, ReloadOutcome::Refused, ReloadOutcome::Failed];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Refused => "refused",
            ReloadOutcome::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn codes_and_methods_find_their_slots() {
        assert_eq!(code_label(0x44), "2.04");
        assert_eq!(code_label(0x81), "4.01");
        assert_eq!(code_label(0xA3), "5.03");
        assert_eq!(code_index(0x99), CODES.len() - 1);
        assert_eq!(method_index(3), 2);
        assert_eq!(method_index(42), 5);
    }

    #[test]
    fn a_response_lands_in_its_code_action_and_bucket() {
        let m = Metrics::default();
        m.response(Transport::Dtls, 0x44, Action::Publish, Duration::from_micros(700));
        assert_eq!(get(&m.responses[1][code_index(0x44)][Action::Publish as usize]), 1);
        let h = &m.durations[Action::Publish as usize];
        assert_eq!((get(&h.buckets[1]), get(&h.count), get(&h.sum_micros)), (1, 1, 700));
        m.response(Transport::Udp, 0x45, Action::Read, Duration::from_secs(60));
        assert_eq!(get(&m.durations[Action::Read as usize].buckets[BUCKETS.len()]), 1);
    }

    #[test]
    fn a_full_queue_counts_as_a_publish_and_a_drop() {
        let m = Metrics::default();
        m.publish(1, PublishResult::QueueFull);
        assert_eq!(get(&m.publishes[1][1]), 1);
        assert_eq!(get(&m.drops[DropReason::MqttQueueFull as usize]), 1);
    }
}
