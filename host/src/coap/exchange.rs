//! Message-layer state (RFC 7252 §4): the Message-ID deduplication cache of incoming CON/NON
//! messages and the retransmission of the CONs we send.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ObserverId, RequestId};

/// A message from a peer, named by its Message-ID.
pub(crate) type MessageKey = (SocketAddr, u16);

/// What is remembered of an incoming CON or NON.
#[derive(Debug, Default)]
struct Record {
    /// The bytes to replay for a duplicate CON; `None` while the request is still processed.
    reply: Option<Vec<u8>>,
    /// The request the app has not answered yet.
    request: Option<RequestId>,
    seq: u64,
}

/// What the cache knew of a message that just arrived (see [`Dedup::see`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen before, and remembered now. When the cache was full, its oldest entry made
    /// room: `evicted`, with the request that entry's message left unanswered, if any.
    First { evicted: Option<Evicted> },
    /// A duplicate: the answer to replay, or none yet while `request` is with the app.
    Again { reply: Option<Vec<u8>>, request: Option<RequestId> },
}

/// An entry forgotten to make room (see [`Seen::First`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// The request its message was delivered as, not answered yet.
    pub unanswered: Option<RequestId>,
}

/// Entries per shard from which the cache is split (see [`Dedup`]).
const SHARD_ENTRIES: usize = 16 * 1024;
/// Shards at most.
const MAX_SHARDS: usize = 64;

/// The deduplication cache of incoming messages, split into shards by a keyed hash of the
/// message key.
///
/// One map of a million entries (the default `coap.max_dedup_entries`; at 60k NON msg/s and a
/// 145 s NON lifetime it fills) stalls the driver for tens to hundreds of milliseconds each
/// time it grows and rehashes, long enough for the socket buffer to overflow under load. In
/// shards of at most ~16k entries each growth step is short. Eviction when full takes the
/// oldest entry of the shard the new key falls in: the oldest of about `max / shards`
/// entries, close to the oldest overall with keys spread by the hash.
#[derive(Debug)]
pub(crate) struct Dedup {
    shards: Vec<Shard>,
    hasher: std::hash::RandomState,
}

impl Dedup {
    pub(crate) fn new(con_lifetime: Duration, non_lifetime: Duration, max: usize) -> Self {
        let max = max.max(1);
        let count = (max / SHARD_ENTRIES).clamp(1, MAX_SHARDS);
        let per_shard = max.div_ceil(count);
        let shards = (0..count).map(|_| Shard::new(con_lifetime, non_lifetime, per_shard)).collect();
        Dedup { shards, hasher: std::hash::RandomState::new() }
    }

    fn shard(&mut self, key: &MessageKey) -> &mut Shard {
        use std::hash::BuildHasher;
        let count = self.shards.len();
        // A keyed hash: a peer cannot pick Message-IDs that crowd one shard.
        let index = usize::try_from(self.hasher.hash_one(key) % count as u64).unwrap_or(0);
        &mut self.shards[index]
    }

    /// A message arrives: a duplicate tells what it was answered, a new one is remembered.
    /// When its shard is full, the shard's oldest entry makes room.
    pub(crate) fn see(&mut self, key: MessageKey, confirmable: bool, now: Instant) -> Seen {
        let shard = self.shard(&key);
        if let Some(record) = shard.entries.get(&key) {
            return Seen::Again { reply: record.reply.clone(), request: record.request };
        }
        let evicted = shard.insert(key, confirmable, now).map(|old| Evicted { unanswered: old.request });
        Seen::First { evicted }
    }

    /// The message `key` was delivered to the app as `request`.
    pub(crate) fn delivered(&mut self, key: &MessageKey, request: RequestId) {
        if let Some(record) = self.shard(key).entries.get_mut(key) {
            record.request = Some(request);
        }
    }

    /// What a duplicate of message `key` gets from now on; `answered`: its request is done.
    pub(crate) fn remember_reply(&mut self, key: &MessageKey, reply: Vec<u8>, answered: bool) {
        if let Some(record) = self.shard(key).entries.get_mut(key) {
            record.reply = Some(reply);
            if answered {
                record.request = None;
            }
        }
    }

    /// Forgets messages older than their lifetime, handing `unanswered` each request such a
    /// message was delivered as and the app never answered.
    pub(crate) fn expire(&mut self, now: Instant, mut unanswered: impl FnMut(RequestId)) {
        for shard in &mut self.shards {
            shard.expire(now, &mut |record: Record| {
                if let Some(request) = record.request {
                    unanswered(request);
                }
            });
        }
    }

    /// When the next entry expires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.shards.iter().filter_map(Shard::next_deadline).min()
    }

    /// Number of remembered messages.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.entries.len()).sum()
    }
}

/// One shard of the cache: a map plus one FIFO expiry queue per lifetime, so expiry and
/// eviction of the oldest entry are O(1) amortised.
#[derive(Debug)]
struct Shard {
    entries: HashMap<MessageKey, Record>,
    /// (inserted, key, seq) of CON messages, oldest first.
    con: VecDeque<(Instant, MessageKey, u64)>,
    /// (inserted, key, seq) of NON messages, oldest first.
    non: VecDeque<(Instant, MessageKey, u64)>,
    con_lifetime: Duration,
    non_lifetime: Duration,
    max: usize,
    next_seq: u64,
}

impl Shard {
    fn new(con_lifetime: Duration, non_lifetime: Duration, max: usize) -> Self {
        Shard {
            entries: HashMap::new(),
            con: VecDeque::new(),
            non: VecDeque::new(),
            con_lifetime,
            non_lifetime,
            max: max.max(1),
            next_seq: 0,
        }
    }

    /// Remembers a new message. When full, the oldest entry is evicted and returned.
    fn insert(&mut self, key: MessageKey, confirmable: bool, now: Instant) -> Option<Record> {
        let evicted = if self.entries.len() >= self.max { self.pop_oldest() } else { None };
        self.next_seq += 1;
        let seq = self.next_seq;
        if let Entry::Vacant(slot) = self.entries.entry(key) {
            slot.insert(Record { seq, ..Record::default() });
            let queue = if confirmable { &mut self.con } else { &mut self.non };
            queue.push_back((now, key, seq));
        }
        evicted
    }

    /// Removes the oldest entry of either queue.
    fn pop_oldest(&mut self) -> Option<Record> {
        loop {
            let con_first = match (self.con.front(), self.non.front()) {
                (None, None) => return None,
                (Some(c), Some(n)) => c.0 <= n.0,
                (c, _) => c.is_some(),
            };
            let queue = if con_first { &mut self.con } else { &mut self.non };
            let (_, key, seq) = queue.pop_front()?;
            if let Some(seen) = take_if_current(&mut self.entries, &key, seq) {
                return Some(seen);
            }
        }
    }

    /// Forgets messages older than their lifetime, handing each forgotten entry to `gone`.
    fn expire(&mut self, now: Instant, gone: &mut impl FnMut(Record)) {
        for (queue, lifetime) in [(&mut self.con, self.con_lifetime), (&mut self.non, self.non_lifetime)] {
            while let Some(&(inserted, key, seq)) = queue.front() {
                if inserted + lifetime > now {
                    break;
                }
                queue.pop_front();
                if let Some(seen) = take_if_current(&mut self.entries, &key, seq) {
                    gone(seen);
                }
            }
        }
    }

    /// When the next entry expires.
    fn next_deadline(&self) -> Option<Instant> {
        let con = self.con.front().map(|e| e.0 + self.con_lifetime);
        let non = self.non.front().map(|e| e.0 + self.non_lifetime);
        con.into_iter().chain(non).min()
    }
}

fn take_if_current(entries: &mut HashMap<MessageKey, Record>, key: &MessageKey, seq: u64) -> Option<Record> {
    match entries.get(key) {
        Some(seen) if seen.seq == seq => entries.remove(key),
        _ => None,
    }
}

/// Who waits for the ACK of a CON we sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A separate response.
    Response,
    /// A notification of this observer.
    Notification(ObserverId),
    /// The answer that registered this observer, sent CON to an unverified peer so that its
    /// ACK verifies the address; unacknowledged, the relation ends.
    Registration(ObserverId),
}

#[derive(Debug)]
struct InFlight {
    bytes: Vec<u8>,
    owner: Owner,
    retransmits: u32,
    interval: Duration,
    deadline: Instant,
}

/// What a due retransmission timer asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send these bytes again.
    Retransmit { peer: SocketAddr, bytes: Vec<u8> },
    /// `max_retransmit` is exhausted: the CON is forgotten.
    GaveUp { peer: SocketAddr, mid: u16, owner: Owner },
}

/// Granularity of retransmission timers: a deadline is served up to this much late, never early.
const SLOT: Duration = Duration::from_millis(10);

/// CONs we sent that wait for an ACK, with exponential back-off (RFC 7252 §4.2).
///
/// Timers live in a wheel of [`SLOT`]-wide slots rather than a heap: with thousands of
/// observers, every notification adds a timer and nearly every one is acknowledged before it
/// fires, so adding and discarding timers must be O(1) (a binary heap's O(log n) pops of
/// stale timers were a tenth of the gateway's CPU in a 10k-observer fan-out). An acknowledged
/// CON's timer stays in its slot and is skipped when the slot comes up.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    inflight: HashMap<MessageKey, InFlight>,
    /// `wheel[i]` holds the CONs due by the end of slot `base + i`; the front slot is never
    /// empty (so it gives the next deadline), slots behind it may be.
    wheel: VecDeque<Vec<MessageKey>>,
    /// Slot number of `wheel[0]`.
    base: u64,
    /// Slot 0 starts here (the first CON's send time).
    origin: Option<Instant>,
}

impl Outbox {
    /// Tracks a CON just sent; `timeout` is the first, already randomised, interval.
    pub(crate) fn insert(&mut self, key: MessageKey, bytes: Vec<u8>, owner: Owner, timeout: Duration, now: Instant) {
        let deadline = now + timeout;
        self.inflight.insert(key, InFlight { bytes, owner, retransmits: 0, interval: timeout, deadline });
        self.schedule(key, deadline);
    }

    /// The slot a deadline falls in (rounded up: a timer never fires early).
    fn slot_of(&mut self, at: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(at);
        let since = at.saturating_duration_since(origin).as_nanos();
        let slot = SLOT.as_nanos();
        u64::try_from(since.div_ceil(slot)).unwrap_or(u64::MAX)
    }

    fn schedule(&mut self, key: MessageKey, deadline: Instant) {
        let slot = self.slot_of(deadline);
        if self.wheel.is_empty() {
            self.base = slot;
        }
        while slot < self.base {
            self.wheel.push_front(Vec::new());
            self.base -= 1;
        }
        let index = usize::try_from(slot - self.base).unwrap_or(usize::MAX);
        if index >= self.wheel.len() {
            self.wheel.resize_with(index + 1, Vec::new);
        }
        if let Some(keys) = self.wheel.get_mut(index) {
            keys.push(key);
        }
    }

    /// Drops the front slot and any empty slots behind it.
    fn trim(&mut self) {
        self.wheel.pop_front();
        self.base += 1;
        while self.wheel.front().is_some_and(Vec::is_empty) {
            self.wheel.pop_front();
            self.base += 1;
        }
    }

    /// When slot `n` has passed.
    fn slot_end(&self, n: u64) -> Option<Instant> {
        let nanos = u64::try_from(SLOT.as_nanos()).unwrap_or(u64::MAX);
        self.origin.and_then(|origin| origin.checked_add(Duration::from_nanos(n.saturating_mul(nanos))))
    }

    /// Whether a CON to this peer with this Message-ID waits for its ACK.
    pub(crate) fn contains(&self, key: &MessageKey) -> bool {
        self.inflight.contains_key(key)
    }

    /// Ends the transmission of a CON (ACK, RST or cancellation) and tells whose it was.
    pub(crate) fn remove(&mut self, key: &MessageKey) -> Option<Owner> {
        self.inflight.remove(key).map(|f| f.owner)
    }

    /// The next deadline (possibly of a CON already acknowledged: a harmless early wake-up).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.wheel.is_empty() { None } else { self.slot_end(self.base) }
    }

    /// The next due action at `now`, doubling the interval of a retransmitted CON.
    pub(crate) fn poll_due(&mut self, now: Instant, max_retransmit: u32) -> Option<Due> {
        loop {
            let front_due = self.slot_end(self.base).is_some_and(|end| end <= now);
            if self.wheel.is_empty() || !front_due {
                return None;
            }
            let Some(key) = self.wheel.front_mut().and_then(Vec::pop) else {
                self.trim();
                continue;
            };
            if self.wheel.front().is_some_and(Vec::is_empty) {
                self.trim();
            }
            // Gone (acknowledged), or rescheduled to a later slot: a stale timer.
            let Some(flight) = self.inflight.get_mut(&key) else { continue };
            if flight.deadline > now {
                continue;
            }
            if flight.retransmits >= max_retransmit {
                let owner = flight.owner;
                self.inflight.remove(&key);
                return Some(Due::GaveUp { peer: key.0, mid: key.1, owner });
            }
            flight.retransmits += 1;
            flight.interval = flight.interval.saturating_mul(2);
            flight.deadline = now + flight.interval;
            let (deadline, bytes) = (flight.deadline, flight.bytes.clone());
            self.schedule(key, deadline);
            return Some(Due::Retransmit { peer: key.0, bytes });
        }
    }

    /// CONs in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.1:5683".parse().unwrap()
    }

    fn first() -> Seen {
        Seen::First { evicted: None }
    }

    #[test]
    fn dedup_forgets_con_after_exchange_lifetime_and_non_after_non_lifetime() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(247), Duration::from_secs(145), 10);
        assert_eq!(dedup.see((peer(), 1), true, t0), first());
        assert_eq!(dedup.see((peer(), 2), false, t0), first());
        assert_eq!(dedup.next_deadline(), Some(t0 + Duration::from_secs(145)));
        dedup.expire(t0 + Duration::from_secs(145), |_| {});
        assert_eq!(dedup.len(), 1, "the NON is forgotten");
        assert_eq!(dedup.see((peer(), 1), true, t0), Seen::Again { reply: None, request: None });
        dedup.expire(t0 + Duration::from_secs(247), |_| {});
        assert_eq!(dedup.len(), 0);
        assert_eq!(dedup.next_deadline(), None);
    }

    #[test]
    fn a_duplicate_gets_the_remembered_reply_and_request() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(247), Duration::from_secs(145), 10);
        let key = (peer(), 1);
        dedup.see(key, true, t0);
        dedup.delivered(&key, RequestId(4));
        assert_eq!(dedup.see(key, true, t0), Seen::Again { reply: None, request: Some(RequestId(4)) });
        dedup.remember_reply(&key, vec![0x60, 0, 0, 1], false);
        assert_eq!(
            dedup.see(key, true, t0),
            Seen::Again { reply: Some(vec![0x60, 0, 0, 1]), request: Some(RequestId(4)) }
        );
        dedup.remember_reply(&key, vec![0x60, 0x45, 0, 1], true);
        assert_eq!(dedup.see(key, true, t0), Seen::Again { reply: Some(vec![0x60, 0x45, 0, 1]), request: None });
    }

    #[test]
    fn expiry_hands_over_the_requests_never_answered() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(247), Duration::from_secs(145), 10);
        for mid in 1..=3 {
            dedup.see((peer(), mid), true, t0);
        }
        dedup.delivered(&(peer(), 1), RequestId(1));
        dedup.delivered(&(peer(), 2), RequestId(2));
        dedup.remember_reply(&(peer(), 2), vec![1], true);
        let mut unanswered = Vec::new();
        dedup.expire(t0 + Duration::from_secs(247), |id| unanswered.push(id));
        assert_eq!(unanswered, [RequestId(1)]);
    }

    #[test]
    fn full_dedup_evicts_the_oldest_entry() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(247), Duration::from_secs(145), 2);
        dedup.see((peer(), 1), false, t0);
        dedup.see((peer(), 2), true, t0 + Duration::from_secs(1));
        dedup.delivered(&(peer(), 1), RequestId(7));
        let seen = dedup.see((peer(), 3), true, t0 + Duration::from_secs(2));
        assert_eq!(seen, Seen::First { evicted: Some(Evicted { unanswered: Some(RequestId(7)) }) });
        assert_eq!(dedup.len(), 2);
        assert!(matches!(dedup.see((peer(), 2), true, t0), Seen::Again { .. }));
    }

    #[test]
    fn a_large_dedup_is_sharded_and_behaves_as_one() {
        let t0 = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(247), Duration::from_secs(145), 1_000_000);
        assert!(dedup.shards.len() > 1);
        for i in 0..100_000u32 {
            let peer = SocketAddr::from(([10, 0, (i >> 16) as u8, (i >> 8) as u8], 5683));
            assert_eq!(dedup.see((peer, i as u16), i % 2 == 0, t0), first());
        }
        assert_eq!(dedup.len(), 100_000);
        let peer = SocketAddr::from(([10, 0, 0, 3], 5683));
        assert!(matches!(dedup.see((peer, 0x0300), true, t0), Seen::Again { .. }), "seen as i = 0x0300");
        assert_eq!(dedup.next_deadline(), Some(t0 + Duration::from_secs(145)));
        dedup.expire(t0 + Duration::from_secs(247), |_| {});
        assert_eq!(dedup.len(), 0);
    }

    #[test]
    fn con_is_retransmitted_with_doubling_interval_then_given_up() {
        let t0 = Instant::now();
        let mut outbox = Outbox::default();
        let key = (peer(), 9);
        outbox.insert(key, vec![1], Owner::Response, Duration::from_secs(2), t0);
        let mut at = t0;
        let mut interval = Duration::from_secs(2);
        for _ in 0..4 {
            at += interval;
            assert_eq!(outbox.next_deadline(), Some(at));
            assert_eq!(outbox.poll_due(at - Duration::from_millis(1), 4), None);
            assert_eq!(outbox.poll_due(at, 4), Some(Due::Retransmit { peer: peer(), bytes: vec![1] }));
            interval *= 2;
        }
        at += interval;
        assert_eq!(outbox.poll_due(at, 4), Some(Due::GaveUp { peer: peer(), mid: 9, owner: Owner::Response }));
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn acknowledged_con_is_not_retransmitted() {
        let t0 = Instant::now();
        let mut outbox = Outbox::default();
        outbox.insert((peer(), 9), vec![1], Owner::Notification(ObserverId(3)), Duration::from_secs(2), t0);
        assert_eq!(outbox.remove(&(peer(), 9)), Some(Owner::Notification(ObserverId(3))));
        assert_eq!(outbox.poll_due(t0 + Duration::from_secs(100), 4), None);
        assert_eq!(outbox.next_deadline(), None);
    }
}
