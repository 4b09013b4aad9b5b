//! One result per run: an ordered list of named figures, printed as a table for people or as
//! one JSON object per line (`--json`) for scripts that take medians over runs.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// The figures of one run, in the order they were set.
#[derive(Clone, Debug)]
pub struct Report {
    scenario: String,
    entries: Vec<(String, Value)>,
}

impl Report {
    /// An empty report for `scenario` (`put`, `fanout`, …); it starts with the load average.
    pub fn new(scenario: &str) -> Report {
        let mut r = Report { scenario: scenario.to_owned(), entries: Vec::new() };
        r.set("loadavg_1m", crate::procfs::loadavg());
        r
    }

    /// The scenario name.
    pub fn scenario(&self) -> &str {
        &self.scenario
    }

    /// Sets (or replaces) a figure.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_owned(), value)),
        }
    }

    /// A figure.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A figure as an integer (0 when absent).
    pub fn u64(&self, key: &str) -> u64 {
        self.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    /// A figure as a float (NaN when absent).
    pub fn f64(&self, key: &str) -> f64 {
        self.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
    }

    /// The report as one JSON object: `{"scenario": …, figures…}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), Value::String(self.scenario.clone()));
        for (k, v) in &self.entries {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// The report as an aligned two-column table.
    pub fn to_table(&self) -> String {
        let width = self.entries.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(8);
        let mut out = format!("{:width$}  {}\n", "scenario", self.scenario);
        for (k, v) in &self.entries {
            let _ = writeln!(out, "{k:width$}  {}", human(v));
        }
        out
    }
}

fn human(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", human(v))).collect::<Vec<_>>().join(" "),
        Value::Array(a) => a.iter().map(human).collect::<Vec<_>>().join(", "),
        Value::Bool(b) => b.to_string(),
    }
}

/// A histogram of durations in nanoseconds, 1 ns … 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// `{count, p50_us, p90_us, p99_us, p99_9_us, max_us}` of a nanosecond histogram; null if empty.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "count": h.len(),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p90_us": us(h.value_at_quantile(0.90)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p99_9_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
    })
}

/// Rounds to two decimals (rates and percentages read better so).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn figures_keep_their_order_and_print_both_ways() {
        let mut r = Report::new("put");
        r.set("sent", 10u64);
        r.set("loss_pct", 0.5);
        r.set("sent", 12u64);
        assert_eq!(r.u64("sent"), 12);
        assert!(r.to_table().contains("sent"));
        assert_eq!(r.to_json()["scenario"], "put");
        let mut h = histogram();
        h.record(1_500).unwrap();
        assert_eq!(percentiles(&h)["count"], 1);
    }
}
