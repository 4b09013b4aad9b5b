//! What the soak reads from the gateway every interval, and the counts beside it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::lane::pct;
use crate::procfs::Process;
use crate::report::round2;

/// One reading of the gateway.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reading {
    /// Since the start of the load.
    pub t: Duration,
    /// VmRSS, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

/// Reads the gateway now (None without a gateway, or if /proc does not show it).
pub(super) fn read(gateway: Option<Process>, start: Instant) -> Option<Reading> {
    let g = gateway?;
    let s = g.sample().ok()?;
    Some(Reading { t: start.elapsed(), rss: s.rss, fds: g.fds().ok()?, cpu_s: s.cpu_s })
}

/// Bytes in MiB, two decimals.
pub(super) fn mib(bytes: u64) -> f64 {
    round2(bytes as f64 / 1_048_576.0)
}

/// The counts so far, all kinds together.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub sent: u64,
    pub answered: u64,
    pub notifications: u64,
    pub dtls_sessions: u64,
}

/// One sample: time, the gateway's RSS, fds and CPU share since the previous reading, and the
/// counts so far.
pub(super) fn sample(
    now: Option<Reading>,
    last: Option<Reading>,
    phase: &str,
    counts: Counts,
    start: Instant,
) -> Value {
    let cpu_pct = match (now, last) {
        (Some(n), Some(l)) if n.t > l.t => Some(round2((n.cpu_s - l.cpu_s) * 100.0 / (n.t - l.t).as_secs_f64())),
        _ => None,
    };
    json!({
        "t_s": round2(start.elapsed().as_secs_f64()),
        "phase": phase,
        "rss_mib": now.map(|n| mib(n.rss)),
        "fds": now.map(|n| n.fds),
        "gateway_cpu_pct": cpu_pct,
        "sent": counts.sent,
        "answered": counts.answered,
        "notifications": counts.notifications,
        "dtls_sessions": counts.dtls_sessions,
    })
}

/// A sample as one line for the terminal.
pub(super) fn line(s: &Value) -> String {
    let f = |k: &str| s.get(k).map_or("-".to_string(), |v| if v.is_null() { "-".into() } else { v.to_string() });
    format!(
        "t={:>8}s {:<4} rss_mib={:>8} fds={:>4} cpu%={:>6} sent={} answered={} notifications={} dtls={}",
        f("t_s"),
        s["phase"].as_str().unwrap_or(""),
        f("rss_mib"),
        f("fds"),
        f("gateway_cpu_pct"),
        f("sent"),
        f("answered"),
        f("notifications"),
        f("dtls_sessions")
    )
}

/// DTLS sessions of the soak.
#[derive(Debug, Default)]
pub(super) struct DtlsStats {
    pub attempted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Reason → count (the first 16 reasons).
    pub failures: Mutex<BTreeMap<String, u64>>,
}

impl DtlsStats {
    /// Counts a failed session.
    pub(super) fn fail(&self, reason: String) {
        if let Ok(mut f) = self.failures.lock()
            && (f.len() < 16 || f.contains_key(&reason))
        {
            *f.entry(reason).or_default() += 1;
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions started but not completed.
    pub(super) fn missing(&self) -> u64 {
        let completed = self.completed.load(Ordering::Relaxed);
        self.attempted.load(Ordering::Relaxed).saturating_sub(completed)
    }

    /// `{sessions, completed, failed, failures, missing_pct}`.
    pub(super) fn to_json(&self) -> Value {
        let attempted = self.attempted.load(Ordering::Relaxed);
        json!({
            "sessions": attempted,
            "completed": self.completed.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "failures": self.failures.lock().map(|f| f.clone()).unwrap_or_default(),
            "missing_pct": pct(self.missing(), attempted),
        })
    }
}
