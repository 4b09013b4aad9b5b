//! Rules: the decisions about every request, made by a chain of [`sluice_sdk::Rule`]s.
//!
//! This release has the native backend: rules linked into the gateway and named
//! `builtin:NAME` in the config (`builtin:emqx` is the default). The chain runs the hooks in
//! config order; the first verdict other than "continue" decides, and a rule that panics is
//! treated by its hook's fail policy (authenticate → deny, route → 5.00, payload hooks → drop),
//! counted and logged, never a crash.

mod chain;

pub use chain::{Chain, LoadError};

use crate::config::RuleConfig;

/// A rule linked into the gateway.
pub struct Builtin {
    /// The name after `builtin:`.
    pub name: &'static str,
    /// Its constructor.
    pub init: sluice_sdk::InitFn,
}

/// Every builtin rule.
pub const BUILTINS: &[Builtin] = &[Builtin { name: sluice_rule_emqx::NAME, init: sluice_rule_emqx::init }];

/// Finds a builtin by the name after `builtin:`.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// Checks one `rules:` entry the way loading it would (used by `sluice check`).
pub fn check(rule: &RuleConfig) -> Result<(), String> {
    chain::load_one(rule).map(|_| ()).map_err(|e| e.to_string())
}
