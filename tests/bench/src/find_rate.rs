//! The `find-rate` scenario: the highest NON rate the gateway carries with less loss than a
//! threshold (0.1 % by default). The rate doubles from a start value until a step loses too
//! much, then bisects between the last good and the first bad rate. Steps are bounded in
//! number, in length and in total time.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::put::{Load, Phase};
use crate::report::{Report, round2};
use crate::stop::Stop;

/// How `find-rate` steps.
#[derive(Clone, Debug)]
pub struct FindRateConfig {
    /// First rate tried (messages per second).
    pub start: u64,
    /// Never tries above this rate.
    pub max_rate: u64,
    /// Length of each step.
    pub step: Duration,
    /// A step with at least this much loss (percent) fails.
    pub loss_pct: f64,
    /// Bisection steps after the first failure.
    pub bisect: u32,
    /// At most this many steps in all.
    pub max_steps: u32,
    /// At most this long in all.
    pub max_time: Duration,
    /// Pause between steps.
    pub pause: Duration,
}

impl Default for FindRateConfig {
    fn default() -> Self {
        FindRateConfig {
            start: 5_000,
            max_rate: 1_000_000,
            step: Duration::from_secs(5),
            loss_pct: 0.1,
            bisect: 4,
            max_steps: 16,
            max_time: Duration::from_secs(300),
            pause: Duration::from_secs(1),
        }
    }
}

impl FindRateConfig {
    /// The most messages all steps together may send (sizes the socket pool).
    pub fn messages(&self) -> u64 {
        (self.max_rate as f64 * self.step.as_secs_f64()) as u64 * 2
    }
}

/// Runs the steps on `load`; returns the summary and each step's report.
pub async fn run(load: &mut Load, cfg: &FindRateConfig, stop: &Stop) -> anyhow::Result<(Report, Vec<Report>)> {
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut good: Option<(u64, Report)> = None;
    let mut bad: Option<u64> = None;
    let mut rate = cfg.start.clamp(1, cfg.max_rate.max(1));
    let mut bisections = 0;
    let mut generator_limit: Option<f64> = None;
    while steps.len() < cfg.max_steps as usize && started.elapsed() + cfg.step < cfg.max_time && !stop.raised() {
        let phase = Phase {
            rate,
            duration: cfg.step,
            con: false,
            window: 1,
            max_messages: (rate as f64 * cfg.step.as_secs_f64()).ceil() as u64,
        };
        let r = load.run(&phase, stop).await?;
        let ok = r.f64("loss_pct") < cfg.loss_pct && r.u64("sent") > 0 && !stop.raised();
        steps.push(r.clone());
        // A step the generator could not send at its rate says nothing about the target.
        let sent_rate = r.f64("rate_sent");
        if !stop.raised() && sent_rate < 0.97 * rate as f64 {
            // One more step just under what the generator reached, if that is new ground.
            let under = (sent_rate * 0.9) as u64;
            let best = good.as_ref().map_or(0, |g| g.0);
            if generator_limit.is_none() && under > best && bad.is_none_or(|b| under < b) {
                generator_limit = Some(sent_rate);
                rate = under;
                tokio::time::sleep(cfg.pause).await;
                continue;
            }
            generator_limit = Some(generator_limit.unwrap_or(sent_rate).min(sent_rate));
            break;
        }
        if ok {
            good = Some((rate, r));
        } else {
            bad = Some(rate);
        }
        let next = match (good.as_ref().map(|g| g.0), bad) {
            (Some(g), None) if g >= cfg.max_rate => break,
            (Some(g), None) => (g * 2).min(cfg.max_rate),
            (g, Some(b)) => {
                if bisections >= cfg.bisect {
                    break;
                }
                bisections += 1;
                let lo = g.unwrap_or(0);
                let mid = lo + (b - lo) / 2;
                if mid <= lo || b - lo <= b / 50 {
                    break; // within 2 %: close enough
                }
                mid
            }
            (None, None) => break,
        };
        if let Some(b) = bad
            && next >= b
        {
            break;
        }
        rate = next;
        tokio::time::sleep(cfg.pause).await;
    }
    let mut summary = Report::new("find-rate");
    summary.set("loss_threshold_pct", cfg.loss_pct);
    summary.set("step_s", round2(cfg.step.as_secs_f64()));
    summary.set("steps", steps.len() as u64);
    summary.set("best_rate", good.as_ref().map(|g| g.0));
    summary.set("first_failing_rate", bad);
    // Set when the generator fell short of a step's rate: the answer is then "at least best_rate".
    summary.set("generator_limited_at", generator_limit.map(round2));
    if let Some((_, r)) = &good {
        for key in [
            "rate_delivered",
            "loss_pct",
            "delivery_latency",
            "gateway_cpu_us_per_msg",
            "gateway_rss_mib_after",
            "broker_cpu_us_per_msg",
            "generator_cpu_us_per_msg",
            "machine_cpu_busy_pct",
            "machine_cores",
        ] {
            if let Some(v) = r.get(key) {
                summary.set(&format!("best_{key}"), v.clone());
            }
        }
    }
    summary.set(
        "trail",
        steps
            .iter()
            .map(|s| json!({"rate": s.get("rate_offered"), "loss_pct": s.get("loss_pct"), "delivered_per_s": s.get("rate_delivered")}))
            .collect::<Vec<_>>(),
    );
    summary.set("interrupted", stop.raised());
    Ok((summary, steps))
}
