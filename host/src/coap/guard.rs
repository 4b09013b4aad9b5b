//! Abuse limits of the endpoint: a per-peer request rate, and return-routability checks that
//! keep the gateway from amplifying traffic towards spoofed source addresses (RFC 9175 §2.4).
//!
//! Both keep bounded state whatever the number of source addresses a flood uses:
//! - [`RateLimiter`] is a fixed table of token buckets indexed by a keyed hash of the peer.
//!   Two peers whose hashes collide share a bucket, which only matters when both are near the
//!   limit; the table never grows, so a flood from spoofed addresses costs no memory.
//! - [`PeerCheck`] issues Echo values without keeping state: a value is the time it was made and
//!   a keyed hash of the peer and that time, so only the peer it was sent to can return it. A
//!   peer that returns one is *verified* and remembered in a table bounded by
//!   `max_verified_peers` (the oldest verification is forgotten first); to fill it, a flood must
//!   receive at the addresses it claims. The ACK of a CON the gateway sent with a random
//!   Message-ID verifies its peer too (a forger must guess 16 bits, and one wrong guess from
//!   an address stops ACKs from verifying it for [`STRAY_ACK_PENALTY`]).
//! - [`Budget`] is what lets devices without Echo support be served without a challenge: the
//!   bytes sent to unverified peers beyond `amplification_factor` × their requests (answers
//!   larger than that, Observe registrations, notifications) are paid from a token bucket for
//!   the whole endpoint and one per address prefix (/24 for IPv4, /64 for IPv6, a fixed table
//!   indexed by a keyed hash). Only once a bucket is empty — a flood, or answers far larger
//!   than usual — are requests challenged with Echo as RFC 9175 §2.4 describes. The bound a
//!   forger gets is so `amplification_factor` × what it sends plus the budget per second.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Buckets in the rate table (a power of two): 8 bytes each, 512 KiB in all.
const RATE_SLOTS: usize = 1 << 16;

/// Handling time that costs a peer one more request of its rate (see [`RateLimiter::charge`]).
pub(crate) const CHARGE_UNIT: Duration = Duration::from_micros(100);

/// How long an Echo value is accepted after it was issued.
pub(crate) const ECHO_LIFETIME: Duration = Duration::from_secs(300);

/// After an ACK from a peer matched nothing, how long its ACKs do not verify it: a forger
/// guessing the Message-ID of a CON sent to the address it claims gets one guess per period.
pub(crate) const STRAY_ACK_PENALTY: Duration = Duration::from_secs(60);

/// Slots of the per-prefix budget and stray-ACK tables (a power of two).
const PREFIX_SLOTS: usize = 1 << 14;

/// What an Observe registration from an unverified peer costs the budget up front, besides
/// its answer: a registration creates a relation, so a flood of them must run dry too.
pub(crate) const REGISTRATION_COST: u32 = 64;

/// Byte budgets for unverified peers: one bucket for the endpoint, one per address prefix.
/// A bucket holds at most one second of its rate.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes per second for the endpoint; 0: no budget (every larger answer is challenged).
    rate: f64,
    per_prefix: f64,
    tokens: f64,
    last: Instant,
    /// (tokens, milliseconds since `epoch` of the last refill) per prefix slot.
    prefixes: Vec<(f32, u32)>,
    epoch: Instant,
    hasher: RandomState,
    /// Bytes paid so far.
    paid: u64,
}

/// The prefix a peer's address belongs to: /24 for IPv4, /64 for IPv6.
fn prefix(peer: SocketAddr) -> (u8, u64) {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => (4, u64::from(u32::from(ip) >> 8)),
        std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => (4, u64::from(u32::from(v4) >> 8)),
            None => (6, (u128::from(ip) >> 64) as u64),
        },
    }
}

impl Budget {
    pub(crate) fn new(rate: u32, per_prefix: u32, now: Instant) -> Self {
        let per_prefix = if rate == 0 { 0 } else { per_prefix.max(1) };
        let prefixes = if rate == 0 { Vec::new() } else { vec![(per_prefix as f32, 0); PREFIX_SLOTS] };
        Budget {
            rate: f64::from(rate),
            per_prefix: f64::from(per_prefix),
            tokens: f64::from(rate),
            last: now,
            prefixes,
            epoch: now,
            hasher: RandomState::new(),
            paid: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes `bytes` from the endpoint's bucket and `peer`'s prefix bucket when both hold
    /// them; false (and nothing taken) otherwise.
    pub(crate) fn take(&mut self, peer: SocketAddr, bytes: usize, now: Instant) -> bool {
        if self.rate == 0.0 {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = self.last.max(now);
        let slot = self.hasher.hash_one(prefix(peer)) as usize & (PREFIX_SLOTS - 1);
        let millis = u32::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u32::MAX);
        let per_prefix = self.per_prefix;
        let Some((tokens, last)) = self.prefixes.get_mut(slot) else { return false };
        let elapsed = f64::from(millis.saturating_sub(*last)) / 1000.0;
        let refilled = (f64::from(*tokens) + elapsed * per_prefix).min(per_prefix);
        *tokens = refilled as f32;
        *last = (*last).max(millis);
        let bytes = bytes as f64;
        if bytes > self.tokens || bytes > refilled {
            return false;
        }
        self.tokens -= bytes;
        *tokens = (refilled - bytes) as f32;
        self.paid += bytes as u64;
        true
    }

    /// Bytes the endpoint's bucket holds now (for the tests).
    #[cfg(test)]
    fn left(&self) -> f64 {
        self.tokens
    }
}

/// Token buckets for requests per peer (address and port).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Requests per second refilled into each bucket; 0 turns the limiter off.
    rate: f32,
    /// A bucket's capacity: the burst a peer may send at once.
    burst: f32,
    /// (tokens, milliseconds since `epoch` of the last refill) per slot.
    slots: Vec<(f32, u32)>,
    epoch: Instant,
    hasher: RandomState,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = burst.max(rate).max(1) as f32;
        let slots = if rate == 0 { Vec::new() } else { vec![(burst, 0); RATE_SLOTS] };
        RateLimiter { rate: rate as f32, burst, slots, epoch: now, hasher: RandomState::new() }
    }

    /// `peer`'s bucket, refilled up to `now`; None with the limiter off.
    fn bucket(&mut self, peer: SocketAddr, now: Instant) -> Option<&mut f32> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.hasher.hash_one(peer) as usize & (RATE_SLOTS - 1);
        let millis = u32::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u32::MAX);
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, last) = self.slots.get_mut(slot)?;
        let elapsed = millis.saturating_sub(*last) as f32 / 1000.0;
        *tokens = (*tokens + elapsed * rate).min(burst);
        *last = millis;
        Some(tokens)
    }

    /// Takes a token from `peer`'s bucket; false when it is empty.
    pub(crate) fn admit(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let Some(tokens) = self.bucket(peer, now) else { return true };
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Charges `peer` for a request that took `spent` to handle (its rules included): one more
    /// request per [`CHARGE_UNIT`], down to a debt of one burst. A device whose requests make
    /// a rule run to its deadline is so slowed to a few requests per second, and the time it
    /// can take from the others is bounded, while ordinary requests (microseconds) cost
    /// nothing extra.
    pub(crate) fn charge(&mut self, peer: SocketAddr, spent: Duration, now: Instant) {
        if spent < CHARGE_UNIT {
            return;
        }
        let units = (spent.as_micros() / CHARGE_UNIT.as_micros()) as f32;
        let floor = -self.burst;
        if let Some(tokens) = self.bucket(peer, now) {
            *tokens = (*tokens - units).max(floor);
        }
    }
}

/// What a request from a peer must do before it is handled (see [`PeerCheck::screen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Screen {
    /// Go on: the peer is verified, or the request is harmless without it.
    Pass,
    /// Go on: the request's Echo value has just verified the peer.
    Verified,
    /// Answer 4.01 with an Echo value: an Observe registration from an unverified peer.
    Challenge,
}

/// Echo values and the peers that returned one.
#[derive(Debug)]
pub(crate) struct PeerCheck {
    /// The largest response, as a multiple of the request's size, sent to an unverified peer
    /// without paying from the budget; 0 turns the checks off.
    factor: u32,
    budget: Budget,
    /// Per peer slot, the second (since `epoch`, plus one; 0: never) of the last ACK from it
    /// that matched nothing.
    stray_acks: Vec<u32>,
    max_peers: usize,
    verified_for: Duration,
    /// Until when each peer is verified, and the sequence number of its verification.
    verified: HashMap<SocketAddr, (Instant, u64)>,
    /// Verifications, oldest first, for eviction at `max_peers`; entries whose sequence
    /// number is no longer the peer's were renewed and are skipped.
    order: VecDeque<(SocketAddr, u64)>,
    next_seq: u64,
    epoch: Instant,
    key: RandomState,
}

impl PeerCheck {
    pub(crate) fn new(factor: u32, budget: Budget, max_peers: usize, verified_for: Duration, now: Instant) -> Self {
        PeerCheck {
            factor,
            budget,
            stray_acks: if factor == 0 { Vec::new() } else { vec![0; PREFIX_SLOTS] },
            max_peers: max_peers.max(1),
            verified_for,
            verified: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            epoch: now,
            key: RandomState::new(),
        }
    }

    /// Whether the checks are on.
    fn enabled(&self) -> bool {
        self.factor > 0
    }

    /// Whether `peer` has shown it receives at its address (always, with the checks off).
    fn is_verified(&self, peer: SocketAddr, now: Instant) -> bool {
        !self.enabled() || self.verified.get(&peer).is_some_and(|&(until, _)| until > now)
    }

    /// Whether `peer` is unverified while the checks are on: what it is sent beyond the
    /// factor is paid from the budget, and CONs to it carry random Message-IDs.
    pub(crate) fn unverified(&self, peer: SocketAddr, now: Instant) -> bool {
        !self.is_verified(peer, now)
    }

    /// Screens a request from `peer` that carries the Echo value `echo` and, when `registers`,
    /// asks for an Observe relation (whose answers are unbounded): an unverified peer's
    /// registration passes while the budget pays [`REGISTRATION_COST`] for it.
    pub(crate) fn screen(&mut self, peer: SocketAddr, echo: Option<&[u8]>, registers: bool, now: Instant) -> Screen {
        if self.is_verified(peer, now) {
            Screen::Pass
        } else if echo.is_some_and(|value| self.receive_echo(peer, value, now)) {
            Screen::Verified
        } else if registers && !self.budget.take(peer, REGISTRATION_COST as usize, now) {
            Screen::Challenge
        } else {
            Screen::Pass
        }
    }

    /// The largest answer `peer` may get to a request of `request` bytes without paying from
    /// the budget: `None` when there is no bound (the checks are off, or the peer is verified).
    pub(crate) fn allowance(&self, peer: SocketAddr, request: usize, now: Instant) -> Option<usize> {
        (!self.is_verified(peer, now)).then(|| request.saturating_mul(self.factor as usize))
    }

    /// Whether an answer of `response` bytes to a request of `request` bytes may go to `peer`:
    /// within the factor, or with the budget paying for the rest (which it then does).
    pub(crate) fn allows(&mut self, peer: SocketAddr, request: usize, response: usize, now: Instant) -> bool {
        match self.allowance(peer, request, now) {
            None => true,
            Some(allowance) if response <= allowance => true,
            Some(allowance) => self.budget.take(peer, response - allowance, now),
        }
    }

    /// Whether a message of `bytes` that answers no request (a notification, a retransmission)
    /// may go to `peer`: always when verified, else when the budget pays for all of it.
    ///
    /// Without a budget (strict RFC 9175), only answers are bounded, as that RFC has it:
    /// relations are then made with verified peers only.
    pub(crate) fn afford(&mut self, peer: SocketAddr, bytes: usize, now: Instant) -> bool {
        !self.unverified(peer, now) || !self.budget.enabled() || self.budget.take(peer, bytes, now)
    }

    /// Bytes the budget paid for so far.
    pub(crate) fn paid(&self) -> u64 {
        self.budget.paid
    }

    fn stray_slot(&self, peer: SocketAddr) -> usize {
        self.key.hash_one((peer, 0xac_u8)) as usize & (PREFIX_SLOTS - 1)
    }

    fn seconds(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// An ACK from `peer` matched no CON we sent: a forger may be guessing.
    pub(crate) fn stray_ack(&mut self, peer: SocketAddr, now: Instant) {
        if self.is_verified(peer, now) {
            return;
        }
        let (slot, secs) = (self.stray_slot(peer), self.seconds(now).saturating_add(1));
        if let Some(at) = self.stray_acks.get_mut(slot) {
            *at = secs;
        }
    }

    /// `peer` acknowledged a CON we sent it with a random Message-ID: it receives at its
    /// address, unless an ACK from it matched nothing lately. Returns whether that verified it.
    pub(crate) fn acknowledged(&mut self, peer: SocketAddr, now: Instant) -> bool {
        if self.is_verified(peer, now) {
            return false;
        }
        let last_stray = self.stray_acks.get(self.stray_slot(peer)).copied().unwrap_or(0);
        let penalty = STRAY_ACK_PENALTY.as_secs() as u32;
        if last_stray != 0 && self.seconds(now).saturating_add(1) < last_stray.saturating_add(penalty) {
            return false;
        }
        self.mark_verified(peer, now);
        true
    }

    /// The Echo value for `peer` now: 4 bytes of seconds since the endpoint started, then
    /// 4 bytes of a keyed hash of the peer and those seconds. 8 bytes keep the 4.01 that
    /// carries it within 3 × the smallest Observe request; a forger must guess 32 bits per
    /// address it claims.
    pub(crate) fn echo(&self, peer: SocketAddr, now: Instant) -> Vec<u8> {
        let secs = u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX);
        let mut value = secs.to_be_bytes().to_vec();
        value.extend_from_slice(&self.mac(peer, secs));
        value
    }

    fn mac(&self, peer: SocketAddr, secs: u32) -> [u8; 4] {
        let hash = self.key.hash_one((peer, secs)).to_be_bytes();
        [hash[0], hash[1], hash[2], hash[3]]
    }

    /// Checks an Echo value `peer` returned; a valid, fresh one verifies the peer. Returns
    /// whether it was valid.
    fn receive_echo(&mut self, peer: SocketAddr, value: &[u8], now: Instant) -> bool {
        let Some((secs, mac)) = value.split_first_chunk::<4>() else { return false };
        let secs = u32::from_be_bytes(*secs);
        let issued = self.epoch + Duration::from_secs(u64::from(secs));
        let fresh = issued <= now && now.saturating_duration_since(issued) <= ECHO_LIFETIME;
        if !fresh || mac != self.mac(peer, secs) {
            return false;
        }
        self.mark_verified(peer, now);
        true
    }

    /// Remembers `peer` as verified for `verified_for`, forgetting the oldest verification
    /// beyond `max_peers`.
    fn mark_verified(&mut self, peer: SocketAddr, now: Instant) {
        self.next_seq += 1;
        let seq = self.next_seq;
        if self.verified.insert(peer, (now + self.verified_for, seq)).is_none() {
            while self.verified.len() > self.max_peers {
                let Some((old, old_seq)) = self.order.pop_front() else { break };
                if self.verified.get(&old).is_some_and(|&(_, s)| s == old_seq) {
                    self.verified.remove(&old);
                }
            }
        }
        self.order.push_back((peer, seq));
        // Renewals leave stale entries behind in `order`; drop them once they dominate.
        if self.order.len() > 2 * self.verified.len() {
            let verified = &self.verified;
            self.order.retain(|(p, s)| verified.get(p).is_some_and(|&(_, current)| current == *s));
        }
    }

    /// Peers verified now.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn verified_count(&self) -> usize {
        self.verified.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_peer_gets_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, 20, t0);
        let admitted = (0..50).filter(|_| limiter.admit(peer(1), t0)).count();
        assert_eq!(admitted, 20);
        assert!(limiter.admit(peer(2), t0), "another peer has its own bucket");
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..50).filter(|_| limiter.admit(peer(1), t1)).count();
        assert_eq!(admitted, 5, "half a second refills 5 at 10/s");
    }

    #[test]
    fn slow_requests_cost_their_peer_more() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(100, 100, t0);
        limiter.charge(peer(1), Duration::from_micros(99), t0);
        assert_eq!((0..200).filter(|_| limiter.admit(peer(1), t0)).count(), 100, "fast requests are free");
        let t1 = t0 + Duration::from_secs(2);
        limiter.charge(peer(2), Duration::from_millis(10), t1);
        assert_eq!((0..200).filter(|_| limiter.admit(peer(2), t1)).count(), 0, "10 ms cost 100 requests");
        limiter.charge(peer(2), Duration::from_secs(10), t1);
        let t2 = t1 + Duration::from_secs(1);
        assert!(!limiter.admit(peer(2), t2), "a debt of one burst at most: repaid after 1 s");
        assert!(limiter.admit(peer(2), t2 + Duration::from_millis(1020)));
    }

    #[test]
    fn a_zero_rate_admits_everything_and_keeps_no_table() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(0, 0, t0);
        assert!((0..10_000).all(|_| limiter.admit(peer(1), t0)));
        assert!(limiter.slots.is_empty());
    }

    #[test]
    fn the_rate_table_does_not_grow_with_spoofed_sources() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, 1, t0);
        for port in 0..=u16::MAX {
            limiter.admit(SocketAddr::from(([10, 0, (port >> 8) as u8, port as u8], port)), t0);
        }
        assert_eq!(limiter.slots.len(), RATE_SLOTS);
    }

    #[test]
    fn an_echo_value_verifies_only_its_own_peer_while_fresh() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(0, 0, t0), 10, Duration::from_secs(3600), t0);
        let value = check.echo(peer(1), t0);
        assert_eq!(value.len(), 8);
        assert!(!check.is_verified(peer(1), t0));
        assert!(!check.receive_echo(peer(2), &value, t0), "another address cannot use it");
        assert!(!check.receive_echo(peer(1), &value[..7], t0));
        let mut forged = value.clone();
        forged[7] ^= 1;
        assert!(!check.receive_echo(peer(1), &forged, t0));
        assert!(!check.receive_echo(peer(1), &value, t0 + ECHO_LIFETIME + Duration::from_secs(2)), "stale");
        assert!(check.receive_echo(peer(1), &value, t0 + Duration::from_secs(10)));
        assert!(check.is_verified(peer(1), t0 + Duration::from_secs(10)));
        assert!(!check.is_verified(peer(1), t0 + Duration::from_secs(3611)), "verification expires");
    }

    #[test]
    fn responses_within_the_factor_need_no_verification() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(0, 0, t0), 10, Duration::from_secs(60), t0);
        assert!(check.allows(peer(1), 20, 60, t0));
        assert!(!check.allows(peer(1), 20, 61, t0));
        assert_eq!(check.allowance(peer(1), 20, t0), Some(60));
        let mut off = PeerCheck::new(0, Budget::new(0, 0, t0), 10, Duration::from_secs(60), t0);
        assert!(off.allows(peer(1), 20, 10_000, t0));
        assert_eq!(off.allowance(peer(1), 20, t0), None);
    }

    #[test]
    fn screening_challenges_only_unverified_registrations() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(0, 0, t0), 10, Duration::from_secs(60), t0);
        assert_eq!(check.screen(peer(1), None, false, t0), Screen::Pass);
        assert_eq!(check.screen(peer(1), None, true, t0), Screen::Challenge);
        assert_eq!(check.screen(peer(1), Some(&[0; 8]), true, t0), Screen::Challenge, "a forged value");
        let value = check.echo(peer(1), t0);
        assert_eq!(check.screen(peer(1), Some(&value), true, t0), Screen::Verified);
        assert_eq!(check.screen(peer(1), None, true, t0), Screen::Pass);
        assert_eq!(check.allowance(peer(1), 20, t0), None, "a verified peer has no bound");
        let mut off = PeerCheck::new(0, Budget::new(0, 0, t0), 10, Duration::from_secs(60), t0);
        assert_eq!(off.screen(peer(2), None, true, t0), Screen::Pass);
    }

    #[test]
    fn the_verified_table_is_bounded_and_forgets_the_oldest() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(0, 0, t0), 3, Duration::from_secs(60), t0);
        for port in 1..=5 {
            let value = check.echo(peer(port), t0);
            assert!(check.receive_echo(peer(port), &value, t0));
        }
        assert_eq!(check.verified_count(), 3);
        assert!(!check.is_verified(peer(1), t0));
        assert!(check.is_verified(peer(5), t0));
        for _ in 0..100 {
            let value = check.echo(peer(5), t0);
            check.receive_echo(peer(5), &value, t0);
        }
        assert!(check.order.len() <= 6, "renewals do not grow the order queue");
    }

    #[test]
    fn the_budget_pays_for_larger_answers_until_it_runs_dry_then_refills() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(10_000, 2_000, t0), 10, Duration::from_secs(60), t0);
        assert!(check.allows(peer(1), 20, 60, t0), "within the factor: free");
        assert_eq!(check.budget.left(), 10_000.0);
        assert!(check.allows(peer(1), 20, 1_060, t0), "1,000 bytes beyond the factor, paid");
        assert_eq!(check.budget.left(), 9_000.0);
        assert!(check.allows(peer(1), 20, 1_060, t0));
        assert!(!check.allows(peer(1), 20, 1_060, t0), "the /24's 2,000 bytes are spent");
        let other = SocketAddr::from(([198, 51, 100, 7], 5683));
        assert!(check.allows(other, 20, 1_060, t0), "another prefix has its own bucket");
        assert_eq!(check.budget.left(), 7_000.0, "a refused answer takes nothing");
        let t1 = t0 + Duration::from_millis(500);
        assert!(check.allows(peer(1), 20, 1_060, t1), "half a second refills 1,000 bytes of the prefix");
        assert!(!check.allows(peer(1), 20, 1_060, t1));
        let mut strict = PeerCheck::new(3, Budget::new(0, 0, t0), 10, Duration::from_secs(60), t0);
        assert!(!strict.allows(peer(1), 20, 61, t0), "no budget: strict RFC 9175");
    }

    #[test]
    fn the_endpoint_bucket_bounds_a_flood_spread_over_many_prefixes() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(10_000, 2_000, t0), 10, Duration::from_secs(60), t0);
        let paid =
            (0..=255u8).filter(|&net| check.allows(SocketAddr::from(([10, net, 0, 1], 5683)), 20, 1_060, t0)).count();
        assert_eq!(paid, 10, "10,000 bytes per second in all, whatever the prefixes");
    }

    #[test]
    fn registrations_pass_while_the_budget_pays_then_are_challenged() {
        let t0 = Instant::now();
        let budget = Budget::new(10 * REGISTRATION_COST, 10 * REGISTRATION_COST, t0);
        let mut check = PeerCheck::new(3, budget, 10, Duration::from_secs(60), t0);
        let passed = (1..=20).filter(|&port| check.screen(peer(port), None, true, t0) == Screen::Pass).count();
        assert_eq!(passed, 10);
        assert_eq!(check.screen(peer(99), None, true, t0), Screen::Challenge);
        assert_eq!(check.screen(peer(99), None, false, t0), Screen::Pass, "a plain request is never challenged");
    }

    #[test]
    fn an_ack_verifies_its_peer_unless_a_stray_ack_came_from_it_lately() {
        let t0 = Instant::now();
        let mut check = PeerCheck::new(3, Budget::new(0, 0, t0), 10, Duration::from_secs(60), t0);
        assert!(check.acknowledged(peer(1), t0));
        assert!(check.is_verified(peer(1), t0));
        check.stray_ack(peer(2), t0);
        assert!(!check.acknowledged(peer(2), t0 + Duration::from_secs(30)), "a guesser gets one try a minute");
        assert!(!check.is_verified(peer(2), t0 + Duration::from_secs(30)));
        assert!(check.acknowledged(peer(2), t0 + STRAY_ACK_PENALTY + Duration::from_secs(1)));
    }
}
