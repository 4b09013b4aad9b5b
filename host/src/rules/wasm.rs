//! A Wasm rule: a compiled module behind the [`sluice_sdk::Rule`] trait, so that the chain runs
//! it exactly like a native rule.
//!
//! ## Instances
//! Each thread that calls a rule gets its own long-lived instance (a `Store` and the module
//! instantiated in it), kept in a thread-local map keyed by the rule's unique id. A warm call
//! costs a map lookup, an epoch deadline and the guest's work: no instantiation, no lock, and no
//! allocation for the inputs (they are copied into a reused buffer). Instances are per thread
//! because a `Store` is single-threaded and a hook is short: the tokio worker that handles a
//! request calls the hook synchronously, never across an `.await`, so one instance per (worker
//! thread, rule) is all the concurrency needed, with no contention between workers.
//!
//! An instance is new each time its previous one trapped (its memory may be half-updated),
//! after [`Limits::recycle_after_calls`] calls, or when its memory grew past
//! [`Limits::memory_recycle_bytes`]; a new instance runs `sluice_init` with the rule's config
//! before its first hook. Rule state kept in memory is therefore best effort.
//!
//! When a `WasmRule` is dropped (a hot reload replaced it), the instances other threads hold
//! for it are purged lazily: every drop bumps a global counter, and a thread that sees the
//! counter change drops the instances whose rule is gone before its next call.
//!
//! ## Failures
//! A trap, a timeout (the deadline is [`Limits::timeout`] of running time, enforced by epoch
//! interruption and the thread's CPU clock so that a preempted call is not blamed; see
//! `rules::deadline`), a
//! bad pointer, a negative or unknown verdict, or outputs that do not make a valid verdict are
//! the rule's failure, answered by the hook's fail policy: authenticate → deny 4.01, route →
//! 5.00, authorize → deny, uplink → drop with 5.00 ([`super::uplink_failed`]), downlink → drop. Each is counted in [`RuleStats`] and logged
//! at warn with the rule's name and version (rate-limited); none is a panic or a hang. Memory is
//! capped by [`Limits::memory_bytes`]: `memory.grow` past it fails inside the guest, which
//! usually ends in a trap.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_sdk::{Access, Auth, Authz, Code, Downlink, Principal, Reject, Request, Route, Rule, Transform, Uplink};
use tracing::warn;
use wasmtime::{Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

use super::LoadError;
use super::abi::{self, Hook, HostState, Inputs, RateLimit, RuleInfo};
use super::engine::{Compiled, Engine, TICK};
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
    /// larger) is replaced after the call (default 8 MiB).
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

impl Limits {
    /// The defaults with the settings of a `limits:` entry.
    pub fn from_config(config: &RuleLimitsConfig) -> Result<Limits, String> {
        Limits::default().with(config)
    }

    /// These limits with the settings of a `limits:` entry applied over them (a manifest's
    /// limits, then the gateway config's).
    pub fn with(&self, config: &RuleLimitsConfig) -> Result<Limits, String> {
        let mut limits = self.clone();
        if let Some(memory) = &config.memory {
            limits.memory_bytes = parse_size(memory).filter(|n| *n >= 64 * 1024).ok_or_else(|| {
                format!("limits.memory: {memory:?} is not a size of at least 64KiB; write it like 16MiB")
            })?;
            limits.memory_recycle_bytes = limits.memory_recycle_bytes.min(limits.memory_bytes);
        }
        if let Some(timeout) = &config.timeout {
            limits.timeout = crate::config::duration::parse(timeout)
                .filter(|t| !t.is_zero())
                .ok_or_else(|| format!("limits.timeout: {timeout:?} is not a duration; write it like 10ms"))?;
        }
        if let Some(calls) = config.recycle_after_calls {
            if calls == 0 {
                return Err("limits.recycle_after_calls: must be at least 1".into());
            }
            limits.recycle_after_calls = calls;
        }
        Ok(limits)
    }

    /// The deadline in epoch ticks: at least `timeout` (the tick in progress counts for nothing).
    fn ticks(&self) -> u64 {
        let ticks = self.timeout.as_nanos().div_ceil(TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// Parses a size: `16MiB`, `512KiB`, `1GiB`, `16MB`, `4096` (bytes).
pub fn parse_size(text: &str) -> Option<usize> {
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

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    failures: AtomicU64,
    instances: AtomicU64,
}

/// What every thread's instance of one rule shares.
struct Shared {
    id: u64,
    engine: wasmtime::Engine,
    compiled: Compiled,
    info: Arc<RuleInfo>,
    limits: Limits,
    ticks: u64,
    exported: [bool; 6],
    hooks: Vec<&'static str>,
    counters: Counters,
    warn_limit: RateLimit,
}

impl Drop for Shared {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// A loaded Wasm rule (Send + Sync; see the module docs).
pub struct WasmRule {
    shared: Arc<Shared>,
}

/// Unique ids of loaded rules.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Bumped at every drop of a rule: threads purge their dead instances when it changes.
static DROPS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static INSTANCES: RefCell<HashMap<u64, Live>> = RefCell::new(HashMap::new());
    static SEEN_DROPS: Cell<u64> = const { Cell::new(0) };
}

/// One thread's instance of a rule.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    funcs: [Option<TypedFunc<(), i32>>; 6],
    calls: u64,
    /// Replace the instance when its memory grows beyond this: the limit, or the size it had
    /// after `sluice_init` if larger (a module that starts big is not recycled at every call).
    recycle_at: usize,
    owner: Weak<Shared>,
}

/// Why a call gave no verdict.
enum Failure {
    Trap(String),
    Timeout,
    Invalid(String),
    /// `sluice_init` returned nonzero, with the rule's reason.
    Refused(String),
}

impl Failure {
    fn from_error(e: &wasmtime::Error) -> Failure {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout,
            Some(trap) => Failure::Trap(trap.to_string()),
            // An error of a host function (a bad pointer, an abort).
            None => Failure::Trap(e.root_cause().to_string()),
        }
    }
}

impl Shared {
    /// Starts an instance and runs `sluice_init` in it.
    fn instantiate(self: &Arc<Shared>) -> Result<Live, Failure> {
        self.counters.instances.fetch_add(1, Ordering::Relaxed);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(1)
            .memories(1)
            .tables(4)
            .table_elements(100_000)
            .build();
        let state = HostState::new(Arc::clone(&self.info), limits, self.limits.memory_bytes);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.ticks);
        let window = self.ticks;
        store.epoch_deadline_callback(move |mut ctx| Ok(ctx.data_mut().watch.expired(window)));
        let instance = self.compiled.pre.instantiate(&mut store).map_err(|e| match Failure::from_error(&e) {
            Failure::Trap(_) => Failure::Trap(format!("cannot start an instance: {e:#}")),
            other => other,
        })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Failure::Invalid("the instance has no memory export".into()))?;
        store.data_mut().memory = Some(memory);
        // A reactor module's explicit start (`--exportStart _initialize` in AssemblyScript).
        if let Ok(initialize) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            initialize.call(&mut store, ()).map_err(|e| Failure::from_error(&e))?;
        }
        let mut funcs: [Option<TypedFunc<(), i32>>; 6] = Default::default();
        for hook in Hook::ALL {
            if self.exported[hook.index()] {
                funcs[hook.index()] = instance.get_typed_func::<(), i32>(&mut store, hook.export()).ok();
            }
        }
        let recycle_at = self.limits.memory_recycle_bytes;
        let mut live = Live { store, memory, funcs, calls: 0, recycle_at, owner: Arc::downgrade(self) };
        match live.run(Hook::Init, self.ticks, |_| {}) {
            Ok(0) => {
                live.recycle_at = live.recycle_at.max(live.memory.data_size(&live.store));
                Ok(live)
            }
            Ok(status) => {
                let reason = live.store.data_mut().outputs.take_reason();
                Err(Failure::Refused(reason.unwrap_or_else(|| format!("sluice_init returned {status}"))))
            }
            Err(e) => Err(Failure::from_error(&e)),
        }
    }

    /// Counts and logs a failure.
    fn failed(&self, hook: Hook, failure: &Failure) {
        let c = &self.counters;
        c.failures.fetch_add(1, Ordering::Relaxed);
        let reason = match failure {
            Failure::Trap(reason) => {
                c.traps.fetch_add(1, Ordering::Relaxed);
                reason.clone()
            }
            Failure::Timeout => {
                c.timeouts.fetch_add(1, Ordering::Relaxed);
                format!("timed out after {:?}", self.limits.timeout)
            }
            Failure::Invalid(reason) => reason.clone(),
            Failure::Refused(reason) => format!("a new instance refused its config: {reason}"),
        };
        if self.warn_limit.allow() {
            let (rule, version) = (self.info.name.as_str(), self.info.version.as_str());
            warn!(rule, version, hook = hook.name(), reason, "Rule failed; applying its fail policy.");
        }
    }

    /// Runs `hook` on this thread's instance: loads the inputs, calls, decodes. `None` means
    /// the rule failed (already counted and logged).
    fn call<T>(
        self: &Arc<Shared>,
        hook: Hook,
        load: impl FnOnce(&mut Inputs),
        decode: impl FnOnce(i32, &mut abi::Outputs) -> Result<T, String>,
    ) -> Option<T> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        // `try_with`: a call from a thread-local destructor fails instead of panicking.
        let result = INSTANCES.try_with(|cell| {
            let Ok(mut map) = cell.try_borrow_mut() else {
                return Err(Failure::Invalid("re-entrant call of a Wasm rule on one thread".into()));
            };
            purge_dead(&mut map);
            let live = match map.entry(self.id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.instantiate()?),
            };
            let outcome = live.run(hook, self.ticks, load);
            let keep = outcome.is_ok()
                && live.calls < self.limits.recycle_after_calls
                && live.memory.data_size(&live.store) <= live.recycle_at;
            let result = match outcome {
                Ok(verdict) => {
                    let outputs = &mut live.store.data_mut().outputs;
                    outputs.check_refusals().and_then(|()| decode(verdict, outputs)).map_err(Failure::Invalid)
                }
                Err(e) => Err(Failure::from_error(&e)),
            };
            if !keep {
                map.remove(&self.id);
            }
            result
        });
        let result = result.unwrap_or_else(|_| Err(Failure::Invalid("called while the thread exits".into())));
        result.map_err(|failure| self.failed(hook, &failure)).ok()
    }
}

impl Live {
    /// Calls `hook` with a fresh deadline.
    fn run(&mut self, hook: Hook, ticks: u64, load: impl FnOnce(&mut Inputs)) -> wasmtime::Result<i32> {
        let Some(func) = self.funcs[hook.index()].clone() else {
            return Err(wasmtime::Error::msg(format!("{} is not exported", hook.export())));
        };
        if hook != Hook::Init {
            self.calls += 1;
        }
        let state = self.store.data_mut();
        state.begin(hook);
        load(&mut state.inputs);
        self.store.set_epoch_deadline(ticks);
        let result = func.call(&mut self.store, ());
        self.store.data_mut().end();
        result
    }
}

/// Drops this thread's instances of rules that no longer exist.
fn purge_dead(map: &mut HashMap<u64, Live>) {
    let drops = DROPS.load(Ordering::Relaxed);
    SEEN_DROPS.with(|seen| {
        if seen.get() != drops {
            seen.set(drops);
            map.retain(|_, live| live.owner.strong_count() > 0);
        }
    });
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
            return Err(LoadError::Wasm { what, reason: "was compiled by another engine".into() });
        }
        let mut exported = [false; 6];
        exported[Hook::Init.index()] = true;
        for hook in Hook::ALL {
            if compiled.hooks().contains(&hook.name()) {
                exported[hook.index()] = true;
            }
        }
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            engine: compiled.engine.clone(),
            compiled: compiled.clone(),
            info: Arc::new(RuleInfo::new(name, version, config)),
            ticks: limits.ticks(),
            limits,
            exported,
            hooks: compiled.hooks().to_vec(),
            counters: Counters::default(),
            warn_limit: RateLimit::new(10),
        });
        match shared.instantiate() {
            Ok(_) => {}
            Err(Failure::Refused(reason)) => return Err(LoadError::Config { rule: what, reason }),
            Err(Failure::Invalid(reason) | Failure::Trap(reason)) => {
                let hint =
                    if reason.contains("memory") && reason.contains("limit") { " (raise limits.memory)" } else { "" };
                return Err(LoadError::Wasm { what, reason: format!("sluice_init failed: {reason}{hint}") });
            }
            Err(Failure::Timeout) => {
                let reason = format!("sluice_init did not finish within {:?} (limits.timeout)", shared.limits.timeout);
                return Err(LoadError::Wasm { what, reason });
            }
        }
        shared.counters.instances.store(0, Ordering::Relaxed);
        Ok(WasmRule { shared })
    }

    /// The hooks the module exports (`authenticate`, `route`, …).
    pub fn hooks(&self) -> &[&'static str] {
        &self.shared.hooks
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.shared.info.name
    }

    /// The rule's version.
    pub fn version(&self) -> &str {
        &self.shared.info.version
    }

    /// The rule's limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The rule's counters so far.
    pub fn stats(&self) -> RuleStats {
        let c = &self.shared.counters;
        RuleStats {
            calls: c.calls.load(Ordering::Relaxed),
            traps: c.traps.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            instances: c.instances.load(Ordering::Relaxed),
        }
    }

    fn exports(&self, hook: Hook) -> bool {
        self.shared.exported[hook.index()]
    }
}

impl std::fmt::Debug for WasmRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRule")
            .field("name", &self.shared.info.name)
            .field("version", &self.shared.info.version)
            .field("hooks", &self.shared.hooks)
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

    fn rule(engine: &Engine) -> WasmRule {
        let wat = r#"(module (memory (export "memory") 1) (func (export "sluice_abi_v1"))
            (func (export "sluice_init") (result i32) (i32.const 0))
            (func (export "sluice_authorize") (result i32) (i32.const 1)))"#;
        let compiled = engine.compile(&wat::parse_str(wat).unwrap()).unwrap();
        WasmRule::new(engine, &compiled, "r", "1", &sluice_sdk::Config::default(), Limits::default()).unwrap()
    }

    fn live_instances() -> usize {
        INSTANCES.with(|cell| cell.borrow().len())
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

    #[test]
    fn sizes_and_limits_parse() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1MB"), Some(1_000_000));
        assert_eq!(parse_size("lots"), None);
        let cfg =
            RuleLimitsConfig { memory: Some("4MiB".into()), timeout: Some("5ms".into()), recycle_after_calls: Some(7) };
        let limits = Limits::from_config(&cfg).unwrap();
        assert_eq!(limits.memory_bytes, 4 << 20);
        assert_eq!(limits.memory_recycle_bytes, 4 << 20);
        assert_eq!(limits.timeout, Duration::from_millis(5));
        assert_eq!(limits.recycle_after_calls, 7);
        assert_eq!(limits.ticks(), 6);
        let bad = RuleLimitsConfig { memory: Some("16 parsecs".into()), ..RuleLimitsConfig::default() };
        assert!(Limits::from_config(&bad).unwrap_err().contains("16MiB"));
    }
}
