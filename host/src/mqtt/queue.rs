//! The publish queue's shared parts: the outstanding-publish counter that bounds the queue,
//! and the ticket that lets a caller withdraw a publish that was not yet written.
//!
//! A handle counts a publish in ([`Shared::try_reserve`]) before queueing it; it is counted
//! out exactly once: when the driver resolves it, or when its receipt is dropped while it is
//! still queued ([`Ticket::withdraw`]; the driver then skips it without counting).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::{Notify, oneshot};

use super::client::PublishError;

/// Counters shared by the driver's state and every handle and receipt.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Publishes queued or in flight; bounded by the queue capacity.
    pub(crate) outstanding: AtomicUsize,
    /// Successful connections after the first.
    pub(crate) reconnects: AtomicU64,
    /// Set by `close()` and when the driver stops.
    pub(crate) closed: AtomicBool,
    /// The MQTT protocol level of the current (or last) connection: 5, 4 (3.1.1), or 0 before
    /// the first one.
    pub(crate) protocol_level: AtomicU8,
    /// Messages the driver put into the incoming channel.
    pub(crate) delivered: AtomicU64,
    /// Messages the consumer reported handled (`Handle::processed`).
    pub(crate) processed: AtomicU64,
    /// Subscribe calls waiting for `processed` to catch up; only then is `caught_up` notified.
    pub(crate) catching_up: AtomicUsize,
    /// Wakes those calls.
    pub(crate) caught_up: Notify,
    /// Publishes the handles handed over, oldest first, for the driver to take.
    handed: Mutex<Vec<Queued>>,
    /// A publish was handed over since the driver was last signalled.
    unsignalled: AtomicBool,
    /// Batches open (`Handle::begin_batch`): while any is, publishes do not signal the driver.
    batches: AtomicUsize,
}

impl Shared {
    /// Counts one more outstanding publish unless `capacity` are already outstanding.
    pub(crate) fn try_reserve(&self, capacity: usize) -> bool {
        self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1)).is_ok()
    }

    /// Hands a publish over to the driver, which takes it when it is next signalled.
    pub(crate) fn hand_over(&self, queued: Queued) {
        self.handed.lock().unwrap_or_else(PoisonError::into_inner).push(queued);
        self.unsignalled.store(true, Ordering::SeqCst);
    }

    /// The publishes handed over so far, oldest first.
    pub(crate) fn take_handed(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.handed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a batch is open. SeqCst with `end_batch`: a publish either sees the batch
    /// closed and signals, or its batch's end sees it handed over.
    pub(crate) fn batching(&self) -> bool {
        self.batches.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn begin_batch(&self) {
        self.batches.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end_batch(&self) {
        self.batches.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether the driver must be signalled for publishes handed over since the last time; a
    /// caller that gets `true` signals it.
    pub(crate) fn needs_signal(&self) -> bool {
        self.unsignalled.swap(false, Ordering::SeqCst)
    }

    /// Counts one outstanding publish as finished.
    pub(crate) fn release(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }

    /// The consumer handled one more message: wakes the subscribe calls waiting for it.
    pub(crate) fn processed(&self) {
        // SeqCst pairs with `wait_processed`: either it sees this count, or this sees it waiting.
        self.processed.fetch_add(1, Ordering::SeqCst);
        if self.catching_up.load(Ordering::SeqCst) > 0 {
            self.caught_up.notify_waiters();
        }
    }

    /// Waits until the consumer handled every message delivered so far (or the client closed).
    pub(crate) async fn wait_processed(&self) {
        let target = self.delivered.load(Ordering::SeqCst);
        self.catching_up.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = self.caught_up.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.processed.load(Ordering::SeqCst) >= target || self.closed.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
        self.catching_up.fetch_sub(1, Ordering::SeqCst);
    }
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// Who owns a queued publish: the queue (it may still be withdrawn) or the connection.
#[derive(Debug, Default)]
pub(crate) struct Ticket(AtomicU8);

impl Ticket {
    /// Withdraws a publish that was not yet written; false once the driver has taken it.
    pub(crate) fn withdraw(&self) -> bool {
        self.0.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Takes the publish for writing; false if its caller withdrew it.
    pub(crate) fn take(&self) -> bool {
        match self.0.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(state) => state == TAKEN,
        }
    }

    pub(crate) fn is_withdrawn(&self) -> bool {
        self.0.load(Ordering::Acquire) == WITHDRAWN
    }
}

/// The outcome a publish's caller awaits.
pub(crate) type PublishResult = Result<(), PublishError>;

/// A publish waiting for the connection, with its caller's waiter.
#[derive(Debug)]
pub(crate) struct Queued {
    /// The packet; its pkid is assigned when it is written.
    pub(crate) publish: Publish,
    /// Resolves the caller's receipt.
    pub(crate) tx: oneshot::Sender<PublishResult>,
    /// Shared with the receipt, for withdraw-on-drop.
    pub(crate) ticket: Arc<Ticket>,
    /// Sessions that ended while this was the oldest unacknowledged publish.
    pub(crate) losses: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_refuses_beyond_capacity_until_one_is_released() {
        let shared = Shared::default();
        assert!(shared.try_reserve(2) && shared.try_reserve(2));
        assert!(!shared.try_reserve(2));
        shared.release();
        assert!(shared.try_reserve(2));
    }

    #[tokio::test]
    async fn a_wait_for_processing_ends_when_the_consumer_catches_up_or_the_client_closes() {
        let shared = Arc::new(Shared::default());
        shared.delivered.store(2, Ordering::SeqCst);
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { shared.wait_processed().await }
        });
        shared.processed();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "returned with one of two messages handled");
        shared.processed();
        waiter.await.unwrap();

        shared.delivered.store(3, Ordering::SeqCst);
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { shared.wait_processed().await }
        });
        tokio::task::yield_now().await;
        shared.closed.store(true, Ordering::SeqCst);
        shared.caught_up.notify_waiters();
        waiter.await.unwrap();
        assert_eq!(shared.catching_up.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_ticket_can_be_withdrawn_only_before_it_is_taken() {
        let early = Ticket::default();
        assert!(early.withdraw());
        assert!(!early.take() && early.is_withdrawn());
        let late = Ticket::default();
        assert!(late.take());
        assert!(!late.withdraw());
        assert!(late.take(), "a publish requeued after a disconnect is taken again");
    }
}
