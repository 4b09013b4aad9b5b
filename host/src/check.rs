//! What `run` builds before it binds a socket, in one place: [`prepare`]. `sluice check` calls
//! it too and stops there, so a configuration that `check` passes is one `run` starts with, and
//! every problem has one source: the loader that refuses it.
//!
//! [`prepare`] loads the rule chain (every package read, checked against its pin, compiled,
//! initialised with its config, its vectors run), the DTLS keys and certificates, and the MQTT
//! client's options (broker URL parsed, CA file read). Each problem is reported with the config
//! file, the key and the fix.

use std::path::{Path, PathBuf};

use crate::config::{Broker, Config, Problem, Problems};
use crate::mqtt::{ClientConfig, ConfigError};
use crate::rules::{Chain, Engine};
use crate::shutdown::Shutdown;
use crate::transport::dtls;

/// Everything built before binding.
pub struct Prepared {
    /// The rule chain.
    pub chain: Chain,
    /// The DTLS listener's settings, when `dtls:` names credentials.
    pub dtls: Option<dtls::Settings>,
    /// The MQTT client's options (for the embedded broker, the URL is set once it runs).
    pub mqtt: ClientConfig,
}

/// Builds what `config` describes, short of binding sockets and connecting; `file` names the
/// config file in problems, `config_dir` is its folder (relative paths). The PSK file watcher
/// runs until `shutdown` fires (so this needs a tokio runtime).
///
/// Every problem is listed, not only the first.
pub fn prepare(
    config: &Config,
    file: &str,
    config_dir: Option<&Path>,
    engine: &Engine,
    shutdown: &Shutdown,
) -> Result<Prepared, Problems> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(Problem { file: file.into(), key, message });
    let chain = match crate::rules::load_chain(config, config_dir, engine) {
        Ok(chain) => Some(chain),
        Err(failed) => {
            for failure in failed.0 {
                problem(format!("rules.{}", failure.entry), failure.error.to_string());
            }
            None
        }
    };
    let dtls = match config.dtls.enabled().then(|| dtls::Settings::from_config(&config.dtls, shutdown.watch())) {
        Some(Ok(settings)) => Some(settings),
        Some(Err(error)) => {
            problem(error.key, error.message);
            None
        }
        None => None,
    };
    let (url, embedded) = match &config.mqtt.broker {
        // The embedded broker's own address is known once it runs; the rest is checked now.
        Broker::Embedded => (format!("mqtt://{}", config.mqtt.embedded_bind), true),
        Broker::Url(url) => (url.clone(), false),
    };
    let mqtt = ClientConfig::from_config(&config.mqtt, url, embedded);
    if let Err(error) = mqtt.validate() {
        let (key, fix) = match &error {
            ConfigError::Url { .. } => ("mqtt.broker", "use embedded, mqtt://HOST:PORT or mqtts://HOST:PORT"),
            ConfigError::CaFile { .. } => ("mqtt.ca_file", "give the path of a PEM CA certificate"),
            ConfigError::NoRoots => ("mqtt.ca_file", "set mqtt.ca_file to the broker's CA certificate"),
            ConfigError::Invalid(_) => ("mqtt", "see examples/sluice.yaml for the ranges"),
            ConfigError::Thread(_) => ("mqtt", "the machine is out of threads or memory; free some and start again"),
        };
        problem(key.into(), format!("{error}; {fix}"));
    }
    match (chain, problems.is_empty()) {
        (Some(chain), true) => Ok(Prepared { chain, dtls, mqtt }),
        _ => Err(Problems(problems)),
    }
}

/// The folder relative paths in the config file at `path` are relative to: its own, made
/// canonical (so that the rules' slots name the same files after a reload, and messages give
/// absolute paths).
pub fn config_dir(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })?;
    Some(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
}

/// `sluice check FILE`: reads the file and builds everything `run` would, listing every
/// problem (those of the file itself, then those of the loaders for its readable parts).
pub fn check(path: &Path) -> Result<String, Problems> {
    let (config, mut problems) = Config::load_all(path);
    let Some(config) = config else { return Err(Problems(problems)) };
    let file = path.display().to_string();
    let config_dir = config_dir(path);
    let (trigger, shutdown) = crate::shutdown::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let prepared = match &runtime {
        Ok(runtime) => {
            let _entered = runtime.enter();
            prepare(&config, &file, config_dir.as_deref(), Engine::global(), &shutdown)
        }
        Err(error) => Err(Problems(vec![Problem {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot start tokio: {error}"),
        }])),
    };
    trigger.fire();
    if let Err(found) = prepared {
        // A section the file got wrong was read as its defaults: its loader's view is moot.
        let reported: Vec<String> = problems.iter().map(|p| p.key.clone()).filter(|k| !k.is_empty()).collect();
        problems.extend(found.0.into_iter().filter(|p| !reported.iter().any(|k| p.key.starts_with(k.as_str()))));
    }
    if problems.is_empty() { Ok(config.access_summary()) } else { Err(Problems(problems)) }
}
