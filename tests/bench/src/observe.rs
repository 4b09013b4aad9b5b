//! Many observing devices: registration (GET Observe=0) and deregistration (GET Observe=1)
//! with bounded concurrency and a timeout, and the notifications that arrive in between.
//!
//! Observer `i` is device `i`: its own client id (from the path template), its own token, on
//! socket `i % sockets`. Notifications whose payload is `fanout:K` are counted per message K
//! with their latency from the MQTT publish of K.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coap_lite::RequestType;
use hdrhistogram::Histogram;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::coap::{self, Kind, Template};
use crate::pool::{self, Pool, Receivers};
use crate::report::histogram;
use crate::stop::Stop;

const NONE: u8 = 0;
const REGISTERING: u8 = 1;
const REGISTERED: u8 = 2;
const FAILED: u8 = 3;
const LEAVING: u8 = 4;
const LEFT: u8 = 5;

/// Shared with the receiver tasks.
pub struct ObserveState {
    run: u16,
    start: Instant,
    states: Vec<AtomicU8>,
    window: Semaphore,
    /// Notifications counted per fan-out message.
    pub per_message: Vec<AtomicU64>,
    /// When each fan-out message was published (ns since start; 0 = not yet).
    pub published_ns: Vec<AtomicU64>,
    /// Distinct (observer, message) notifications received.
    pub notifications: AtomicU64,
    /// Notifications of an (observer, message) pair seen before (retransmissions).
    pub duplicates: AtomicU64,
    /// One bit per (observer, message).
    seen: Vec<AtomicU64>,
    /// Codes and sizes of the other datagrams with a known token: `"2.05 12B"` → count.
    pub other_kinds: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Notifications whose payload was not a fan-out message of this run.
    pub other_notifications: AtomicU64,
    /// When the latest notification arrived (ns since start).
    pub last_ns: AtomicU64,
    /// Publish → notification latency (ns).
    pub latency: Mutex<Histogram<u64>>,
    /// Answers other than 2.05 to registrations.
    pub refused: AtomicU64,
    /// Confirmable notifications received (each acknowledged).
    pub confirmable: AtomicU64,
    /// Empty ACKs that could not be sent.
    pub ack_errors: AtomicU64,
    /// Registrations and deregistrations sent again after a timeout.
    pub retransmissions: AtomicU64,
    /// 4.01 answers with an Echo value (RFC 9175): the gateway asks an unverified source port
    /// to repeat its request with it, as libcoap does by itself.
    pub echo_challenges: AtomicU64,
    /// Observers whose request is to be repeated with an Echo value.
    echo_retry: Mutex<Vec<(usize, Vec<u8>)>>,
}

impl ObserveState {
    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn on_datagram(&self, socket: &UdpSocket, buf: &[u8]) {
        let Some(r) = coap::parse(buf) else { return };
        if r.kind == Kind::Con {
            self.confirmable.fetch_add(1, Ordering::Relaxed);
            if socket.try_send(&coap::empty_ack(r.mid)).is_err() {
                self.ack_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if r.code == 0 {
            return;
        }
        let Some((run, i)) = coap::parse_token(r.token) else { return };
        let Some(state) = (run == self.run).then(|| self.states.get(i as usize)).flatten() else { return };
        if let Some(echo) = coap::echo_challenge(&r) {
            let waiting = state.load(Ordering::Acquire);
            if (waiting == REGISTERING || waiting == LEAVING)
                && let Ok(mut retry) = self.echo_retry.lock()
            {
                self.echo_challenges.fetch_add(1, Ordering::Relaxed);
                retry.push((i as usize, echo.to_vec()));
                return;
            }
        }
        let to = if r.code == coap::CONTENT { REGISTERED } else { FAILED };
        if state.compare_exchange(REGISTERING, to, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            if to == FAILED {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
            self.window.add_permits(1);
            return;
        }
        if state.compare_exchange(LEAVING, LEFT, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.window.add_permits(1);
            return;
        }
        let now = self.now_ns();
        let k = std::str::from_utf8(r.payload)
            .ok()
            .and_then(|p| p.strip_prefix("fanout:"))
            .and_then(|k| k.parse::<usize>().ok());
        match k.and_then(|k| Some((k, self.per_message.get(k)?, self.published_ns.get(k)?))) {
            Some((k, count, published)) => {
                let bit = i as usize * self.per_message.len() + k;
                let Some(word) = self.seen.get(bit / 64) else { return };
                if word.fetch_or(1 << (bit % 64), Ordering::AcqRel) & (1 << (bit % 64)) != 0 {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
                self.notifications.fetch_add(1, Ordering::Relaxed);
                self.last_ns.fetch_max(now, Ordering::Relaxed);
                let p = published.load(Ordering::Acquire);
                if p > 0
                    && let Ok(mut h) = self.latency.lock()
                {
                    let _ = h.record(now.saturating_sub(p).max(1));
                }
            }
            None => {
                self.other_notifications.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut kinds) = self.other_kinds.lock() {
                    let key = format!("{} {}B", coap::code_string(r.code), r.payload.len());
                    *kinds.entry(key).or_default() += 1;
                }
            }
        }
    }
}

/// What a registration or deregistration pass achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pass {
    /// Requests sent.
    pub sent: u64,
    /// Answered as wished (2.05 to a registration, any answer to a deregistration).
    pub done: u64,
    /// Answered with another code.
    pub refused: u64,
    /// Not answered within the timeout.
    pub timeouts: u64,
    /// How long the pass took.
    pub elapsed: Duration,
}

/// N observing devices over a pool of sockets.
pub struct Observers {
    pool: Pool,
    register: Vec<Template>,
    deregister: Vec<Template>,
    state: Arc<ObserveState>,
    _receivers: Receivers,
}

impl Observers {
    /// Binds the sockets (`sockets`, or one per observer within the fd budget) and builds the
    /// requests; `messages` fan-out messages will be counted.
    pub async fn new(
        target: SocketAddr,
        path_template: &str,
        count: u64,
        sockets: Option<usize>,
        concurrency: usize,
        messages: usize,
    ) -> anyhow::Result<Observers> {
        pool::check_loopback(target)?;
        if count == 0 || count > 1_000_000 {
            bail!("the number of observers or devices must be 1 … 1 000 000");
        }
        if count * messages as u64 > 100_000_000 {
            bail!("observers × messages must be at most 100 000 000");
        }
        pool::probe(target).await?;
        let sockets = sockets.unwrap_or_else(|| pool::default_sockets(count, 2 * count));
        let pool = Pool::bind(target, sockets).await?;
        let mut register = Vec::with_capacity(count as usize);
        let mut deregister = Vec::with_capacity(count as usize);
        for i in 0..count {
            let path = path_template.replace("{device}", &i.to_string());
            register.push(Template::new(RequestType::Get, &path, Some(0)).context("the observe --path-template")?);
            deregister.push(Template::new(RequestType::Get, &path, Some(1))?);
        }
        let state = Arc::new(ObserveState {
            run: rand::random(),
            start: Instant::now(),
            states: (0..count).map(|_| AtomicU8::new(NONE)).collect(),
            window: Semaphore::new(concurrency.clamp(1, 100_000)),
            per_message: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            published_ns: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            notifications: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            seen: (0..(count * messages as u64).div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            other_kinds: Mutex::new(Default::default()),
            other_notifications: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
            refused: AtomicU64::new(0),
            confirmable: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
            retransmissions: AtomicU64::new(0),
            echo_challenges: AtomicU64::new(0),
            echo_retry: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        let receivers = pool.spawn_receivers(Arc::new(move |sock: &UdpSocket, b: &[u8]| s.on_datagram(sock, b)));
        Ok(Observers { pool, register, deregister, state, _receivers: receivers })
    }

    /// The shared counters.
    pub fn state(&self) -> &Arc<ObserveState> {
        &self.state
    }

    /// Sockets in use.
    pub fn sockets(&self) -> usize {
        self.pool.len()
    }

    /// Registers every observer; gives up on one after `timeout`, on all after `max`.
    pub async fn register(&mut self, timeout: Duration, max: Duration, stop: &Stop) -> Pass {
        self.pass(true, timeout, max, stop).await
    }

    /// Deregisters every registered observer.
    pub async fn deregister(&mut self, timeout: Duration, max: Duration, stop: &Stop) -> Pass {
        self.pass(false, timeout, max, stop).await
    }

    async fn pass(&mut self, register: bool, timeout: Duration, max: Duration, stop: &Stop) -> Pass {
        let (from, sending, done) =
            if register { (NONE, REGISTERING, REGISTERED) } else { (REGISTERED, LEAVING, LEFT) };
        let st = self.state.clone();
        let started = Instant::now();
        let deadline = started + max;
        let refused_before = st.refused.load(Ordering::Relaxed);
        let mut pass = Pass::default();
        let mut pending: VecDeque<Waiting> = VecDeque::new();
        let mut resend = Vec::new();
        let mut buf = Vec::with_capacity(256);
        // The Message-ID each observer's request was last sent with: an earlier one still
        // waiting in `pending` (replaced by a repetition with an Echo value) is stale.
        let mut current = vec![0u16; st.states.len()];
        let mut i = 0usize;
        while i < st.states.len() && Instant::now() < deadline && !stop.raised() {
            self.echo_retries(&mut current, &mut resend);
            if st.states[i].load(Ordering::Acquire) != from {
                i += 1;
                continue;
            }
            match tokio::time::timeout(Duration::from_millis(5), st.window.acquire()).await {
                Ok(Ok(p)) => p.forget(),
                _ => {
                    pass.timeouts += expire(&st, &mut pending, sending, timeout, &mut resend, &current);
                    self.resend(register, &mut resend, &mut pending, timeout, &mut buf).await;
                    continue;
                }
            }
            let (s, _) = self.pool.socket_of(i as u64);
            let mid = self.pool.next_mid(s);
            st.states[i].store(sending, Ordering::Release);
            current[i] = mid;
            resend.push(Waiting { i, deadline: Instant::now(), mid, tries: 0, echo: None });
            self.resend(register, &mut resend, &mut pending, timeout, &mut buf).await;
            pass.sent += 1;
            i += 1;
            if pass.sent % 256 == 0 {
                pass.timeouts += expire(&st, &mut pending, sending, timeout, &mut resend, &current);
                self.resend(register, &mut resend, &mut pending, timeout, &mut buf).await;
            }
        }
        let give_up = deadline.max(started + timeout) + timeout * (RETRIES + 1);
        while !pending.is_empty() && Instant::now() < give_up && !stop.raised() {
            self.echo_retries(&mut current, &mut resend);
            pass.timeouts += expire(&st, &mut pending, sending, timeout, &mut resend, &current);
            self.resend(register, &mut resend, &mut pending, timeout, &mut buf).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pass.timeouts += expire(&st, &mut pending, sending, Duration::ZERO, &mut resend, &current);
        pass.done = st.states.iter().filter(|s| s.load(Ordering::Relaxed) == done).count() as u64;
        pass.refused = if register { st.refused.load(Ordering::Relaxed) - refused_before } else { 0 };
        pass.elapsed = started.elapsed();
        pass
    }

    /// Queues the requests the gateway asked to repeat with an Echo value, each with a new
    /// Message-ID (the one it answered is done).
    fn echo_retries(&self, current: &mut [u16], resend: &mut Vec<Waiting>) {
        let retries = self.state.echo_retry.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        for (i, echo) in retries {
            let Some(slot) = current.get_mut(i) else { continue };
            let (s, _) = self.pool.socket_of(i as u64);
            let mid = self.pool.next_mid(s);
            *slot = mid;
            resend.push(Waiting { i, deadline: Instant::now(), mid, tries: 0, echo: Some(echo) });
        }
    }

    /// Sends (again) every request in `resend`, with its own Message-ID, and waits for it.
    async fn resend(
        &mut self,
        register: bool,
        resend: &mut Vec<Waiting>,
        pending: &mut VecDeque<Waiting>,
        timeout: Duration,
        buf: &mut Vec<u8>,
    ) {
        for mut w in resend.drain(..) {
            let (_, socket) = self.pool.socket_of(w.i as u64);
            let templates = if register { &self.register } else { &self.deregister };
            let token = coap::token(self.state.run, w.i as u64);
            match &w.echo {
                Some(echo) => templates[w.i].with_echo(echo).stamp(buf, true, w.mid, &token, &[]),
                None => templates[w.i].stamp(buf, true, w.mid, &token, &[]),
            }
            if w.tries > 0 {
                self.state.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
            let _ = socket.send(buf).await;
            // CoAP's back-off: the timeout doubles with every retransmission.
            w.deadline = Instant::now() + timeout * (1 << w.tries);
            pending.push_back(w);
        }
    }
}

/// Retransmissions of a registration or deregistration before it times out.
const RETRIES: u32 = 2;

/// A request waiting for its answer.
struct Waiting {
    i: usize,
    deadline: Instant,
    mid: u16,
    tries: u32,
    /// The Echo value the request carries (a repetition the gateway asked for).
    echo: Option<Vec<u8>>,
}

/// Handles pending requests past their deadline: retransmitted (put in `resend`) up to
/// [`RETRIES`] times, then timed out; with a zero `timeout` all that are left time out.
fn expire(
    st: &ObserveState,
    pending: &mut VecDeque<Waiting>,
    sending: u8,
    timeout: Duration,
    resend: &mut Vec<Waiting>,
    current: &[u16],
) -> u64 {
    let now = Instant::now();
    let mut n = 0;
    // Entries are roughly in deadline order (retransmissions go to the back with a later
    // one): stop at the first that is not due.
    for _ in 0..pending.len() {
        let Some(w) = pending.pop_front() else { break };
        if st.states[w.i].load(Ordering::Acquire) != sending || current.get(w.i) != Some(&w.mid) {
            continue;
        }
        if timeout > Duration::ZERO && w.deadline > now {
            pending.push_front(w);
            break;
        }
        if timeout > Duration::ZERO && w.tries < RETRIES {
            resend.push(Waiting { tries: w.tries + 1, ..w });
            continue;
        }
        if st.states[w.i].compare_exchange(sending, FAILED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            n += 1;
            st.window.add_permits(1);
        }
    }
    n
}
