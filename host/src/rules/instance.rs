//! The instances of a Wasm rule: one long-lived instance per thread that calls it.
//!
//! Each thread that calls a rule gets its own instance (a `Store` and the module instantiated
//! in it), kept in a thread-local map keyed by the rule's unique id. A warm call costs a map
//! lookup, an epoch deadline and the guest's work: no instantiation, no lock, and no
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
//! When a rule is dropped (a hot reload replaced it), the instances other threads hold for it
//! are purged lazily: every drop bumps a global counter, and a thread that sees the counter
//! change drops the instances whose rule is gone before its next call.
//!
//! A trap, a timeout (the deadline is [`Limits::timeout`] of running time, enforced by epoch
//! interruption and the thread's CPU clock so that a preempted call is not blamed; see
//! `rules::deadline`), a bad pointer, a negative or unknown verdict, or outputs that do not
//! make a valid verdict are a [`Failure`]: counted, logged at warn with the rule's name and
//! version (rate-limited), and answered by the caller with the hook's fail policy.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tracing::warn;
use wasmtime::{Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

use super::RuleStats;
use super::abi::{GuestInfo, Hook, HostState, Inputs, Outputs, RateLimit, VerdictError};
use super::engine::Compiled;
use super::limits::Limits;

/// Failure warnings per second per rule; the rest are counted, not logged.
const WARNINGS_PER_SECOND: u32 = 10;

/// What every thread's instance of one rule shares.
pub(super) struct Shared {
    id: u64,
    compiled: Compiled,
    /// The rule's name, version and config.
    pub(super) info: Arc<GuestInfo>,
    /// The rule's limits.
    pub(super) limits: Limits,
    ticks: u64,
    /// Which hooks the module exports, by [`Hook::index`] (`init` always).
    exported: [bool; Hook::ALL.len()],
    counters: Counters,
    warn_limit: RateLimit,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    failures: AtomicU64,
    instances: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::Relaxed);
    }
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
    funcs: [Option<TypedFunc<(), i32>>; Hook::ALL.len()],
    calls: u64,
    /// Replace the instance when its memory grows beyond this: the limit, or the size it had
    /// after `sluice_init` if larger (a module that starts big is not recycled at every call).
    recycle_at: usize,
    owner: Weak<Shared>,
}

/// Why a call gave no verdict.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// The guest trapped, or a host function failed (a bad pointer, an abort): wasmtime's words.
    #[error("{0}")]
    Trap(String),
    /// The call ran out of time.
    #[error("timed out")]
    Timeout,
    /// The verdict and its outputs do not make an answer.
    #[error(transparent)]
    Verdict(#[from] VerdictError),
    /// The instance exports no memory.
    #[error("the instance has no memory export")]
    NoMemory,
    /// The rule was called from inside one of its own calls.
    #[error("re-entrant call of a Wasm rule on one thread")]
    Reentrant,
    /// The thread's instances are gone (a call from a thread-local destructor).
    #[error("called while the thread exits")]
    ThreadExit,
    /// `sluice_init` returned nonzero, with the rule's reason.
    #[error("a new instance refused its config: {0}")]
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
    /// The shared part of a rule compiled as `compiled`, which exports `hooks` besides `init`.
    pub(super) fn new(compiled: &Compiled, info: GuestInfo, limits: Limits) -> Arc<Shared> {
        let mut exported = [false; Hook::ALL.len()];
        for hook in Hook::ALL {
            exported[hook.index()] = hook == Hook::Init || compiled.hooks().contains(&hook.name());
        }
        Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            compiled: compiled.clone(),
            info: Arc::new(info),
            ticks: limits.ticks(),
            limits,
            exported,
            counters: Counters::default(),
            warn_limit: RateLimit::new(WARNINGS_PER_SECOND),
        })
    }

    /// The hooks the module exports, by name (not `init`).
    pub(super) fn hooks(&self) -> &[&'static str] {
        self.compiled.hooks()
    }

    /// True when the module exports `hook`.
    pub(super) fn exports(&self, hook: Hook) -> bool {
        self.exported[hook.index()]
    }

    /// The counters so far.
    pub(super) fn stats(&self) -> RuleStats {
        let c = &self.counters;
        RuleStats {
            calls: c.calls.load(Ordering::Relaxed),
            traps: c.traps.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            instances: c.instances.load(Ordering::Relaxed),
        }
    }

    /// Starts an instance to check that one starts (`sluice_init` accepts the config), then
    /// drops it; the instance count stays 0, since each thread starts its own on first use.
    pub(super) fn try_instance(self: &Arc<Shared>) -> Result<(), Failure> {
        let started = self.instantiate().map(drop);
        self.counters.instances.store(0, Ordering::Relaxed);
        started
    }

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
        let mut store = Store::new(&self.compiled.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.ticks);
        let window = self.ticks;
        store.epoch_deadline_callback(move |mut ctx| Ok(ctx.data_mut().watch.expired(window)));
        let instance = self.compiled.pre.instantiate(&mut store).map_err(|e| match Failure::from_error(&e) {
            Failure::Trap(_) => Failure::Trap(format!("cannot start an instance: {e:#}")),
            other => other,
        })?;
        let memory = instance.get_memory(&mut store, "memory").ok_or(Failure::NoMemory)?;
        store.data_mut().memory = Some(memory);
        // A reactor module's explicit start (`--exportStart _initialize` in AssemblyScript).
        if let Ok(initialize) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            initialize.call(&mut store, ()).map_err(|e| Failure::from_error(&e))?;
        }
        let mut funcs: [Option<TypedFunc<(), i32>>; Hook::ALL.len()] = Default::default();
        for hook in Hook::ALL {
            if self.exports(hook) {
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
        match failure {
            Failure::Trap(_) => c.traps.fetch_add(1, Ordering::Relaxed),
            Failure::Timeout => c.timeouts.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if self.warn_limit.allow() {
            let (rule, version) = (self.info.name.as_str(), self.info.version.as_str());
            let reason = match failure {
                Failure::Timeout => format!("timed out after {:?}", self.limits.timeout),
                other => other.to_string(),
            };
            warn!(rule, version, hook = hook.name(), reason, "Rule failed; applying its fail policy.");
        }
    }

    /// Runs `hook` on this thread's instance: loads the inputs, calls, decodes. `None` means
    /// the rule failed (already counted and logged).
    pub(super) fn call<T>(
        self: &Arc<Shared>,
        hook: Hook,
        load: impl FnOnce(&mut Inputs),
        decode: impl FnOnce(i32, &mut Outputs) -> Result<T, VerdictError>,
    ) -> Option<T> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        // `try_with`: a call from a thread-local destructor fails instead of panicking.
        let result = INSTANCES.try_with(|cell| {
            let Ok(mut map) = cell.try_borrow_mut() else { return Err(Failure::Reentrant) };
            purge_dead(&mut map);
            let live = match map.entry(self.id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.instantiate()?),
            };
            let outcome = live.run(hook, self.ticks, load);
            let keep = outcome.is_ok()
                && live.calls < self.limits.recycle_after_calls
                && live.memory.data_size(&live.store) <= live.recycle_at;
            let result = match outcome {
                Ok(verdict) => {
                    let outputs = &mut live.store.data_mut().outputs;
                    outputs.check_refusals().and_then(|()| decode(verdict, outputs)).map_err(Failure::Verdict)
                }
                Err(e) => Err(Failure::from_error(&e)),
            };
            if !keep {
                map.remove(&self.id);
            }
            result
        });
        let result = result.unwrap_or(Err(Failure::ThreadExit));
        result.map_err(|failure| self.failed(hook, &failure)).ok()
    }
}

impl Live {
    /// Calls `hook` with a fresh deadline.
    fn run(&mut self, hook: Hook, ticks: u64, load: impl FnOnce(&mut Inputs)) -> wasmtime::Result<i32> {
        let Some(func) = &self.funcs[hook.index()] else {
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

#[cfg(test)]
pub(super) fn live_instances() -> usize {
    INSTANCES.with(|cell| cell.borrow().len())
}
