//! The one shutdown signal: a [`Trigger`] the server pulls once (SIGINT, SIGTERM, or
//! [`Server::shutdown`](crate::server::Server::shutdown)) and the [`Shutdown`] every task
//! watches.
//!
//! What a task does when it fires is its own business and is written beside it: the CoAP
//! drivers drain (new requests get 5.03, requests in progress finish within
//! `coap.drain_timeout`, see [`crate::transport`]), the admin API stops accepting, the janitor
//! stops, the PSK file watcher ends. The server then closes the MQTT connection, which writes
//! what is queued and a DISCONNECT, and joins every task: no sleeps, no `abort`.

use tokio::sync::watch;

/// Fires the shutdown signal (once; later calls do nothing more).
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Watches the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new signal, not fired.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Fires the signal.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// A watcher of this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal has fired (or its trigger was dropped: nobody can stop the
    /// task any more, which also means stop).
    pub async fn signalled(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// The underlying watch channel, for parts that take one (the PSK file watcher).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_watcher_sees_the_signal_once_fired() {
        let (trigger, mut a) = channel();
        let mut b = trigger.subscribe();
        assert!(!a.is_fired());
        trigger.fire();
        a.signalled().await;
        b.signalled().await;
        assert!(a.is_fired() && b.is_fired());
        // Already fired: resolves at once, again.
        a.signalled().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_fired() {
        let (trigger, mut watcher) = channel();
        drop(trigger);
        watcher.signalled().await;
    }
}
