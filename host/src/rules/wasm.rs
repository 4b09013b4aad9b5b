//! A Wasm rule: a compiled module behind the [`sluice_sdk::Rule`] trait, so that the chain runs
//! it exactly like a native rule. Its instances (one per calling thread) live in
//! `rules::instance`.
//!
//! A trap, a timeout, a bad pointer, a negative or unknown verdict, or outputs that do not
//! make a valid verdict are the rule's failure, answered by the hook's fail policy:
//! authenticate → deny 4.01, route → 5.00, authorize → deny, uplink → drop with 5.00
//! ([`super::uplink_failed`]), downlink → drop. Each is counted in [`RuleStats`] and logged at
//! warn with the rule's name and version (rate-limited); none is a panic or a hang. Memory is
//! capped by [`Limits::memory_bytes`]: `memory.grow` past it fails inside the guest, which
//! usually ends in a trap.

use std::sync::Arc;

use sluice_sdk::{Access, Auth, Authz, Code, Downlink, Principal, Reject, Request, Route, Rule, Transform, Uplink};

use super::LoadError;
use super::abi::{self, GuestInfo, Hook, Inputs};
use super::engine::{Compiled, Engine, WasmError};
use super::instance::{Failure, Shared};
use super::limits::Limits;

/// Counters of one rule, over all its instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Hook calls (hooks the module does not export are not counted).
    pub calls: u64,
    /// Calls that trapped (including bad pointers), not counting timeouts.
    pub traps: u64,
    /// Calls stopped by the deadline.
    pub timeouts: u64,
    /// Fail-policy answers, for any reason (traps, timeouts, invalid verdicts or outputs, an
    /// instance that could not start).
    pub failures: u64,
    /// Instances started (the first on each thread, then one per recycling).
    pub instances: u64,
}

/// A loaded Wasm rule (Send + Sync; its instances are per thread, see `rules::instance`).
pub struct WasmRule {
    shared: Arc<Shared>,
}

impl WasmRule {
    /// Loads a compiled module as a rule: instantiates it once and runs `sluice_init` with
    /// `config` (a refusal is `LoadError::Config` with the rule's `OUT_REASON`; a trap or
    /// timeout is `LoadError::Wasm`). The instance used for the check is dropped; each thread
    /// starts its own on its first call.
    pub fn new(
        engine: &Engine,
        compiled: &Compiled,
        name: &str,
        version: &str,
        config: &sluice_sdk::Config,
        limits: Limits,
    ) -> Result<WasmRule, LoadError> {
        let what = format!("{name} {version}");
        if !wasmtime::Engine::same(engine.wasmtime(), &compiled.engine) {
            return Err(LoadError::Wasm { what, error: WasmError::OtherEngine });
        }
        let shared = Shared::new(compiled, GuestInfo::new(name, version, config), limits);
        match shared.try_instance() {
            Ok(()) => Ok(WasmRule { shared }),
            Err(Failure::Refused(reason)) => Err(LoadError::Config { rule: what, reason }),
            Err(Failure::Timeout) => {
                Err(LoadError::Wasm { what, error: WasmError::InitTimeout(shared.limits.timeout) })
            }
            Err(other) => Err(LoadError::Wasm { what, error: WasmError::Init { reason: other.to_string() } }),
        }
    }

    /// The hooks the module exports (`authenticate`, `route`, …).
    pub fn hooks(&self) -> &[&'static str] {
        self.shared.hooks()
    }

    /// The rule's counters so far.
    pub fn stats(&self) -> RuleStats {
        self.shared.stats()
    }

    fn exports(&self, hook: Hook) -> bool {
        self.shared.exports(hook)
    }
}

impl std::fmt::Debug for WasmRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRule")
            .field("name", &self.shared.info.name)
            .field("version", &self.shared.info.version)
            .field("hooks", &self.hooks())
            .finish()
    }
}

/// The fail policy's message (a diagnostic for the device's owner; details go to the log).
const RULE_FAILED: &str = "rule failed";

impl Rule for WasmRule {
    fn authenticate(&self, req: &Request) -> Auth {
        if !self.exports(Hook::Authenticate) {
            return Auth::Continue;
        }
        self.shared
            .call(Hook::Authenticate, |i| i.request(req), abi::decode_auth)
            .unwrap_or_else(|| Auth::Deny(Reject::new(Code::UNAUTHORIZED, RULE_FAILED)))
    }

    fn route(&self, req: &Request, who: &Principal) -> Route {
        if !self.exports(Hook::Route) {
            return Route::Continue;
        }
        let load = |i: &mut Inputs| {
            i.request(req);
            i.principal(who);
        };
        self.shared
            .call(Hook::Route, load, abi::decode_route)
            .unwrap_or_else(|| Route::Reject(Reject::new(Code::INTERNAL_SERVER_ERROR, RULE_FAILED)))
    }

    fn authorize(&self, who: &Principal, access: Access, topic: &str) -> Authz {
        if !self.exports(Hook::Authorize) {
            return Authz::Continue;
        }
        let load = |i: &mut Inputs| {
            i.authorize(access, topic);
            i.principal(who);
        };
        self.shared.call(Hook::Authorize, load, |v, _| abi::decode_authz(v)).unwrap_or(Authz::Deny)
    }

    fn uplink(&self, msg: &Uplink, who: &Principal) -> Transform {
        if !self.exports(Hook::Uplink) {
            return Transform::Continue;
        }
        let load = |i: &mut Inputs| {
            i.uplink(msg);
            i.principal(who);
        };
        let decode = |v, out: &mut abi::Outputs| abi::decode_transform(Hook::Uplink, v, out);
        self.shared.call(Hook::Uplink, load, decode).unwrap_or_else(super::uplink_failed)
    }

    fn downlink(&self, msg: &Downlink, who: &Principal) -> Transform {
        if !self.exports(Hook::Downlink) {
            return Transform::Continue;
        }
        let load = |i: &mut Inputs| {
            i.downlink(msg);
            i.principal(who);
        };
        let decode = |v, out: &mut abi::Outputs| abi::decode_transform(Hook::Downlink, v, out);
        self.shared.call(Hook::Downlink, load, decode).unwrap_or(Transform::Drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::instance::live_instances;

    fn rule(engine: &Engine) -> WasmRule {
        let wat = r#"(module (memory (export "memory") 1) (func (export "sluice_abi_v1"))
            (func (export "sluice_init") (result i32) (i32.const 0))
            (func (export "sluice_authorize") (result i32) (i32.const 1)))"#;
        let compiled = engine.compile(&wat::parse_str(wat).unwrap()).unwrap();
        WasmRule::new(engine, &compiled, "r", "1", &sluice_sdk::Config::default(), Limits::default()).unwrap()
    }

    #[test]
    fn rules_and_engines_are_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<WasmRule>();
        shared::<Engine>();
        shared::<Compiled>();
    }

    #[test]
    fn instances_of_dropped_rules_are_purged_at_the_next_call() {
        let engine = Engine::new(None).unwrap();
        let who = Principal::default();
        std::thread::spawn(move || {
            let old = rule(&engine);
            assert_eq!(old.authorize(&who, Access::Publish, "t"), Authz::Allow);
            assert_eq!(live_instances(), 1);
            drop(old);
            let new = rule(&engine);
            assert_eq!(new.authorize(&who, Access::Publish, "t"), Authz::Allow);
            assert_eq!(live_instances(), 1);
        })
        .join()
        .unwrap();
    }
}
