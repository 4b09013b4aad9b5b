//! The gateway's configuration: YAML on disk, the `*Config` types it parses into, and the
//! validation that `sluice check` and `sluice run` share.
//!
//! Unknown keys are errors. Validation does not stop at the first problem: every section is
//! parsed on its own and every value is checked, so that [`Problem`]s list everything wrong at
//! once, each naming the file, the key and the fix.

mod coap;
mod mqtt;
mod redact;
mod sections;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use coap::{CoapConfig, DtlsConfig, NotifyType, Verify};
pub use mqtt::{Broker, MqttConfig, MqttProtocol, QosSetting};
pub use redact::REDACTED;
pub use sections::{
    AdminConfig, DEFAULT_ADMIN_BIND, LogConfig, RegistryConfig, RuleConfig, RuleLimitsConfig, SessionsConfig,
    TrustConfig, ValuesConfig,
};

/// The whole configuration file.
///
/// Serializing it (as [`Config::redacted_json`] does) gives every key with its value, defaults
/// included, and every secret replaced by [`REDACTED`].
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// CoAP over UDP.
    #[serde(default)]
    pub coap: CoapConfig,
    /// CoAP over DTLS (coaps); off unless it names credentials.
    #[serde(default)]
    pub dtls: DtlsConfig,
    /// The MQTT broker and publish/subscribe defaults.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// EMQX 5 connection mode sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// PubSub (`/ps`) topic values.
    #[serde(default)]
    pub values: ValuesConfig,
    /// A folder of rule packages (`*.wasm`), watched: a package copied in is loaded, tested
    /// against its own vectors and swapped in without a restart. Relative to the config file.
    #[serde(default, serialize_with = "redact::path")]
    pub rules_dir: Option<PathBuf>,
    /// The rule chain, in order. Empty means `builtin:emqx` with its defaults.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Which rule packages may run: trusted signing keys, and whether a signature is required.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Rules referenced in OCI registries (`rule: oci://…`): cache, plain-HTTP hosts, polling.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin HTTP API for operators, and its bearer token.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// One thing wrong with a configuration: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// The dotted key (`mqtt.broker`), or empty for the file as a whole.
    pub key: String,
    /// What is wrong, ending with the fix.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// The problems of a configuration, all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The most UDP drivers (`coap.drivers`) one listener may have.
const MAX_DRIVERS: usize = 256;

const SECTIONS: &[&str] =
    &["coap", "dtls", "mqtt", "sessions", "values", "rules_dir", "rules", "trust", "registry", "log", "admin"];

impl Config {
    /// The zero-config start: every default, and `builtin:emqx` with anonymous access.
    pub fn zero_config() -> Config {
        let mut config = Config::default();
        let mut rule = serde_yaml::Mapping::new();
        rule.insert("anonymous".into(), true.into());
        config.rules =
            vec![RuleConfig { rule: "builtin:emqx".into(), config: rule.into(), sha256: None, limits: None }];
        config
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let (config, problems) = Config::load_all(path);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(Problems(problems)),
        }
    }

    /// Reads a configuration file and lists every problem in it; the configuration (with the
    /// defaults where a section was refused) unless the file could not be read at all. For
    /// `sluice check`, which goes on to build what the readable parts describe.
    pub fn load_all(path: &Path) -> (Option<Config>, Vec<Problem>) {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let (config, problems) = Config::read(&text, &file);
                (Some(config), problems)
            }
            Err(e) => {
                let message = format!("cannot read the file ({e}); check the path given to --config");
                (None, vec![Problem { file, key: String::new(), message }])
            }
        }
    }

    /// Parses and checks configuration text; `file` names it in problems.
    pub fn parse(text: &str, file: &str) -> Result<Config, Problems> {
        let (config, problems) = Config::read(text, file);
        if problems.is_empty() { Ok(config) } else { Err(Problems(problems)) }
    }

    /// Parses configuration text, keeping the defaults of every section that has a problem,
    /// and lists the problems.
    pub fn read(text: &str, file: &str) -> (Config, Vec<Problem>) {
        let problem = |key: &str, message: String| Problem { file: file.into(), key: key.into(), message };
        let root: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => return (Config::default(), vec![problem("", format!("not valid YAML: {e}"))]),
        };
        let mut problems = Vec::new();
        let mut config = Config::default();
        let map = match root {
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                let message = "expected a mapping of sections (coap:, mqtt:, rules:, …) at the top";
                return (Config::default(), vec![problem("", message.into())]);
            }
        };
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_owned) else {
                problems.push(problem("", format!("a top-level key is not a string: {key:?}")));
                continue;
            };
            match key.as_str() {
                "coap" => section(value, &key, &mut config.coap, &mut problems, file),
                "dtls" => section(value, &key, &mut config.dtls, &mut problems, file),
                "mqtt" => section(value, &key, &mut config.mqtt, &mut problems, file),
                "sessions" => section(value, &key, &mut config.sessions, &mut problems, file),
                "values" => section(value, &key, &mut config.values, &mut problems, file),
                "rules" => section(value, &key, &mut config.rules, &mut problems, file),
                "rules_dir" => section(value, &key, &mut config.rules_dir, &mut problems, file),
                "trust" => section(value, &key, &mut config.trust, &mut problems, file),
                "registry" => section(value, &key, &mut config.registry, &mut problems, file),
                "log" => section(value, &key, &mut config.log, &mut problems, file),
                "admin" => section(value, &key, &mut config.admin, &mut problems, file),
                other => {
                    problems.push(problem(other, format!("unknown section; expected one of {}", SECTIONS.join(", "))))
                }
            }
        }
        if let Some(dir) = config_dir(file) {
            config.dtls.resolve(dir);
        }
        config.sessions.load_secret(config_dir(file), &mut |key: &str, message: String| {
            problems.push(Problem { file: file.into(), key: key.into(), message })
        });
        config.trust.load_keys(config_dir(file), &mut |key: &str, message: String| {
            problems.push(Problem { file: file.into(), key: key.into(), message })
        });
        config.admin.load_token(config_dir(file), &mut |key: &str, message: String| {
            problems.push(Problem { file: file.into(), key: key.into(), message })
        });
        config.validate(file, &mut problems);
        (config, problems)
    }

    /// Semantic checks beyond the types: values in range, files present.
    fn validate(&self, file: &str, problems: &mut Vec<Problem>) {
        let mut bad =
            |key: &str, message: String| problems.push(Problem { file: file.into(), key: key.into(), message });
        let bs = self.coap.block_size;
        if !(16..=1024).contains(&bs) || !bs.is_power_of_two() {
            bad("coap.block_size", format!("{bs} is not a block size; use 16, 32, 64, 128, 256, 512 or 1024"));
        }
        if self.coap.max_body_size < bs {
            bad("coap.max_body_size", format!("must be at least coap.block_size ({bs})"));
        }
        if self.coap.socket_buffer < 4096 {
            bad(
                "coap.socket_buffer",
                format!("{} bytes is too small; use at least 4096 (default 4194304)", self.coap.socket_buffer),
            );
        }
        if !(1..=MAX_DRIVERS).contains(&self.coap.drivers) {
            bad(
                "coap.drivers",
                format!(
                    "{} is out of range; use 1 to {MAX_DRIVERS} (about one per core; default 1)",
                    self.coap.drivers
                ),
            );
        }
        if self.coap.request_queue == 0 {
            bad("coap.request_queue", "must be at least 1".into());
        }
        if let Some(problem) = self.mqtt.broker.problem() {
            bad("mqtt.broker", problem);
        }
        if let Some(ca) = &self.mqtt.ca_file
            && !ca.is_file()
        {
            bad("mqtt.ca_file", format!("{} does not exist; give the path of a PEM CA certificate", ca.display()));
        }
        self.dtls.validate(&mut bad);
        if self.mqtt.queue == 0 {
            bad("mqtt.queue", "must be at least 1".into());
        }
        self.sessions.validate(&mut bad);
        if self.values.max_topics == 0 {
            bad("values.max_topics", "must be at least 1".into());
        }
        if log_filter(&self.log.level).is_err() {
            bad(
                "log.level",
                format!("{:?} is not a log filter; use error, warn, info, debug or trace", self.log.level),
            );
        }
    }

    /// The rules to load: the configured chain, or `builtin:emqx` with its defaults.
    pub fn rule_chain(&self) -> Vec<RuleConfig> {
        if self.rules.is_empty() {
            vec![RuleConfig {
                rule: "builtin:emqx".into(),
                config: serde_yaml::Value::Null,
                sha256: None,
                limits: None,
            }]
        } else {
            self.rules.clone()
        }
    }

    /// Who the file lets in, in a sentence for `sluice check`: a file without `rules:` runs
    /// `builtin:emqx` with its defaults (anonymous access off), unlike `sluice run` with no
    /// file at all (anonymous on), and that is what surprises people.
    pub fn access_summary(&self) -> String {
        const LET_IN: &str = "to let devices in, add:\n  rules:\n    - rule: builtin:emqx\n      config:\n        anonymous: true     # or users: [{username: …, password: …}]";
        let Some(first) = self.rules.first() else {
            return format!(
                "Access: no rules: section, so builtin:emqx runs with its defaults (anonymous: false, no users) and \
                 refuses every device with 4.01 (sluice run without any config file is anonymous, a config file \
                 is not); {LET_IN}"
            );
        };
        if self.rules.len() > 1 || first.rule != "builtin:emqx" {
            let names: Vec<&str> = self.rules.iter().map(|r| r.rule.as_str()).collect();
            return format!("Access: decided by the rules, in order: {}", names.join(", "));
        }
        let anonymous = first.config.get("anonymous").and_then(serde_yaml::Value::as_bool).unwrap_or(false);
        let users = first.config.get("users").and_then(serde_yaml::Value::as_sequence).map_or(0, Vec::len);
        let by_identity =
            first.config.get("clientid_from_identity").and_then(serde_yaml::Value::as_bool).unwrap_or(false);
        if by_identity && !anonymous {
            return format!(
                "Access: builtin:emqx with clientid_from_identity: DTLS devices are let in by their identity{}; \
                 anonymous: false",
                if users > 0 { format!(", and {users} user(s) by their password") } else { String::new() }
            );
        }
        match (anonymous, users) {
            (true, 0) => "Access: builtin:emqx with anonymous: true: any device is let in".into(),
            (true, n) => format!(
                "Access: builtin:emqx with anonymous: true and {n} user(s): any device is let in, users by their password"
            ),
            (false, 0) => format!(
                "Access: builtin:emqx with anonymous: false and no users: every device is refused with 4.01; {LET_IN}"
            ),
            (false, n) => format!(
                "Access: builtin:emqx with {n} user(s), anonymous: false: devices need a known user and password"
            ),
        }
    }

    /// The effective configuration as JSON, for operators: every section and key with its
    /// value (defaults included, `rules` as [`Config::rule_chain`] runs it), durations written
    /// as the config takes them (`30s`, `500ms`), addresses as `IP:PORT`, paths as text, and
    /// every secret replaced by [`REDACTED`]: `mqtt.password` and any credentials in
    /// `mqtt.broker`, `sessions.secret`, `admin.token`, and in each rule's `config:` any key
    /// naming a secret (password, secret, token, key, psk, credential, private) at any depth.
    /// Key material read from files (the sessions secret, the admin token file, PSKs and
    /// private keys) is never held here or shown; the files' paths are.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("the configuration could not be rendered: {e}") }),
        );
        if self.rules.is_empty()
            && let Some(map) = json.as_object_mut()
        {
            let chain = serde_json::to_value(self.rule_chain()).unwrap_or(serde_json::Value::Null);
            map.insert("rules".into(), chain);
        }
        json
    }
}

/// The folder paths in a config file are relative to (`file` is the path when it came from
/// one); `None` when it names no folder that exists.
fn config_dir(file: &str) -> Option<&Path> {
    let dir = Path::new(file).parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d });
    dir.filter(|d| d.is_dir())
}

/// Parses one section into `target`, turning serde's error into a problem with the full key.
fn section<T: DeserializeOwned>(
    value: serde_yaml::Value,
    key: &str,
    target: &mut T,
    problems: &mut Vec<Problem>,
    file: &str,
) {
    if value.is_null() {
        return;
    }
    match serde_yaml::from_value::<T>(value) {
        Ok(parsed) => *target = parsed,
        Err(e) => problems.push(Problem { file: file.into(), key: key.into(), message: explain(&e.to_string()) }),
    }
}

/// Adds the fix to serde's wording where it is missing.
fn explain(error: &str) -> String {
    if error.contains("unknown field") {
        format!("{error}; remove the key or fix its spelling (see examples/sluice.yaml)")
    } else {
        error.to_string()
    }
}

/// Durations written as `500ms`, `2s`, `5m`, `1h`, or a number of seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `500ms`, `2s`, `1.5s`, `5m`, `1h` or a bare number of seconds.
    pub fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
            Some(i) => text.split_at(i),
            None => (text, "s"),
        };
        let n: f64 = number.parse().ok()?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(secs).ok()
    }

    /// Writes a duration the way [`parse`] reads it, in the largest unit that keeps it exact:
    /// `24h`, `5m`, `30s`, `500ms`, `0s`; a duration finer than milliseconds as seconds with
    /// a fraction (`0.0005s`).
    pub fn format(d: Duration) -> String {
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        if nanos == 0 {
            match secs {
                0 => "0s".into(),
                s if s % 3600 == 0 => format!("{}h", s / 3600),
                s if s % 60 == 0 => format!("{}m", s / 60),
                s => format!("{s}s"),
            }
        } else if nanos % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs_f64())
        }
    }

    /// Serde adapter for `#[serde(with = "duration")]`: writes [`format`].
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Serde adapter for `#[serde(with = "duration")]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        let parsed = match &value {
            serde_yaml::Value::Number(n) => n.as_f64().and_then(|f| parse(&f.to_string())),
            serde_yaml::Value::String(s) => parse(s),
            _ => None,
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!("{value:?} is not a duration; write it like 500ms, 2s, 5m or 1h"))
        })
    }
}

/// Flattens a rule's YAML config into the dotted keys of [`sluice_sdk::Config`]:
/// `users: [{username: tom}]` becomes `users.0.username = tom`.
pub fn flatten(value: &serde_yaml::Value) -> sluice_sdk::Config {
    fn walk(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<(String, String)>) {
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match value {
            serde_yaml::Value::Null => {}
            serde_yaml::Value::Bool(b) => out.push((prefix.into(), b.to_string())),
            serde_yaml::Value::Number(n) => out.push((prefix.into(), n.to_string())),
            serde_yaml::Value::String(s) => out.push((prefix.into(), s.clone())),
            // An empty list must stay visible: `subscribe: []` means "nothing", not "absent".
            serde_yaml::Value::Sequence(items) if items.is_empty() => out.push((prefix.into(), "[]".into())),
            serde_yaml::Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&join(&i.to_string()), item, out);
                }
            }
            serde_yaml::Value::Mapping(map) => {
                for (k, v) in map {
                    let key = match k {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                    };
                    walk(&join(&key), v, out);
                }
            }
            serde_yaml::Value::Tagged(tagged) => walk(prefix, &tagged.value, out),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    sluice_sdk::Config::from_entries(out)
}

/// A log filter from `RUST_LOG`-style directives (`info,sluice=debug`). Each directive is
/// trimmed first (tracing-subscriber panics on some untrimmed ones, found by fuzzing) and field
/// values are matched as plain text, not compiled into regular expressions (a crafted
/// `log.level` could take minutes to compile).
pub fn log_filter(directives: &str) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    let trimmed: Vec<&str> = directives.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    tracing_subscriber::EnvFilter::builder().with_regex(false).parse(trimmed.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn admin_bind_defaults_to_loopback_and_can_be_turned_off() {
        assert_eq!(Config::parse("", "t.yaml").unwrap().admin.bind, Some(DEFAULT_ADMIN_BIND));
        assert!(DEFAULT_ADMIN_BIND.ip().is_loopback());
        for off in ["none", "''", "~", "off"] {
            let config = Config::parse(&format!("admin:\n  bind: {off}\n"), "t.yaml").unwrap();
            assert_eq!(config.admin.bind, None, "{off}");
        }
        let config = Config::parse("admin:\n  bind: 127.0.0.1:0\n", "t.yaml").unwrap();
        assert_eq!(config.admin.bind, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        let problems = Config::parse("admin:\n  bind: localhost\n", "gw.yaml").unwrap_err().0;
        assert_eq!(problems[0].key, "admin");
        assert!(problems[0].message.contains("127.0.0.1:9184"), "{problems:?}");
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = Config::parse("", "t.yaml").unwrap();
        assert_eq!(config.coap.bind.port(), 5683);
        assert_eq!(config.mqtt.broker, Broker::Embedded);
        assert_eq!(config.rule_chain()[0].rule, "builtin:emqx");
    }

    #[test]
    fn every_problem_is_listed_with_file_and_key() {
        let text = "coap:\n  bindd: 1\nmqtt:\n  broker: tcp://x\nbogus: 1\n";
        let problems = Config::parse(text, "gw.yaml").unwrap_err().0;
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"coap"), "{problems:?}");
        assert!(keys.contains(&"mqtt.broker"), "{problems:?}");
        assert!(keys.contains(&"bogus"), "{problems:?}");
        assert!(problems.iter().all(|p| p.file == "gw.yaml"));
        let coap = problems.iter().find(|p| p.key == "coap").unwrap();
        assert!(coap.message.contains("bindd") && coap.message.contains("remove the key"), "{coap}");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(duration::parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration::parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(duration::parse("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(duration::parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(duration::parse("5 parsecs"), None);
        let config = Config::parse("coap:\n  ack_timeout: 3s\nmqtt:\n  keep_alive: 10\n", "t").unwrap();
        assert_eq!(config.coap.ack_timeout, Duration::from_secs(3));
        assert_eq!(config.mqtt.keep_alive, Duration::from_secs(10));
    }

    #[test]
    fn qos_settings_parse_coap_and_numbers() {
        let config = Config::parse("mqtt:\n  publish_qos: 1\n  subscribe_qos: coap\n", "t").unwrap();
        assert_eq!(config.mqtt.publish_qos, QosSetting::Fixed(1));
        assert_eq!(config.mqtt.subscribe_qos.for_request(true), 1);
        assert_eq!(config.mqtt.subscribe_qos.for_request(false), 0);
        assert!(Config::parse("mqtt:\n  publish_qos: 3\n", "t").is_err());
    }

    #[test]
    fn block_size_must_be_a_power_of_two_in_range() {
        let problems = Config::parse("coap:\n  block_size: 1000\n", "t").unwrap_err().0;
        assert_eq!(problems[0].key, "coap.block_size");
        assert!(problems[0].message.contains("use 16"));
    }

    #[test]
    fn drivers_are_one_by_default_and_zero_is_refused_with_the_range() {
        assert_eq!(Config::parse("", "t").unwrap().coap.drivers, 1);
        assert_eq!(Config::parse("coap:\n  drivers: 2\n", "t").unwrap().coap.drivers, 2);
        let problems = Config::parse("coap:\n  drivers: 0\n", "t").unwrap_err().0;
        assert_eq!(problems[0].key, "coap.drivers");
        assert!(problems[0].message.contains("use 1 to 256"), "{}", problems[0]);
    }

    #[test]
    fn rule_config_flattens_to_dotted_keys() {
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("anonymous: false\nusers:\n  - username: tom\n    publish: [a/#, b]\n").unwrap();
        let flat = flatten(&yaml);
        assert_eq!(flat.get("anonymous"), Some("false"));
        assert_eq!(flat.get("users.0.username"), Some("tom"));
        assert_eq!(flat.get("users.0.publish.1"), Some("b"));
        assert_eq!(flat.list_len("users"), 1);
        let yaml: serde_yaml::Value = serde_yaml::from_str("subscribe: []\n").unwrap();
        assert_eq!(flatten(&yaml).get("subscribe"), Some("[]"));
    }

    #[test]
    fn dtls_is_off_by_default_and_its_problems_name_key_and_fix() {
        let config = Config::parse("", "t.yaml").unwrap();
        assert!(!config.dtls.enabled());
        assert_eq!(config.dtls.bind.port(), 5684);
        let text = "dtls:\n  psk_file: /nonexistent/psk.txt\n  cert_file: /nonexistent/server.crt\n  verify: peer\n  max_handshakes: 0\n";
        let problems = Config::parse(text, "gw.yaml").unwrap_err().0;
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        // The files are read (and their problems found) by the DTLS transport: see check.rs.
        for key in ["dtls.key_file", "dtls.ca_file", "dtls.max_handshakes"] {
            assert!(keys.contains(&key), "{key} missing from {problems:?}");
        }
        assert!(
            problems
                .iter()
                .all(|p| p.message.contains("set ") || p.message.contains("check ") || p.message.contains("at least")),
            "{problems:?}"
        );
        let problems = Config::parse("dtls:\n  verify: sometimes\n", "gw.yaml").unwrap_err().0;
        assert_eq!(problems[0].key, "dtls");
    }

    #[test]
    fn admin_token_is_inline_or_read_from_a_file_beside_the_config() {
        let config = Config::parse("admin:\n  token: s3cr3t-admin\n", "t.yaml").unwrap();
        assert_eq!(config.admin.token(), Some("s3cr3t-admin"));
        assert_eq!(Config::parse("", "t.yaml").unwrap().admin.token(), None);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "  from-the-file \nsecond line\n").unwrap();
        let file = dir.path().join("gw.yaml");
        std::fs::write(&file, "admin:\n  bind: 0.0.0.0:9184\n  token_file: admin.token\n").unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.admin.token(), Some("from-the-file"));
        assert_eq!(config.admin.token_file, Some(PathBuf::from("admin.token")));
    }

    #[test]
    fn admin_token_problems_name_key_and_fix() {
        let problems = Config::parse("admin:\n  token: a\n  token_file: b\n", "gw.yaml").unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "admin.token");
        let message = &problems[0].message;
        assert!(message.contains("admin.token_file") && message.contains("keep one"), "{message}");

        for empty in ["''", "'   '"] {
            let problems = Config::parse(&format!("admin:\n  token: {empty}\n"), "gw.yaml").unwrap_err().0;
            assert_eq!(problems[0].key, "admin.token", "{empty}");
            assert!(problems[0].message.contains("empty"), "{problems:?}");
        }
        let problems = Config::parse("admin:\n  token: two words\n", "gw.yaml").unwrap_err().0;
        assert_eq!(problems[0].key, "admin.token");

        let problems = Config::parse("admin:\n  token_file: /nonexistent/admin.token\n", "gw.yaml").unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "admin.token_file");
        assert!(problems[0].message.contains("/nonexistent/admin.token"), "{problems:?}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
        let file = dir.path().join("gw.yaml");
        std::fs::write(&file, "admin:\n  token_file: empty.token\n").unwrap();
        let problems = Config::load(&file).unwrap_err().0;
        assert_eq!(problems[0].key, "admin.token_file");
        assert!(problems[0].message.contains("empty.token") && problems[0].message.contains("empty"), "{problems:?}");
    }

    #[test]
    fn admin_beyond_loopback_without_a_token_is_read_only() {
        let open = Config::parse("admin:\n  bind: 0.0.0.0:9184\n", "gw.yaml").unwrap();
        assert!(open.admin.open_beyond_loopback());
        assert!(Config::parse("admin:\n  bind: '[::]:9000'\n", "t").unwrap().admin.open_beyond_loopback());
        for closed in [
            "admin:\n  bind: 0.0.0.0:9184\n  token: t0ken\n",
            "admin:\n  bind: 127.0.0.1:9184\n",
            "admin:\n  bind: '[::1]:9184'\n",
            "admin:\n  bind: 127.0.0.2:9184\n",
            "admin:\n  bind: none\n",
        ] {
            assert!(!Config::parse(closed, "t").unwrap().admin.open_beyond_loopback(), "{closed}");
        }
    }

    #[test]
    fn durations_are_written_the_way_they_are_read() {
        for (d, text) in [
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(90), "90s"),
            (Duration::ZERO, "0s"),
            (Duration::from_micros(500), "0.0005s"),
        ] {
            assert_eq!(duration::format(d), text);
            assert_eq!(duration::parse(text), Some(d), "{text}");
        }
    }

    #[test]
    fn redacted_json_shows_every_key_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("psk.txt"), "dev1:psk-key-material-1\n").unwrap();
        std::fs::write(dir.path().join("session.secret"), "session-secret-from-a-file\n").unwrap();
        let file = dir.path().join("gw.yaml");
        let text = "\
coap:
  bind: 0.0.0.0:5683
dtls:
  psk_file: psk.txt
  psk_identity_hint: hint-is-public
mqtt:
  broker: mqtt://broker.example.com:1883
  username: gateway
  password: broker-password-1
sessions:
  secret: sessions-secret-0123456789
admin:
  bind: 0.0.0.0:9184
  token: admin-token-42
rules:
  - rule: builtin:emqx
    config:
      anonymous: false
      users:
        - username: tom
          password: tom-password-7
          password_hash: tom-hash-8
";
        std::fs::write(&file, text).unwrap();
        let config = Config::load(&file).unwrap();
        let json = config.redacted_json();
        let rendered = json.to_string();
        for secret in [
            "broker-password-1",
            "sessions-secret-0123456789",
            "psk-key-material-1",
            "tom-password-7",
            "tom-hash-8",
            "admin-token-42",
        ] {
            assert!(!rendered.contains(secret), "{secret} in {rendered}");
        }
        assert_eq!(json["mqtt"]["broker"], "mqtt://broker.example.com:1883");
        assert_eq!(json["mqtt"]["username"], "gateway");
        assert_eq!(json["mqtt"]["password"], REDACTED);
        assert_eq!(json["mqtt"]["keep_alive"], "30s");
        assert_eq!(json["mqtt"]["publish_qos"], "coap");
        assert_eq!(json["mqtt"]["protocol"], "auto");
        assert_eq!(json["sessions"]["secret"], REDACTED);
        assert!(json["sessions"].get("key").is_none());
        assert_eq!(json["coap"]["bind"], "0.0.0.0:5683");
        assert_eq!(json["coap"]["ack_timeout"], "2s");
        assert_eq!(json["coap"]["notify_type"], "same");
        assert_eq!(json["dtls"]["psk_file"], dir.path().join("psk.txt").display().to_string());
        assert_eq!(json["dtls"]["psk_identity_hint"], "hint-is-public");
        assert_eq!(json["dtls"]["verify"], "none");
        assert_eq!(json["admin"]["bind"], "0.0.0.0:9184");
        assert_eq!(json["admin"]["token"], REDACTED);
        assert!(json["admin"].get("file_token").is_none());
        assert_eq!(json["rules"][0]["rule"], "builtin:emqx");
        assert_eq!(json["rules"][0]["config"]["users"][0]["username"], "tom");
        assert_eq!(json["rules"][0]["config"]["users"][0]["password"], REDACTED);
        assert_eq!(json["rules"][0]["config"]["anonymous"], false);
        assert!(rendered.contains("\"<redacted>\""));
        for section in SECTIONS {
            assert!(json.get(*section).is_some(), "{section} missing from {rendered}");
        }

        // A secret read from a file, the admin token from a file, credentials in the URL.
        let text = "\
mqtt:
  broker: mqtt://tom:url-password-3@broker.example.com:1883
sessions:
  secret_file: session.secret
admin:
  token_file: psk.txt
";
        std::fs::write(&file, text).unwrap();
        let (config, _) = Config::load_all(&file);
        let json = config.unwrap().redacted_json();
        let rendered = json.to_string();
        for secret in ["url-password-3", "tom:", "session-secret-from-a-file", "psk-key-material-1"] {
            assert!(!rendered.contains(secret), "{secret} in {rendered}");
        }
        assert_eq!(json["mqtt"]["broker"], "mqtt://<redacted>@broker.example.com:1883");
        assert_eq!(json["sessions"]["secret"], serde_json::Value::Null);
        assert_eq!(json["sessions"]["secret_file"], "session.secret");
        assert_eq!(json["admin"]["token"], serde_json::Value::Null);
        assert_eq!(json["admin"]["token_file"], "psk.txt");
    }

    #[test]
    fn redacted_json_of_the_defaults_has_the_effective_rule_chain() {
        let json = Config::parse("", "t").unwrap().redacted_json();
        assert_eq!(json["rules"][0]["rule"], "builtin:emqx");
        assert_eq!(json["mqtt"]["broker"], "embedded");
        assert_eq!(json["mqtt"]["password"], serde_json::Value::Null);
        assert_eq!(json["admin"]["bind"], "127.0.0.1:9184");
        assert_eq!(json["sessions"]["lifetime"], "24h");
        assert_eq!(json["rules_dir"], serde_json::Value::Null);
        let off = Config::parse("admin:\n  bind: none\n", "t").unwrap().redacted_json();
        assert_eq!(off["admin"]["bind"], serde_json::Value::Null);
    }

    #[test]
    fn dtls_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.txt"), "dev1:secretkey1\n").unwrap();
        let file = dir.path().join("gw.yaml");
        std::fs::write(&file, "dtls:\n  psk_file: keys.txt\n").unwrap();
        let config = Config::load(&file).unwrap();
        assert!(config.dtls.enabled());
        assert_eq!(config.dtls.psk_file, Some(dir.path().join("keys.txt")));
    }
}
