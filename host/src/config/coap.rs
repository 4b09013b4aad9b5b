//! `coap:` and `dtls:`: the listeners and the CoAP message layer's limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, redact};

/// `coap:` — the UDP listener and the message layer's limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// Where to listen (`0.0.0.0:5683`).
    pub bind: SocketAddr,
    /// UDP sockets serving `bind` side by side (`SO_REUSEPORT`), each with its own driver, so
    /// that more than one core receives and answers. The kernel sends each device (source
    /// address and port) to one of them for as long as the gateway runs, so a device's
    /// exchanges, Observe relations and limits stay on one driver. The listener-wide limits
    /// (`max_observers`, `max_dedup_entries`, `max_block_transfers`, `max_block_memory`,
    /// `max_verified_peers`, `request_queue`) are split evenly between them, so they hold for
    /// the listener as a whole. 1 (the default): one socket.
    pub drivers: usize,
    /// RFC 7252 ACK_TIMEOUT.
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// RFC 7252 MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// Send an empty ACK and answer separately when a CON request takes longer than this.
    #[serde(with = "duration")]
    pub separate_response_after: Duration,
    /// Remembered (peer, Message-ID) pairs for duplicate detection.
    pub max_dedup_entries: usize,
    /// Block size for Block1 and Block2 (16..=1024, a power of two).
    pub block_size: usize,
    /// The largest request body accepted by Block1 (4.13 above).
    pub max_body_size: usize,
    /// Concurrent block-wise transfers.
    pub max_block_transfers: usize,
    /// Bytes of block-wise bodies held at once (uploads being reassembled, answers being
    /// served block by block); beyond, the least recently used transfer is forgotten.
    pub max_block_memory: usize,
    /// Observe relations at once.
    pub max_observers: usize,
    /// CON notifications queued per observer while one is unacknowledged.
    pub observe_queue: usize,
    /// Notification message type: `same` as the Observe request, `con`, `non`, or `qos`
    /// (CON for MQTT QoS ≥ 1).
    pub notify_type: NotifyType,
    /// Of the NON notifications to one observer, every this many goes CON instead (RFC 7641
    /// §4.5), so that a device that went away without a word is noticed (its CON times out)
    /// and its relation ends; 0: only `notify_con_interval` applies.
    pub notify_con_every: u32,
    /// And an observer gets a CON notification at least this often (RFC 7641 §4.5: 24 h).
    #[serde(with = "duration")]
    pub notify_con_interval: Duration,
    /// Requests that wait for the broker (a PUBACK, a SUBACK, a value) at once; beyond, new
    /// requests are answered 5.03 (Max-Age: `mqtt.retry_after`).
    pub request_queue: usize,
    /// The UDP and DTLS sockets' kernel receive and send buffers, in bytes (capped by the kernel's
    /// `net.core.rmem_max`/`wmem_max`): bursts of datagrams wait here instead of being dropped.
    pub socket_buffer: usize,
    /// Observe relations one device (source address and port) may hold.
    pub max_observers_per_peer: usize,
    /// Requests per second one device (source address and port) may send; beyond, a CON gets
    /// 5.03 with Max-Age 1 and a NON is dropped. 0: no limit.
    pub peer_rate: u32,
    /// Requests one device may send in a burst before `peer_rate` applies.
    pub peer_burst: u32,
    /// Answers up to this many times the size of their request go to any UDP address. What a
    /// device that has not shown that it receives at its address (an unverified address) is
    /// sent beyond that — larger answers, Observe registrations, notifications — is paid
    /// from `amplification_budget`; once the budget is spent (a flood of forged requests), such
    /// requests are answered 4.01 with an Echo option (RFC 9175) until the device repeats
    /// them with it (libcoap does by itself). An address is verified by returning an Echo
    /// value or by acknowledging a CON the gateway sent it. This keeps spoofed requests from
    /// turning the gateway into an amplifier. 0 turns the checks off; DTLS sessions are
    /// always verified.
    pub amplification_factor: u32,
    /// Bytes per second the gateway may send to unverified addresses beyond
    /// `amplification_factor` × their requests, in all: the most a flood of forged requests
    /// can reflect. 0: no budget, every larger answer and every Observe registration from an
    /// unverified address is challenged with Echo (strict RFC 9175 §2.4).
    pub amplification_budget: u32,
    /// The same, per address prefix (/24 for IPv4, /64 for IPv6): the most one victim network
    /// can be sent.
    pub amplification_budget_per_prefix: u32,
    /// Devices remembered as verified at most; the oldest is forgotten first.
    pub max_verified_peers: usize,
    /// How long a device stays verified.
    #[serde(with = "duration")]
    pub verified_for: Duration,
    /// On shutdown (SIGTERM, SIGINT), how long requests in progress (a QoS 1 publish waiting
    /// for its PUBACK) may take to finish; new requests meanwhile, and whatever is left after
    /// it, are answered 5.03 with Max-Age `mqtt.retry_after`.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 5683)),
            drivers: 1,
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
            separate_response_after: Duration::from_secs(1),
            max_dedup_entries: 1_000_000,
            block_size: 1024,
            max_body_size: 1 << 20,
            max_block_transfers: 10_000,
            max_block_memory: 64 << 20,
            max_observers: 100_000,
            observe_queue: 100,
            notify_type: NotifyType::Same,
            notify_con_every: 100,
            notify_con_interval: Duration::from_secs(86_400),
            request_queue: 65_536,
            socket_buffer: 4 << 20,
            max_observers_per_peer: 1_000,
            peer_rate: 1_000,
            peer_burst: 2_000,
            amplification_factor: 3,
            amplification_budget: 1 << 20,
            amplification_budget_per_prefix: 64 << 10,
            max_verified_peers: 100_000,
            verified_for: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// `dtls:` — the coaps listener: DTLS 1.2 with pre-shared keys, certificates, or both on one
/// port. It runs when `psk_file` or `cert_file` is set. Paths are relative to the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtlsConfig {
    /// Where to listen (`0.0.0.0:5684`).
    pub bind: SocketAddr,
    /// PSK identities and keys, one `identity:key` per line; re-read when it changes (by the
    /// DTLS transport: the keys are never held in the config, and only the path is shown).
    #[serde(serialize_with = "redact::path")]
    pub psk_file: Option<PathBuf>,
    /// The PSK identity hint sent to clients (none by default).
    pub psk_identity_hint: Option<String>,
    /// The server certificate chain (PEM), for ECDHE_ECDSA clients.
    #[serde(serialize_with = "redact::path")]
    pub cert_file: Option<PathBuf>,
    /// The server certificate's private key (PKCS#8 PEM, ECDSA P-256 or Ed25519).
    #[serde(serialize_with = "redact::path")]
    pub key_file: Option<PathBuf>,
    /// The CA certificates (PEM) client certificates must chain to (`verify: peer`).
    #[serde(serialize_with = "redact::path")]
    pub ca_file: Option<PathBuf>,
    /// `peer`: ask for a client certificate and verify it against `ca_file`; `none`: do not.
    pub verify: Verify,
    /// With `verify: peer`, refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
    /// The longest a handshake may take before it is dropped.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; further ClientHellos are dropped (clients retry).
    pub max_handshakes: usize,
    /// DTLS peers at once (handshaking or established).
    pub max_sessions: usize,
    /// A session with no traffic for this long is closed (the device handshakes again).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for DtlsConfig {
    fn default() -> Self {
        DtlsConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 5684)),
            psk_file: None,
            psk_identity_hint: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            verify: Verify::None,
            fail_if_no_peer_cert: false,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            max_sessions: 100_000,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl DtlsConfig {
    /// Whether the section asks for a listener (it names credentials).
    pub fn enabled(&self) -> bool {
        self.psk_file.is_some() || self.cert_file.is_some()
    }

    /// Makes relative paths relative to `dir`.
    pub(super) fn resolve(&mut self, dir: &Path) {
        for path in
            [&mut self.psk_file, &mut self.cert_file, &mut self.key_file, &mut self.ca_file].into_iter().flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }

    /// The section's own consistency: which keys go together, values in range (the files are
    /// read by the DTLS transport, `dtls::Settings::from_config`, which starts from this check).
    pub fn validate(&self, bad: &mut dyn FnMut(&str, String)) {
        if !self.enabled() {
            for (key, set) in [
                ("dtls.key_file", self.key_file.is_some()),
                ("dtls.ca_file", self.ca_file.is_some()),
                ("dtls.verify", self.verify == Verify::Peer),
            ] {
                if set {
                    bad(
                        key,
                        "DTLS is off without credentials; set dtls.psk_file, or dtls.cert_file and dtls.key_file"
                            .into(),
                    );
                }
            }
            return;
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => bad("dtls.key_file", "a certificate needs its private key; set dtls.key_file".into()),
            (None, Some(_)) => bad("dtls.cert_file", "a key needs its certificate; set dtls.cert_file".into()),
            _ => {}
        }
        if self.verify == Verify::Peer && self.ca_file.is_none() {
            bad("dtls.ca_file", "verify: peer needs the CA client certificates chain to; set dtls.ca_file".into());
        }
        if self.verify == Verify::Peer && self.cert_file.is_none() {
            bad(
                "dtls.verify",
                "client certificates need a server certificate; set dtls.cert_file and dtls.key_file".into(),
            );
        }
        if self.fail_if_no_peer_cert && self.verify != Verify::Peer {
            bad("dtls.fail_if_no_peer_cert", "only means something with verify: peer; set dtls.verify: peer".into());
        }
        for (key, value) in [("dtls.max_handshakes", self.max_handshakes), ("dtls.max_sessions", self.max_sessions)] {
            if value == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if self.handshake_timeout.is_zero() {
            bad("dtls.handshake_timeout", "must be more than 0; write it like 10s".into());
        }
        if self.idle_timeout.is_zero() {
            bad("dtls.idle_timeout", "must be more than 0; write it like 5m".into());
        }
    }
}

/// Whether the DTLS server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Ask for a client certificate and verify it against `ca_file`.
    Peer,
    /// Do not ask (one-way authentication; PSK clients are unaffected).
    None,
}

/// How notifications are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyType {
    /// The type of the Observe request (EMQX 4.x).
    Same,
    /// Always Confirmable.
    Con,
    /// Always Non-confirmable.
    Non,
    /// CON when the MQTT message has QoS ≥ 1 (EMQX 5.x `qos`).
    Qos,
}
