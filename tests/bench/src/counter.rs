//! The counting MQTT subscriber: it subscribes to the topic filter the load goes to and counts,
//! per run, the distinct sequence numbers it receives (so duplicates and leftovers of earlier
//! runs are told apart), and the latency from the device's send to the delivery.
//!
//! Payloads the generator sends are `RUN:SEQ:T` (hex run tag, decimal sequence number, send
//! time in µs since [`epoch`]); see [`payload`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use sluice::mqtt::{self, ClientConfig, Handle};
use tokio::task::JoinHandle;

use crate::report::histogram;

/// The process-wide time origin of payload timestamps.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The payload of message `seq` of run `run`, sent now, padded with `.` to `size` bytes.
pub fn payload(buf: &mut Vec<u8>, run: u16, seq: u64, size: usize) {
    use std::io::Write as _;
    buf.clear();
    let _ = write!(buf, "{run:04x}:{seq}:{}", now_us());
    if buf.len() < size {
        buf.resize(size, b'.');
    }
}

fn parse_payload(p: &[u8]) -> Option<(u16, u64, u64)> {
    let text = std::str::from_utf8(p).ok()?.trim_end_matches('.');
    let mut it = text.splitn(3, ':');
    let run = u16::from_str_radix(it.next()?, 16).ok()?;
    let seq = it.next()?.parse().ok()?;
    let t = it.next()?.parse().ok()?;
    Some((run, seq, t))
}

/// What the subscriber has seen of the current run.
#[derive(Clone, Debug)]
pub struct Counts {
    /// Distinct sequence numbers of the current run.
    pub unique: u64,
    /// Messages of the current run seen again.
    pub duplicates: u64,
    /// Messages of other runs or with other payloads.
    pub foreign: u64,
    /// Send → delivery latency (ns) of the distinct messages.
    pub latency: Histogram<u64>,
}

struct State {
    run: u16,
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    foreign: u64,
    latency: Histogram<u64>,
}

/// A connected, subscribed counting client.
pub struct Counter {
    handle: Handle,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Counter {
    /// Connects to `url`, subscribes to `filter` (QoS 0) and starts counting.
    pub async fn start(url: &str, filter: &str) -> anyhow::Result<Counter> {
        let config = ClientConfig {
            url: url.to_owned(),
            client_id: format!("sluice-bench-{:08x}", rand::random::<u32>()),
            ..ClientConfig::default()
        };
        let (handle, mut incoming) = mqtt::try_connect(config).with_context(|| format!("MQTT URL {url}"))?;
        if !handle.wait_connected(Duration::from_secs(5)).await {
            handle.close().await;
            bail!(
                "no MQTT broker answers at {url} within 5 s: start the broker the gateway publishes to (mosquitto -c tests/bench/mosquitto.conf) and pass it with --mqtt"
            );
        }
        tokio::time::timeout(Duration::from_secs(5), handle.subscribe(filter, 0))
            .await
            .with_context(|| format!("subscribing to {filter} timed out"))?
            .with_context(|| format!("subscribing to {filter}"))?;
        let state = Arc::new(Mutex::new(State {
            run: 0,
            seen: Vec::new(),
            unique: 0,
            duplicates: 0,
            foreign: 0,
            latency: histogram(),
        }));
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while incoming.recv_many(&mut batch, 256).await > 0 {
                let now = now_us();
                let Ok(mut st) = s.lock() else { return };
                for m in batch.drain(..) {
                    st.record(&m.payload, now);
                }
            }
        });
        Ok(Counter { handle, state, task })
    }

    /// Starts counting run `run` of at most `capacity` messages (earlier counts are dropped).
    pub fn begin(&self, run: u16, capacity: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.run = run;
            st.seen = vec![0; capacity.div_ceil(64) as usize];
            st.unique = 0;
            st.duplicates = 0;
            st.foreign = 0;
            st.latency.reset();
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        match self.state.lock() {
            Ok(st) => Counts {
                unique: st.unique,
                duplicates: st.duplicates,
                foreign: st.foreign,
                latency: st.latency.clone(),
            },
            Err(_) => Counts { unique: 0, duplicates: 0, foreign: 0, latency: histogram() },
        }
    }

    /// Waits until `expected` distinct messages arrived, or nothing new arrived for `quiet`, or
    /// `max` passed; returns the counts then.
    pub async fn drain(&self, expected: u64, quiet: Duration, max: Duration) -> Counts {
        let start = Instant::now();
        let mut last = self.counts().unique;
        let mut last_change = Instant::now();
        loop {
            let now = self.counts().unique;
            if now >= expected || start.elapsed() >= max || last_change.elapsed() >= quiet {
                return self.counts();
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Disconnects.
    pub async fn close(self) {
        self.handle.close().await;
        self.task.abort();
    }
}

impl State {
    fn record(&mut self, payload: &[u8], now: u64) {
        match parse_payload(payload) {
            Some((run, seq, sent)) if run == self.run => {
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                match self.seen.get_mut(word) {
                    Some(w) if *w & (1 << bit) == 0 => {
                        *w |= 1 << bit;
                        self.unique += 1;
                        let _ = self.latency.record(now.saturating_sub(sent).max(1) * 1000);
                    }
                    Some(_) => self.duplicates += 1,
                    None => self.foreign += 1,
                }
            }
            _ => self.foreign += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn payloads_round_trip_and_duplicates_are_told_apart() {
        let mut buf = Vec::new();
        payload(&mut buf, 0xab, 42, 32);
        assert_eq!(buf.len(), 32);
        let (run, seq, _) = parse_payload(&buf).unwrap();
        assert_eq!((run, seq), (0xab, 42));
        let mut st = State { run: 0xab, seen: vec![0; 1], unique: 0, duplicates: 0, foreign: 0, latency: histogram() };
        st.record(&buf, now_us());
        st.record(&buf, now_us());
        payload(&mut buf, 0xac, 1, 0);
        st.record(&buf, now_us());
        assert_eq!((st.unique, st.duplicates, st.foreign), (1, 1, 1));
    }
}
