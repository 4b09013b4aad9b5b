//! The smaller sections: `sessions:`, `values:`, `rules:` (and each rule's `limits:`), `admin:`,
//! `log:`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, redact};

/// `sessions:` — EMQX 5 connection mode.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session with no request for this long is closed; its token stops working.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Sessions at once; beyond, connect gets 5.03.
    pub max: usize,
    /// The secret the gateways of a deployment share (at least 16 bytes): tokens are then
    /// signed and every gateway accepts them (`gateway::sessions`). Or `secret_file`.
    /// Serialized as [`redact::REDACTED`].
    #[serde(serialize_with = "redact::secret")]
    pub secret: Option<String>,
    /// A file holding the secret (its trailing newline ignored), relative to the config file.
    #[serde(serialize_with = "redact::path")]
    pub secret_file: Option<PathBuf>,
    /// With a secret: how long after connecting a token is still taken by a gateway that has
    /// not served the session (one the device moved to, or a restarted one).
    #[serde(with = "duration")]
    pub lifetime: Duration,
    /// With a secret: where gateways tell each other about replaced and closed sessions
    /// (retained, one topic per client id under this). Devices may not publish there.
    pub topic: String,
    /// The secret, read from `secret` or `secret_file` by [`SessionsConfig::load_secret`].
    #[serde(skip)]
    pub key: Option<Arc<[u8]>>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            timeout: Duration::from_secs(90),
            max: 100_000,
            secret: None,
            secret_file: None,
            lifetime: Duration::from_secs(24 * 3600),
            topic: "sluice/sessions".into(),
            key: None,
        }
    }
}

/// The shortest secret taken: 128 bits.
const MIN_SECRET: usize = 16;

impl SessionsConfig {
    /// Reads the secret into `key` (a relative `secret_file` is taken from `dir`, the config
    /// file's folder), reporting what is wrong with it.
    pub(super) fn load_secret(&mut self, dir: Option<&Path>, bad: &mut dyn FnMut(&str, String)) {
        let (key, secret) = match (&self.secret, &self.secret_file) {
            (None, None) => return,
            (Some(_), Some(_)) => {
                return bad("sessions.secret", "give sessions.secret or sessions.secret_file, not both".into());
            }
            (Some(secret), None) => ("sessions.secret", secret.clone().into_bytes()),
            (None, Some(path)) => {
                let path = match dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.clone(),
                };
                match std::fs::read(&path) {
                    Ok(mut bytes) => {
                        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            bytes.pop();
                        }
                        ("sessions.secret_file", bytes)
                    }
                    Err(e) => {
                        return bad(
                            "sessions.secret_file",
                            format!("cannot read {}: {e}; give the path of a file holding the secret", path.display()),
                        );
                    }
                }
            }
        };
        if secret.len() < MIN_SECRET {
            return bad(
                key,
                format!(
                    "the secret has {} bytes, too few to sign tokens; use at least {MIN_SECRET} random bytes (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ),
            );
        }
        self.key = Some(secret.into());
    }

    /// The section's own checks.
    pub(super) fn validate(&self, bad: &mut dyn FnMut(&str, String)) {
        if self.max == 0 {
            bad("sessions.max", "must be at least 1".into());
        }
        if self.topic.is_empty() || self.topic.contains(['+', '#', '\0']) || self.topic.ends_with('/') {
            bad(
                "sessions.topic",
                format!(
                    "{:?} is not a topic prefix; use a topic without + or # and no trailing / (default sluice/sessions)",
                    self.topic
                ),
            );
        }
        if self.lifetime.is_zero() {
            bad("sessions.lifetime", "must be more than 0 (default 24h)".into());
        }
    }
}

/// `values:` — the cache of PubSub topic values (the values themselves live in the broker).
#[derive(Debug, Clone, Deserialize, Serialize)]
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

/// `registry:` — rules referenced as `oci://…` in `rules:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Where pulled packages are kept, by digest (relative to the config file). Default:
    /// `$CACHE_DIRECTORY` (systemd's CacheDirectory=), else `$XDG_CACHE_HOME/sluice`, else
    /// `~/.cache/sluice`, else `.sluice-cache`.
    #[serde(serialize_with = "redact::path")]
    pub cache_dir: Option<PathBuf>,
    /// Registries spoken to over plain HTTP (`host:port`, for a registry on loopback).
    pub insecure: Vec<String>,
    /// The longest one registry operation may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How often tags are looked up again (a moved tag is pulled, tested and swapped); `0s`:
    /// only when the config or the rules change.
    #[serde(with = "duration")]
    pub poll: Duration,
    /// The folder of the Docker credential file (`config.json`, as `docker login` writes it)
    /// to log in to registries with (relative to the config file). Default: `$DOCKER_CONFIG`,
    /// else `~/.docker` of the user the gateway runs as (under systemd, point it at a
    /// `LoadCredential=` folder: `$CREDENTIALS_DIRECTORY` is not known when the config is written).
    #[serde(serialize_with = "redact::path")]
    pub docker_config: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            cache_dir: None,
            insecure: Vec::new(),
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(60),
            docker_config: None,
        }
    }
}

impl RegistryConfig {
    /// The Docker credential folder, `config_dir` resolving a relative `docker_config`.
    pub fn docker_config(&self, config_dir: Option<&Path>) -> Option<PathBuf> {
        let dir = self.docker_config.as_ref()?;
        Some(match config_dir {
            Some(base) if dir.is_relative() => base.join(dir),
            _ => dir.clone(),
        })
    }

    /// The cache folder, `config_dir` resolving a relative `cache_dir`.
    pub fn cache(&self, config_dir: Option<&Path>) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return match config_dir {
                Some(base) if dir.is_relative() => base.join(dir),
                _ => dir.clone(),
            };
        }
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("CACHE_DIRECTORY")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("sluice")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/sluice")))
            .unwrap_or_else(|| PathBuf::from(".sluice-cache"))
    }
}

/// `trust:` — which rule packages may run (see `rules::signature`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Public keys whose signatures are accepted: paths of `.pub` files (relative to the
    /// config file) or their line itself (`sluice-ed25519 BASE64 NAME`). With keys, a package
    /// signed by another key is refused.
    pub keys: Vec<String>,
    /// Refuse unsigned packages (builtin rules are part of the gateway and always run).
    pub require_signature: bool,
    /// The keys, read by `Config::read`.
    #[serde(skip)]
    pub trusted: Vec<crate::rules::signature::PublicKey>,
}

impl TrustConfig {
    /// Reads `keys` (files relative to `dir`); `bad` gets each one that cannot be read.
    pub(super) fn load_keys(&mut self, dir: Option<&Path>, bad: &mut dyn FnMut(&str, String)) {
        use crate::rules::signature::{PublicKey, read_key};
        self.trusted.clear();
        for (i, entry) in self.keys.iter().enumerate() {
            let key = format!("trust.keys[{i}]");
            let read = if entry.trim_start().starts_with("sluice-ed25519") {
                PublicKey::parse(entry)
            } else {
                let path = Path::new(entry);
                let path = match dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.to_path_buf(),
                };
                read_key(&path, PublicKey::parse)
            };
            match read {
                Ok(k) => self.trusted.push(k),
                Err(e) => bad(&key, e.to_string()),
            }
        }
    }

    /// What the rule loader checks packages against.
    pub fn trust(&self) -> crate::rules::signature::Trust {
        crate::rules::signature::Trust { keys: self.trusted.clone(), require_signature: self.require_signature }
    }
}

/// One entry of `rules:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `builtin:NAME`, or a package path (Wasm packages arrive in a later release).
    pub rule: String,
    /// The rule's own configuration, checked by the rule. Serialized with every key that
    /// names a secret (`password`, `token`, `key`, …) redacted.
    #[serde(default, serialize_with = "redact::rule_config")]
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

/// `admin:` — the admin HTTP API for operators: `/healthz`, `/metrics` (Prometheus), `/rules`,
/// and the operations that act on the gateway (ending device sessions). With a token (`token`
/// or `token_file`), requests must carry it as `Authorization: Bearer TOKEN`. Without one, on
/// an address other than loopback, only the read-only endpoints are served
/// ([`AdminConfig::open_beyond_loopback`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where to listen (`127.0.0.1:9184`); `none` (or empty) turns the admin API off. Beyond
    /// loopback without a token, only health, metrics, rules and the overview are served.
    #[serde(deserialize_with = "admin_bind")]
    pub bind: Option<SocketAddr>,
    /// The bearer token the API asks for (printable ASCII, no spaces; e.g. `openssl rand -hex
    /// 32`). Or `token_file`. Serialized as [`redact::REDACTED`].
    #[serde(serialize_with = "redact::secret")]
    pub token: Option<String>,
    /// A file whose first line is the token, relative to the config file (a systemd
    /// `LoadCredential=` file, a mounted secret); read when the config is loaded.
    #[serde(serialize_with = "redact::path")]
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` by [`AdminConfig::load_token`].
    #[serde(skip)]
    pub file_token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { bind: Some(DEFAULT_ADMIN_BIND), token: None, token_file: None, file_token: None }
    }
}

impl AdminConfig {
    /// The token requests must carry: the first line of `token_file` as read when the config
    /// was loaded, else `token`; trimmed. `None`: the API asks for none.
    pub fn token(&self) -> Option<&str> {
        self.file_token.as_deref().or(self.token.as_deref()).map(str::trim)
    }

    /// Reads `token_file` (relative to `dir`, the config file's folder) into `file_token`, and
    /// checks the token, reporting what is wrong with it.
    pub(super) fn load_token(&mut self, dir: Option<&Path>, bad: &mut dyn FnMut(&str, String)) {
        self.file_token = None;
        let (key, token) = match (&self.token, &self.token_file) {
            (None, None) => return,
            (Some(_), Some(_)) => {
                return bad(
                    "admin.token",
                    "admin.token and admin.token_file are both set; keep one of them (admin.token_file keeps the token out of the config file)".into(),
                );
            }
            (Some(token), None) => ("admin.token", token.trim().to_string()),
            (None, Some(path)) => {
                let path = match dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.clone(),
                };
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) => {
                        return bad(
                            "admin.token_file",
                            format!(
                                "cannot read {}: {e}; give the path of a file whose first line is the token",
                                path.display()
                            ),
                        );
                    }
                };
                let token = text.lines().next().unwrap_or_default().trim().to_string();
                if token.is_empty() {
                    return bad(
                        "admin.token_file",
                        format!(
                            "the first line of {} is empty; write the token there (e.g. `openssl rand -hex 32 > {}`)",
                            path.display(),
                            path.display()
                        ),
                    );
                }
                ("admin.token_file", token)
            }
        };
        if token.is_empty() {
            return bad(key, "the token is empty; set a token (e.g. `openssl rand -hex 32`), or remove the key".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(
                key,
                "the token has spaces, control or non-ASCII characters, which an Authorization header cannot carry; use printable ASCII (e.g. `openssl rand -hex 32`)".into(),
            );
        }
        if key == "admin.token_file" {
            self.file_token = Some(token);
        }
    }

    /// True when the API listens beyond loopback without a token: it then serves only what
    /// reveals nothing of the devices and changes nothing — `/healthz`, `/metrics`, `/rules`,
    /// `/overview`, the dashboard's files (what probes and Prometheus in a container need) —
    /// and answers the rest 403 with the fix.
    pub fn open_beyond_loopback(&self) -> bool {
        self.bind.is_some_and(|bind| !bind.ip().to_canonical().is_loopback()) && self.token().is_none()
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
