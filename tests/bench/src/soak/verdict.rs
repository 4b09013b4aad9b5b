//! The soak's report and its verdict: missing answers, deliveries and notifications per kind,
//! and the gateway's growth from the end of the warm-up to the end of the load.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::samples::{Counts, DtlsStats, Reading, mib};
use super::{Mix, SoakConfig};
use crate::lane::pct;
use crate::report::{Report, round2};

/// What the run measured.
pub(super) struct Outcome<'a> {
    pub cfg: &'a SoakConfig,
    /// Each request kind with what the broker's subscriber counted of it (publishes only).
    pub mixes: [(&'a Mix, Option<u64>); 4],
    /// The observers' figures (`notifications_expected`, `notifications`, …).
    pub observe: Value,
    pub dtls: Option<(&'a DtlsStats, String)>,
    pub load_time: Duration,
    pub warm_at: Duration,
    pub first: Option<Reading>,
    pub warm: Option<Reading>,
    pub end: Option<Reading>,
    pub samples: Vec<Value>,
    pub counts: Counts,
    pub interrupted: bool,
}

/// The report, with `pass` and `problems`.
pub(super) fn report(o: Outcome<'_>) -> Report {
    let cfg = o.cfg;
    let mut problems = Vec::new();
    let mut r = Report::new("soak");
    r.set("target", cfg.target.to_string());
    r.set("dtls_target", o.dtls.as_ref().map_or(Value::Null, |(_, t)| Value::String(t.clone())));
    r.set("duration_s", round2(o.load_time.as_secs_f64()));
    r.set("warmup_s", round2(o.warm_at.as_secs_f64()));
    r.set("interval_s", round2(cfg.interval.as_secs_f64()));
    r.set("devices", cfg.devices);
    r.set("requests_sent", o.counts.sent);
    r.set("requests_answered", o.counts.answered);
    for (mix, delivered) in o.mixes {
        let mut v = mix.stats.to_json(mix.spec.con);
        let sent = mix.stats.sent.load(Ordering::Relaxed);
        v["rate"] = round2(mix.rate).into();
        // A NON's answer may be lost on the way back without harm: a NON publish is done when
        // the subscriber got it. A CON must be answered 2.xx (and delivered, if published).
        let mut missing = if mix.spec.con {
            sent.saturating_sub(mix.stats.answered.load(Ordering::Relaxed))
        } else {
            mix.stats.failed.load(Ordering::Relaxed)
        };
        if let Some(delivered) = delivered {
            v["delivered"] = delivered.into();
            missing = missing.max(sent.saturating_sub(delivered));
        }
        v["missing"] = missing.into();
        v["missing_pct"] = pct(missing, sent).into();
        if pct(missing, sent) > cfg.max_missing_pct {
            problems.push(format!(
                "{}: {missing} of {sent} requests missing (answers or deliveries), above {} %",
                mix.spec.name, cfg.max_missing_pct
            ));
        }
        if mix.rate > 0.0 && sent == 0 {
            problems.push(format!("{}: nothing sent", mix.spec.name));
        }
        r.set(mix.spec.name, v);
    }
    let expected = o.observe["notifications_expected"].as_u64().unwrap_or(0);
    let received = o.observe["notifications"].as_u64().unwrap_or(0);
    if pct(expected.saturating_sub(received), expected) > cfg.max_missing_pct {
        problems.push(format!(
            "observe: {received} of {expected} notifications received, below {} %",
            100.0 - cfg.max_missing_pct
        ));
    }
    r.set("observe", o.observe);
    match &o.dtls {
        Some((stats, _)) => {
            let attempted = stats.attempted.load(Ordering::Relaxed);
            if pct(stats.missing(), attempted) > cfg.max_missing_pct {
                problems.push(format!(
                    "dtls: {} of {attempted} sessions not completed, above {} %",
                    stats.missing(),
                    cfg.max_missing_pct
                ));
            }
            r.set("dtls", stats.to_json());
        }
        None => r.set("dtls", Value::Null),
    }
    match (cfg.gateway, o.warm, o.end) {
        (Some(g), Some(w), Some(e)) => {
            let growth = (e.rss as f64 - w.rss as f64) / 1_048_576.0;
            let fd_growth = e.fds as i64 - w.fds as i64;
            r.set("gateway_pid", g.pid());
            r.set("rss_mib_start", o.first.map(|f| mib(f.rss)));
            r.set("rss_mib_warm", mib(w.rss));
            r.set("rss_mib_end", mib(e.rss));
            r.set("rss_mib_max", o.samples.iter().filter_map(|s| s["rss_mib"].as_f64()).fold(0.0, f64::max));
            r.set("rss_growth_mib", round2(growth));
            let hours = e.t.saturating_sub(w.t).as_secs_f64() / 3600.0;
            r.set("rss_growth_mib_per_h", if hours > 0.0 { round2(growth / hours) } else { 0.0 });
            r.set("fds_warm", w.fds);
            r.set("fds_end", e.fds);
            r.set("fd_growth", fd_growth);
            r.set("gateway_cpu_s_after_warmup", round2(e.cpu_s - w.cpu_s));
            if growth > cfg.max_rss_growth_mib {
                problems.push(format!(
                    "RSS grew by {growth:.2} MiB after the warm-up, above {} MiB",
                    cfg.max_rss_growth_mib
                ));
            }
            if fd_growth > cfg.max_fd_growth {
                problems.push(format!(
                    "open fds grew from {} to {} after the warm-up, above +{}",
                    w.fds, e.fds, cfg.max_fd_growth
                ));
            }
        }
        _ => {
            // Without --gateway-pid growth is not measured (and not judged).
            r.set("gateway_pid", Value::Null);
            r.set("rss_growth_mib", Value::Null);
            r.set("fd_growth", Value::Null);
        }
    }
    r.set("max_missing_pct", cfg.max_missing_pct);
    r.set("max_rss_growth_mib", cfg.max_rss_growth_mib);
    r.set("max_fd_growth", cfg.max_fd_growth);
    r.set("samples", Value::Array(o.samples));
    if o.interrupted {
        problems.push("interrupted".into());
    }
    r.set("pass", problems.is_empty());
    r.set("problems", json!(problems));
    r.set("interrupted", o.interrupted);
    r
}
