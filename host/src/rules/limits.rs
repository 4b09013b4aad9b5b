//! What one Wasm rule may use: its memory, the deadline of a call, and when an instance is
//! replaced.
//!
//! Limits are written in two places with the same keys ([`RuleLimitsConfig`]): a package's
//! manifest (`limits:` in `rule.yaml`, what the author measured) and the gateway config's
//! `rules[].limits` (what the operator allows). [`Limits::resolve`] lays the config over the
//! manifest over the defaults, key by key, and checks the result.

use std::time::Duration;

use super::engine::TICK;
use crate::config::RuleLimitsConfig;

/// What one Wasm rule may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap per instance (default 16 MiB).
    pub memory_bytes: usize,
    /// Deadline of one hook call, in the time the call runs (default 10 ms): a busy loop is
    /// stopped after about twice this; a call preempted by a busy machine gets up to ten times
    /// this in wall-clock time.
    pub timeout: Duration,
    /// An instance is replaced after this many calls (default 100,000).
    pub recycle_after_calls: u64,
    /// An instance whose memory grew beyond this (or beyond its size after `sluice_init`, if
    /// larger) is replaced after the call (default 8 MiB, and never more than `memory_bytes`).
    pub memory_recycle_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 16 << 20,
            timeout: Duration::from_millis(10),
            recycle_after_calls: 100_000,
            memory_recycle_bytes: 8 << 20,
        }
    }
}

/// A limit written in a form the host cannot use; each names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// `memory` is not a size, or below 64 KiB (one Wasm page).
    #[error("limits.memory: {0:?} is not a size of at least 64KiB; write it like 16MiB")]
    Memory(String),
    /// `timeout` is not a duration, or zero.
    #[error("limits.timeout: {0:?} is not a duration; write it like 10ms")]
    Timeout(String),
    /// `recycle_after_calls` is zero.
    #[error("limits.recycle_after_calls: must be at least 1")]
    RecycleAfterCalls,
}

impl Limits {
    /// The limits of one rule: `config` (its `rules:` entry's `limits`, if any) over `manifest`
    /// (its package's) over the defaults, key by key.
    pub fn resolve(config: Option<&RuleLimitsConfig>, manifest: &RuleLimitsConfig) -> Result<Limits, LimitsError> {
        let config = config.unwrap_or(&NONE);
        let mut limits = Limits::default();
        if let Some(memory) = config.memory.as_ref().or(manifest.memory.as_ref()) {
            limits.memory_bytes =
                parse_size(memory).filter(|n| *n >= 64 * 1024).ok_or_else(|| LimitsError::Memory(memory.clone()))?;
            limits.memory_recycle_bytes = limits.memory_recycle_bytes.min(limits.memory_bytes);
        }
        if let Some(timeout) = config.timeout.as_ref().or(manifest.timeout.as_ref()) {
            limits.timeout = crate::config::duration::parse(timeout)
                .filter(|t| !t.is_zero())
                .ok_or_else(|| LimitsError::Timeout(timeout.clone()))?;
        }
        if let Some(calls) = config.recycle_after_calls.or(manifest.recycle_after_calls) {
            if calls == 0 {
                return Err(LimitsError::RecycleAfterCalls);
            }
            limits.recycle_after_calls = calls;
        }
        Ok(limits)
    }

    /// The deadline in epoch ticks: at least `timeout` (the tick in progress counts for nothing).
    pub(crate) fn ticks(&self) -> u64 {
        let ticks = self.timeout.as_nanos().div_ceil(TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// No limits written.
const NONE: RuleLimitsConfig = RuleLimitsConfig { memory: None, timeout: None, recycle_after_calls: None };

/// Parses a size: `16MiB`, `512KiB`, `1GiB`, `16MB`, `4096` (bytes).
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number.parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(memory: Option<&str>, timeout: Option<&str>, calls: Option<u64>) -> RuleLimitsConfig {
        RuleLimitsConfig {
            memory: memory.map(Into::into),
            timeout: timeout.map(Into::into),
            recycle_after_calls: calls,
        }
    }

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1MB"), Some(1_000_000));
        assert_eq!(parse_size("lots"), None);
        let limits = Limits::resolve(None, &written(Some("4MiB"), Some("5ms"), Some(7))).unwrap();
        assert_eq!(limits.memory_bytes, 4 << 20);
        assert_eq!(limits.memory_recycle_bytes, 4 << 20);
        assert_eq!(limits.timeout, Duration::from_millis(5));
        assert_eq!(limits.recycle_after_calls, 7);
        assert_eq!(limits.ticks(), 6);
    }

    #[test]
    fn each_error_names_the_key_and_the_fix() {
        let bad = |w: RuleLimitsConfig| Limits::resolve(None, &w).unwrap_err().to_string();
        assert!(bad(written(Some("16 parsecs"), None, None)).contains("16MiB"));
        assert!(bad(written(Some("1KiB"), None, None)).contains("at least 64KiB"));
        assert!(bad(written(None, Some("soon"), None)).contains("limits.timeout"));
        assert!(bad(written(None, Some("0ms"), None)).contains("10ms"));
        assert!(bad(written(None, None, Some(0))).contains("at least 1"));
    }

    #[test]
    fn config_limits_win_over_manifest_limits_key_by_key() {
        let config = written(None, Some("5ms"), None);
        let manifest = written(Some("4MiB"), Some("20ms"), None);
        let l = Limits::resolve(Some(&config), &manifest).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(5));
        assert_eq!(l.memory_bytes, 4 << 20);
        assert_eq!(l.recycle_after_calls, Limits::default().recycle_after_calls);
        // The recycling threshold follows the memory that wins, not the manifest's.
        let config = written(Some("32MiB"), None, None);
        let l = Limits::resolve(Some(&config), &manifest).unwrap();
        assert_eq!((l.memory_bytes, l.memory_recycle_bytes), (32 << 20, 8 << 20));
    }

    #[test]
    fn a_written_limit_is_the_same_in_a_manifest_and_in_the_config() {
        let yaml = "memory: 16MiB\ntimeout: 10ms\nrecycle_after_calls: 5\n";
        let from_yaml: RuleLimitsConfig = serde_yaml::from_str(yaml).unwrap();
        let json = serde_json::to_string(&from_yaml).unwrap();
        assert_eq!(serde_json::from_str::<RuleLimitsConfig>(&json).unwrap(), from_yaml);
        assert_eq!(serde_json::to_string(&RuleLimitsConfig::default()).unwrap(), "{}");
        assert!(serde_yaml::from_str::<RuleLimitsConfig>("memroy: 1MiB").is_err());
    }
}
