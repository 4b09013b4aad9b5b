//! Hot reload: watch the rules folder (and the config file), rebuild the chain aside, swap it.
//!
//! The [`Reloader`] owns a `notify` watcher and one thread. File events are debounced
//! ([`DEBOUNCE`]); files being written (`*.tmp`, `*.part`, `*~`, dotfiles) are ignored, so a
//! copy that ends in a rename is seen once, complete. On a change the thread rebuilds the chain
//! from the current config (see `load::build`): unchanged rules are reused as they are, each
//! changed package is compiled, initialised and run against its own test vectors, and only then
//! is the new chain stored in the `ArcSwap` the gateway reads once per request, so in-flight
//! requests finish on the version they started with. A package that fails any step is
//! refused with a log line and the version it would replace keeps serving.
//! [`Reloader::reload_now`] (SIGHUP) also re-reads the config file; a config with problems is
//! refused, every problem listed, and the serving chain stays.
//!
//! All compiling happens on the reloader's thread, never on a request task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Engine;
use super::chain::{Chain, LoadError};
use super::load::{self, Change};
use super::package;
use super::signature::TrustError;
use crate::config::Config;

/// How long the folder must be quiet before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// The outcome of the latest reload.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Reloads finished so far (0: none yet).
    pub count: u64,
    /// What changed in the latest one (refusals included).
    pub changes: Vec<Change>,
    /// Why the latest one was refused as a whole (a bad config, or a new entry that fails);
    /// the previous chain keeps serving.
    pub error: Option<String>,
    /// When it finished.
    pub at: Option<std::time::SystemTime>,
}

impl ReloadStatus {
    /// The refusals of the latest reload: slot and reason.
    pub fn refused(&self) -> Vec<(String, String)> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Refused { slot, reason, .. } => Some((slot.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Loads the chain a config describes and starts watching for changes: the server's one call
/// (run it off the async runtime: it compiles packages). `config_path` is the config file, if
/// any (relative paths in it, `rules_dir` included, are relative to its folder); `config` is
/// what the server runs with, command-line overrides applied (an overridden `rules_dir` must
/// be absolute, and it keeps winning over the file's on every reload).
pub fn start_rules(
    config: &Config,
    config_path: Option<&Path>,
    engine: &Engine,
) -> Result<(Arc<ArcSwap<Chain>>, Reloader), ReloadError> {
    let config_dir = config_path.and_then(Path::parent).map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()));
    let chain = Arc::new(ArcSwap::from_pointee(load::load_chain(config, config_dir.as_deref(), engine)?));
    let reloader = Reloader::start(config_path.map(Path::to_path_buf), config.clone(), chain.clone(), engine.clone())?;
    for rule in chain.load().rules() {
        info!(
            rule = %rule.name,
            version = %rule.version,
            sha256 = rule.sha256.as_deref().unwrap_or(""),
            signer = rule.signer.as_deref().unwrap_or(""),
            "Rule loaded."
        );
    }
    Ok((chain, reloader))
}

/// Why the rules could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The chain could not be loaded.
    #[error(transparent)]
    Load(#[from] super::load::ChainError),
    /// The watcher could not be created or could not watch a folder.
    #[error("cannot watch {path}: {source}; check that the folder exists and is readable")]
    Watch {
        /// The folder.
        path: String,
        /// notify's error.
        source: notify::Error,
    },
}

enum Message {
    Fs(notify::Result<notify::Event>),
    ReloadNow,
    Stop,
}

/// Asks the [`Reloader`] for a reload (`POST /rules/reload`); does nothing once it stopped.
#[derive(Clone)]
pub struct ReloadTrigger(mpsc::Sender<Message>);

impl std::fmt::Debug for ReloadTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadTrigger")
    }
}

impl ReloadTrigger {
    /// Reloads now, as [`Reloader::reload_now`].
    pub fn reload_now(&self) {
        let _ = self.0.send(Message::ReloadNow);
    }
}

/// Watches the rules folder and the config file, and swaps the chain on change.
pub struct Reloader {
    tx: mpsc::Sender<Message>,
    status: watch::Receiver<ReloadStatus>,
    thread: Option<JoinHandle<()>>,
}

/// The reloader thread's state.
struct Worker {
    config_path: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    /// `--rules-dir` given on the command line: wins over the file's `rules_dir` on reload.
    rules_dir_override: Option<PathBuf>,
    config: Config,
    chain: Arc<ArcSwap<Chain>>,
    engine: Engine,
    watcher: RecommendedWatcher,
    watched_dir: Option<PathBuf>,
    status: watch::Sender<ReloadStatus>,
    /// The sections a reload does not apply, as the file had them at start.
    started_with: Option<String>,
}

/// The config sections that need a restart (everything but `rules` and `rules_dir`), in a
/// comparable form.
fn restart_sections(c: &Config) -> String {
    format!("{:?}", (&c.coap, &c.mqtt, &c.dtls, &c.sessions, &c.values, &c.log, &c.admin))
}

impl Reloader {
    /// Starts watching. `config_path` is the config file (none: zero config), `config` the
    /// config the server started with (command-line overrides applied), `chain` the live chain.
    pub fn start(
        config_path: Option<PathBuf>,
        config: Config,
        chain: Arc<ArcSwap<Chain>>,
        engine: Engine,
    ) -> Result<Reloader, ReloadError> {
        let (tx, rx) = mpsc::channel();
        let fs_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = fs_tx.send(Message::Fs(event));
        })
        .map_err(|source| ReloadError::Watch { path: "(watcher)".into(), source })?;
        let config_path = config_path.map(|p| p.canonicalize().unwrap_or(p));
        let config_dir = config_path.as_ref().and_then(|p| p.parent().map(Path::to_path_buf));
        if let Some(dir) = &config_dir {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| ReloadError::Watch { path: dir.display().to_string(), source })?;
        }
        let from_file = config_path.as_ref().and_then(|p| Config::load(p).ok());
        let started_with = from_file.as_ref().map(restart_sections);
        let file_rules_dir = from_file.map(|c| c.rules_dir);
        let rules_dir_override = match file_rules_dir {
            Some(from_file) if from_file != config.rules_dir => config.rules_dir.clone(),
            None => config.rules_dir.clone(),
            _ => None,
        };
        let (status_tx, status) = watch::channel(ReloadStatus::default());
        let mut worker = Worker {
            config_path,
            config_dir,
            rules_dir_override,
            config,
            chain,
            engine,
            watcher,
            watched_dir: None,
            status: status_tx,
            started_with,
        };
        worker.watch_rules_dir()?;
        let thread = std::thread::Builder::new()
            .name("sluice-reload".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| ReloadError::Watch { path: "(thread)".into(), source: notify::Error::io(e) })?;
        Ok(Reloader { tx, status, thread: Some(thread) })
    }

    /// Reloads now: re-reads the config file and every package (SIGHUP).
    pub fn reload_now(&self) {
        let _ = self.tx.send(Message::ReloadNow);
    }

    /// A handle that asks for a reload, for others than the reloader's owner (the admin API).
    pub fn trigger(&self) -> ReloadTrigger {
        ReloadTrigger(self.tx.clone())
    }

    /// The latest reload's outcome; `changed().await` on it waits for the next reload.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }

    /// Blocks until reload number `count` has finished (or `timeout` passes); for tests and
    /// tools without a runtime.
    pub fn wait_for(&self, count: u64, timeout: Duration) -> Option<ReloadStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status.borrow().clone();
            if status.count >= count {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Worker {
    fn rules_dir(&self) -> Option<PathBuf> {
        let dir = load::rules_dir(&self.config, self.config_dir.as_deref())?;
        Some(dir.canonicalize().unwrap_or(dir))
    }

    /// Watches the current rules folder (and stops watching a previous one).
    fn watch_rules_dir(&mut self) -> Result<(), ReloadError> {
        let dir = self.rules_dir();
        if dir == self.watched_dir {
            return Ok(());
        }
        if let Some(old) = self.watched_dir.take() {
            let _ = self.watcher.unwatch(&old);
        }
        if let Some(dir) = &dir {
            // A rules folder named in the config but not there yet is created, so that copying
            // the first package into it just works.
            let _ = std::fs::create_dir_all(dir);
            self.watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| ReloadError::Watch { path: dir.display().to_string(), source })?;
        }
        self.watched_dir = dir;
        Ok(())
    }

    /// Whether an event concerns a package or the config file.
    fn relevant(&self, event: &notify::Event) -> (bool, bool) {
        if matches!(event.kind, EventKind::Access(_)) {
            return (false, false);
        }
        let mut package_changed = false;
        let mut config_changed = false;
        for path in &event.paths {
            if self.config_path.as_deref() == Some(path.as_path()) {
                config_changed = true;
            }
            let in_dir = self.watched_dir.as_deref().is_some_and(|d| path.parent() == Some(d));
            if in_dir && package::is_package_file(path) {
                package_changed = true;
            }
        }
        (package_changed, config_changed)
    }

    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut pending: Option<(Instant, bool)> = None;
        let mut next_poll: Option<Instant> = None;
        loop {
            // Rules referenced in a registry: their tags are looked up again every
            // `registry.poll` (a moved tag is pulled, tested and swapped like a changed file),
            // on a deadline that other messages (file events) do not push back.
            let poll = self.config.registry.poll;
            let polls = !poll.is_zero() && self.config.rule_chain().iter().any(|r| r.rule.starts_with("oci://"));
            let poll_at = *next_poll.get_or_insert_with(|| Instant::now() + poll);
            // One wait, until the debounced change or the poll, whichever comes first.
            let wake = [pending.map(|(at, _)| at), polls.then_some(poll_at)].into_iter().flatten().min();
            let message = match wake {
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        // A change waits out its debounce; a poll reloads the chain as it is.
                        let due = pending.filter(|(at, _)| *at <= Instant::now());
                        let reread = due.is_some_and(|(_, reread)| reread);
                        if due.is_some() {
                            pending = None;
                        }
                        // Either reload looks the tags up again.
                        next_poll = None;
                        self.reload(reread);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            match message {
                Message::Stop => return,
                Message::ReloadNow => {
                    pending = None;
                    self.reload(true);
                }
                Message::Fs(Err(error)) => warn!(%error, "The rules folder watcher reported an error."),
                Message::Fs(Ok(event)) => {
                    let (packages, config) = self.relevant(&event);
                    if packages || config {
                        let reread = config || pending.is_some_and(|(_, r)| r);
                        pending = Some((Instant::now() + DEBOUNCE, reread));
                    }
                }
            }
        }
    }

    /// Rebuilds the chain (re-reading the config file when `reread`) and swaps it in.
    fn reload(&mut self, reread: bool) {
        let mut config = self.config.clone();
        if reread && let Some(path) = &self.config_path {
            match Config::load(path) {
                Ok(mut fresh) => {
                    if self.started_with.as_ref().is_some_and(|s| *s != restart_sections(&fresh)) {
                        warn!(
                            file = %path.display(),
                            "A reload applies rules and rules_dir only; restart Sluice to apply the changes to coap, mqtt, dtls, sessions, values, log or admin."
                        );
                    }
                    if self.rules_dir_override.is_some() {
                        fresh.rules_dir = self.rules_dir_override.clone();
                    }
                    config = fresh;
                }
                Err(problems) => {
                    let reason = problems.to_string();
                    warn!(file = %path.display(), %reason, "Config refused; the previous chain keeps serving.");
                    return self.finish(Vec::new(), Some(reason));
                }
            }
        }
        let current = self.chain.load_full();
        match load::build(&config, self.config_dir.as_deref(), &self.engine, Some(&current)) {
            Ok((chain, changes)) => {
                self.chain.store(Arc::new(chain));
                self.config = config;
                if let Err(error) = self.watch_rules_dir() {
                    warn!(%error, "The rules folder cannot be watched; reload with SIGHUP.");
                }
                log_changes(&changes);
                self.finish(changes, None);
            }
            Err(error) => {
                let reason = error.to_string();
                let file = rule_file(&error);
                warn!(%file, %reason, "Reload refused; the previous chain keeps serving.");
                self.finish(Vec::new(), Some(reason));
            }
        }
    }

    fn finish(&mut self, changes: Vec<Change>, error: Option<String>) {
        self.status.send_modify(|s| {
            s.count += 1;
            s.changes = changes;
            s.error = error;
            s.at = Some(std::time::SystemTime::now());
        });
    }
}

fn rule_file(error: &LoadError) -> String {
    match error {
        LoadError::PinMismatch { file, .. } | LoadError::Vectors { file, .. } => file.clone(),
        LoadError::Trust(
            TrustError::Tampered { file, .. } | TrustError::Untrusted { file, .. } | TrustError::Unsigned { file },
        ) => file.clone(),
        _ => String::new(),
    }
}

/// Logs each change of a reload.
fn log_changes(changes: &[Change]) {
    for change in changes {
        match change {
            Change::Added(new) => info!(
                rule = %new.name,
                version = %new.version,
                sha256 = new.sha256.as_deref().unwrap_or(""),
                signer = new.signer.as_deref().unwrap_or(""),
                "Rule added."
            ),
            Change::Swapped { old, new } => info!(
                rule = %new.name,
                old_version = %old.version,
                new_version = %new.version,
                sha256 = new.sha256.as_deref().unwrap_or(""),
                signer = new.signer.as_deref().unwrap_or(""),
                "Rule swapped."
            ),
            Change::Removed(old) => info!(rule = %old.name, version = %old.version, "Rule removed."),
            Change::Refused { slot, file, reason, kept } => {
                let file = file.as_ref().map(|f| f.display().to_string()).unwrap_or_default();
                match kept {
                    Some(kept) => warn!(
                        rule = %kept.name,
                        %file,
                        %reason,
                        version = %kept.version,
                        "Rule refused; the previous version keeps serving."
                    ),
                    None => warn!(rule = %slot, %file, %reason, "Rule refused; the previous version keeps serving."),
                }
            }
        }
    }
}
