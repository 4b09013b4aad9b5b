//! Pre-shared keys: the PSK file, parsed into a table the handshake looks identities up in,
//! and re-read when it changes (the old table keeps serving if the new file is broken).
//!
//! The file has one `identity:key` per line, as in EMQX's PSK file; the key is the text after
//! the first `:` (what libcoap's `coap-client -k` takes). Blank lines and lines starting with
//! `#` are ignored. Keys never appear in logs or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the file's modification time and size are checked.
const POLL: Duration = Duration::from_secs(1);

/// A key; its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.0.len())
    }
}

/// Identities and their keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys(HashMap<String, Key>);

impl Keys {
    /// Parses the text of a PSK file; the error names the line and the fix.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let n = i + 1;
            let Some((identity, key)) = line.split_once(':') else {
                return Err(format!("line {n}: expected identity:key (like dev1:secretkey1)"));
            };
            if identity.is_empty() || key.is_empty() {
                return Err(format!("line {n}: the identity and the key must not be empty; write identity:key"));
            }
            if keys.insert(identity.to_string(), Key(key.as_bytes().to_vec())).is_some() {
                return Err(format!("line {n}: identity {identity:?} is listed twice; keep one line per identity"));
            }
        }
        Ok(Keys(keys))
    }

    /// Reads and parses a PSK file.
    pub fn load(path: &Path) -> Result<Keys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the PSK file {} ({e}); check dtls.psk_file", path.display()))?;
        Keys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The key of an identity.
    pub fn get(&self, identity: &[u8]) -> Option<&Key> {
        std::str::from_utf8(identity).ok().and_then(|id| self.0.get(id))
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The live key table, swapped as a whole when the file changes.
#[derive(Clone, Debug)]
pub struct Store {
    keys: Arc<ArcSwap<Keys>>,
}

impl Store {
    /// A store over a fixed table.
    pub fn new(keys: Keys) -> Store {
        Store { keys: Arc::new(ArcSwap::from_pointee(keys)) }
    }

    /// The key of an identity, now.
    pub fn key(&self, identity: &[u8]) -> Option<Key> {
        self.keys.load().get(identity).cloned()
    }

    /// Loads `path` and spawns a task that re-reads it when its modification time or size
    /// changes, until `shutdown`.
    pub fn watch(path: PathBuf, mut shutdown: watch::Receiver<bool>) -> Result<Store, String> {
        // Stamped before reading, so that a change during the read is picked up next time.
        let mut seen = stamp(&path);
        let store = Store::new(Keys::load(&path)?);
        let live = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
                }
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match Keys::load(&path) {
                    Ok(keys) => {
                        info!(file = %path.display(), identities = keys.len(), "PSK file reloaded.");
                        live.keys.store(Arc::new(keys));
                    }
                    Err(error) => warn!(%error, "PSK file not reloaded; the previous keys stay in use."),
                }
            }
        });
        Ok(store)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_identity_and_key() {
        let keys = Keys::parse("# devices\ndev1:secretkey1\n\ndev2:with:colon\r\n").unwrap();
        assert_eq!(keys.get(b"dev1").unwrap().bytes(), b"secretkey1");
        assert_eq!(keys.get(b"dev2").unwrap().bytes(), b"with:colon");
        assert_eq!(keys.get(b"nobody"), None);
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_key() {
        let error = Keys::parse("dev1:k\nnocolon\n").unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        let error = Keys::parse("dev1:topsecret\ndev1:topsecret\n").unwrap_err();
        assert!(error.contains("twice") && !error.contains("topsecret"), "{error}");
    }

    #[test]
    fn debug_output_redacts_keys() {
        let keys = Keys::parse("dev1:secretkey1\n").unwrap();
        assert!(!format!("{keys:?}").contains("secretkey1"));
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk.txt");
        std::fs::write(&path, "dev1:one\n").unwrap();
        let (_tx, rx) = watch::channel(false);
        let store = Store::watch(path.clone(), rx).unwrap();
        assert_eq!(store.key(b"dev1").unwrap().bytes(), b"one");
        std::fs::write(&path, "dev1:two-two\n").unwrap();
        let mut reloaded = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if store.key(b"dev1").is_some_and(|k| k.bytes() == b"two-two") {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded, "the new key was not picked up");
        std::fs::write(&path, "broken line\n").unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(store.key(b"dev1").unwrap().bytes(), b"two-two");
    }
}
