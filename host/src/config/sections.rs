//! The smaller sections: `sessions:`, `values:`, `rules:` (and each rule's `limits:`), `admin:`,
//! `log:`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `sessions:` — EMQX 5 connection mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session with no request for this long is closed; its token stops working.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Sessions at once; beyond, connect gets 5.03.
    pub max: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig { timeout: Duration::from_secs(90), max: 100_000 }
    }
}

/// `values:` — the cache of PubSub topic values (the values themselves live in the broker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValuesConfig {
    /// Topics whose values are kept subscribed and cached; the least recently used goes first.
    pub max_topics: usize,
    /// The Max-Age (seconds) of a value whose rule gives none.
    pub default_max_age: u32,
}

impl Default for ValuesConfig {
    fn default() -> Self {
        ValuesConfig { max_topics: 10_000, default_max_age: 60 }
    }
}

/// One entry of `rules:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `builtin:NAME`, or a package path (Wasm packages arrive in a later release).
    pub rule: String,
    /// The rule's own configuration, checked by the rule.
    #[serde(default)]
    pub config: serde_yaml::Value,
    /// Refuse a package whose SHA-256 (hex) is not this.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Overrides of the package's limits.
    #[serde(default)]
    pub limits: Option<RuleLimitsConfig>,
}

/// What one Wasm rule may use, as written: in `rules[].limits` of the gateway config and in
/// `limits:` of a package's manifest (`rule.yaml`), which have the same keys. Every key is
/// optional; `rules::Limits::resolve` lays the config's over the manifest's over the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLimitsConfig {
    /// Linear memory cap per instance, like `16MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Deadline per hook call, like `10ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Recycle an instance after this many calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_after_calls: Option<u64>,
}

/// Where the admin API listens by default: loopback only, a port of its own.
pub const DEFAULT_ADMIN_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9184);

/// `admin:` — the admin HTTP API for operators: `/healthz`, `/metrics` (Prometheus), `/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where to listen (`127.0.0.1:9184`); `none` (or empty) turns the admin API off. It has no
    /// authentication: keep it on loopback or a management network.
    #[serde(deserialize_with = "admin_bind")]
    pub bind: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { bind: Some(DEFAULT_ADMIN_BIND) }
    }
}

fn admin_bind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let value = serde_yaml::Value::deserialize(d)?;
    let text = match &value {
        serde_yaml::Value::Null => return Ok(None),
        serde_yaml::Value::String(s) => s.trim(),
        _ => "?",
    };
    if text.is_empty() || text.eq_ignore_ascii_case("none") || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "bind: {text:?} is not an address; write IP:PORT like 127.0.0.1:9184, or none to turn the admin API off"
        ))
    })
}

/// `log:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `sluice=debug`, …; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}
