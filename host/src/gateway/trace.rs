//! Request tracing for one device (`GET /clients/{id}/trace`, `sluice trace ID`): while an
//! operator follows a client id, every request of that device is sent to them as one JSON
//! line — what came in, which rule decided each hook, the answer with its diagnostic and what
//! the broker did. With nobody following, a request pays one atomic load.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Lines buffered per follower; a follower that reads slower loses lines (counted in the line
/// that follows the gap).
const BUFFER: usize = 1024;

/// The followers of each client id.
#[derive(Debug, Default)]
pub struct Tracers {
    active: AtomicUsize,
    by_client: Mutex<HashMap<String, Vec<mpsc::Sender<Value>>>>,
}

impl Tracers {
    /// Starts following `client_id`: its requests arrive on the receiver until it is dropped.
    pub fn follow(&self, client_id: &str) -> mpsc::Receiver<Value> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(client_id.to_string()).or_default().push(tx);
        self.active.fetch_add(1, Ordering::Relaxed);
        rx
    }

    /// True when someone follows a client (then [`Tracers::emit`] is worth building a line for).
    pub fn any(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// True when someone follows `client_id`.
    pub fn follows(&self, client_id: &str) -> bool {
        self.any() && self.by_client.lock().unwrap_or_else(|p| p.into_inner()).contains_key(client_id)
    }

    /// Sends `line` to the followers of `client_id`; forgets those that went away.
    pub fn emit(&self, client_id: &str, line: &Value) {
        let mut map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        let Some(followers) = map.get_mut(client_id) else { return };
        let before = followers.len();
        followers.retain(|tx| !matches!(tx.try_send(line.clone()), Err(mpsc::error::TrySendError::Closed(_))));
        let gone = before - followers.len();
        if followers.is_empty() {
            map.remove(client_id);
        }
        self.active.fetch_sub(gone, Ordering::Relaxed);
    }

    /// Forgets followers that went away (so `any` turns false without a request of theirs).
    pub fn prune(&self) {
        let mut map = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = 0;
        map.retain(|_, followers| {
            let before = followers.len();
            followers.retain(|tx| !tx.is_closed());
            gone += before - followers.len();
            !followers.is_empty()
        });
        self.active.fetch_sub(gone, Ordering::Relaxed);
    }
}

/// A hook's decision, for a trace line.
pub fn decision(hook: &str, rule: Option<&str>, verdict: &str) -> Value {
    json!({"hook": hook, "rule": rule.unwrap_or("(none: every rule passed)"), "verdict": verdict})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn followers_get_their_clients_lines_and_leave_cleanly() {
        let tracers = Tracers::default();
        assert!(!tracers.any());
        let mut rx = tracers.follow("dev-1");
        assert!(tracers.follows("dev-1") && !tracers.follows("dev-2"));
        tracers.emit("dev-1", &json!({"n": 1}));
        tracers.emit("dev-2", &json!({"n": 2}));
        assert_eq!(rx.try_recv().unwrap()["n"], 1);
        assert!(rx.try_recv().is_err());
        drop(rx);
        tracers.prune();
        assert!(!tracers.any());
    }
}
