//! Rules: the decisions about every request, made by a chain of [`sluice_sdk::Rule`]s.
//!
//! Two backends implement the same trait: native rules linked into the gateway
//! (`builtin:NAME`, `builtin:emqx` is the default) and Wasm rule packages ([`WasmRule`]).
//! The chain runs the hooks in order; the first verdict other than "continue" decides, and a
//! rule that panics, traps or times out is answered by its hook's fail policy (authenticate →
//! deny, route → 5.00, uplink → drop and 5.00, downlink → drop), counted and logged, never a crash.
//!
//! Modules: `chain` runs the hooks; `load` decides and builds the chain from the config;
//! `package` reads and writes package files (manifest and vectors in custom sections, with
//! `module` for the binary layout, read with `wasmparser`); `source` parses a project's
//! `rule.yaml`; `limits` resolves what a rule may use; `vectors` runs test vectors on any rule
//! (`verdict` renders and compares answers); `reload` watches the rules folder and swaps
//! chains. The Wasm runtime is `engine` (the wasmtime engine, compilation and its cache),
//! `abi` (the host side of `sluice_abi`: the check of a module, the imports, inputs, outputs
//! and verdicts), `instance` (one instance per thread) and `wasm` (a module as a
//! [`sluice_sdk::Rule`]). Hook names come from [`sluice_sdk::abi::Hook`].

mod abi;
mod chain;
mod deadline;
mod engine;
mod instance;
mod limits;
mod load;
pub(crate) mod module;
pub mod oci;
pub mod package;
pub mod reload;
pub mod signature;
pub mod source;
pub mod vectors;
mod verdict;
mod wasm;

pub use chain::{Chain, LoadError, RuleInfo, RuleReport};
pub use engine::{Compiled, Engine};
pub use limits::{Limits, LimitsError};
pub use load::{ChainError, Change, EntryError, load_chain, load_package, rules_dir};
pub use package::{Manifest, Package, PackageError, pack};
pub use reload::{ReloadError, ReloadStatus, ReloadTrigger, Reloader, start_rules};
pub use vectors::{Vector, VectorFailure, run_package_vectors, run_vectors};
pub use wasm::{RuleStats, WasmRule};

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

/// The uplink fail policy: when an uplink rule fails (a trap, a timeout, an invalid answer), the
/// message is dropped — never published untransformed — and the device is answered 5.00, so
/// that it knows and may send again: nothing is acknowledged and lost. (A rule that *decides*
/// to drop a message answers `Transform::Drop`, and the device gets 2.04.) A failing downlink
/// rule drops the notification.
pub fn uplink_failed() -> sluice_sdk::Transform {
    sluice_sdk::Transform::Reject(sluice_sdk::Reject::new(
        sluice_sdk::Code::INTERNAL_SERVER_ERROR,
        "an uplink rule failed; the message was not published",
    ))
}
