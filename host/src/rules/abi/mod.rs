//! The host side of ABI v1 (`sluice_abi`): the `sluice1` imports, the inputs a hook may read,
//! the outputs it may write, and the decoding of a verdict into the SDK's values.
//!
//! A call goes like this: [`HostState::begin`] clears the per-store buffers and the inputs of
//! the hook are copied into [`Inputs`] (one byte arena reused from call to call, so a warm
//! instance allocates nothing for its inputs); the guest pulls what it needs with `get` /
//! `get_i64` and pushes its outputs with `set` / `set_i64`, each checked on the spot (bounds,
//! size, UTF-8, ranges, which hook may write which field) and answered with a `status`; then
//! the verdict and the outputs are decoded into exactly the [`sluice_sdk`] value a native rule
//! would return (`decode_*`), or an error that the caller answers with the hook's fail policy.
//!
//! Guest pointers are never trusted: every `(ptr, len)` range is checked against the memory's
//! current size, and a range outside it traps the call ("bad pointer"), which the fail policy
//! contains. The host never writes outside the range the guest offered and never allocates in
//! guest memory.

mod check;
mod fields;
mod verdict;

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub(crate) use sluice_sdk::abi::Hook;
use sluice_sdk::abi::{self, field, import, status};
use tracing::{debug, error, info, trace, warn};
use wasmtime::{Caller, Extern, Linker, Memory, StoreLimits};

pub use check::AbiError;
pub(crate) use check::check;
pub(crate) use fields::Inputs;
use fields::{numeric, readable, writable};
pub(crate) use verdict::{Outputs, VerdictError, decode_auth, decode_authz, decode_route, decode_transform};

/// Log lines per second per rule; the rest are dropped.
const LOG_LINES_PER_SECOND: u32 = 100;
/// The longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 4096;

/// The `sluice1` and `env` imports a rule may have, with their types written the way
/// [`check`] prints a module's import types.
pub(crate) const ALLOWED_IMPORTS: &[(&str, &str, &str)] = &[
    (abi::IMPORT_MODULE, import::GET, "(i32, i32, i32, i32) -> i32"),
    (abi::IMPORT_MODULE, import::GET_I64, "(i32, i32) -> i64"),
    (abi::IMPORT_MODULE, import::SET, "(i32, i32, i32) -> i32"),
    (abi::IMPORT_MODULE, import::SET_I64, "(i32, i64) -> i32"),
    (abi::IMPORT_MODULE, import::CONFIG, "(i32, i32, i32, i32) -> i32"),
    (abi::IMPORT_MODULE, import::LOG, "(i32, i32, i32) -> ()"),
    (abi::IMPORT_MODULE, import::INPUTS, "(i32, i32) -> i32"),
    ("env", "abort", "(i32, i32, i32, i32) -> ()"),
    ("env", "trace", "(i32, i32, f64, f64, f64, f64, f64) -> ()"),
    ("env", "seed", "() -> f64"),
    ("env", "Date.now", "() -> f64"),
];

/// A per-rule counter that lets `limit` events through per second.
pub(crate) struct RateLimit {
    limit: u32,
    second: AtomicU64,
    count: AtomicU32,
}

impl RateLimit {
    /// Lets `limit` events a second through.
    pub(crate) fn new(limit: u32) -> RateLimit {
        RateLimit { limit, second: AtomicU64::new(0), count: AtomicU32::new(0) }
    }

    /// True when this event may be logged. (Racy at a second's edge, which only moves a line or
    /// two between seconds.)
    pub(crate) fn allow(&self) -> bool {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
        // Load before swapping, so that threads only write the shared line once a second.
        if self.second.load(Ordering::Relaxed) != now && self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// What every instance of one loaded rule shares: its name, version and config.
pub(crate) struct GuestInfo {
    /// The rule's name (for logs).
    pub(crate) name: String,
    /// The rule's version (for logs).
    pub(crate) version: String,
    /// `CONFIG_ENTRY` values, `key\0value`.
    config: Vec<Vec<u8>>,
    /// The key length of each entry of `config`.
    key_lens: Vec<usize>,
    log_limit: RateLimit,
}

impl GuestInfo {
    /// The rule's identity and its config entries.
    pub(crate) fn new(name: &str, version: &str, config: &sluice_sdk::Config) -> GuestInfo {
        let mut entries = Vec::with_capacity(config.entries().len());
        let mut key_lens = Vec::with_capacity(config.entries().len());
        for (k, v) in config.entries() {
            let mut entry = Vec::with_capacity(k.len() + 1 + v.len());
            entry.extend_from_slice(k.as_bytes());
            entry.push(0);
            entry.extend_from_slice(v.as_bytes());
            entries.push(entry);
            key_lens.push(k.len());
        }
        GuestInfo {
            name: name.to_string(),
            version: version.to_string(),
            config: entries,
            key_lens,
            log_limit: RateLimit::new(LOG_LINES_PER_SECOND),
        }
    }

    /// The value of a config key.
    fn config_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.config.iter().zip(&self.key_lens).find_map(|(entry, &n)| {
            let (k, rest) = entry.split_at_checked(n)?;
            (k == key).then(|| rest.get(1..).unwrap_or_default())
        })
    }
}

/// The data of one instance's `Store`.
pub(crate) struct HostState {
    /// The memory cap (`Store::limiter`).
    pub(crate) limits: StoreLimits,
    /// The instance's exported memory, once known.
    pub(crate) memory: Option<Memory>,
    /// The hook running, if any.
    hook: Option<Hook>,
    /// The inputs of the current call.
    pub(crate) inputs: Inputs,
    /// The outputs of the current call.
    pub(crate) outputs: Outputs,
    /// The rule.
    pub(crate) rule: Arc<GuestInfo>,
    /// `NOW_MS`, frozen at its first read in a call.
    now_ms: Option<i64>,
    /// The most output bytes one call may set.
    max_output: usize,
    /// The call's deadline (see `rules::deadline`).
    pub(crate) watch: crate::rules::deadline::Watch,
}

impl HostState {
    /// The state of a new instance of `rule`.
    pub(crate) fn new(rule: Arc<GuestInfo>, limits: StoreLimits, max_output: usize) -> HostState {
        HostState {
            limits,
            memory: None,
            hook: None,
            inputs: Inputs::default(),
            outputs: Outputs::default(),
            rule,
            now_ms: None,
            max_output,
            watch: crate::rules::deadline::Watch::default(),
        }
    }

    /// Starts a call of `hook`: clears the previous call's inputs and outputs.
    pub(crate) fn begin(&mut self, hook: Hook) {
        self.inputs.clear();
        self.outputs = Outputs::default();
        self.now_ms = None;
        self.watch.reset();
        self.hook = Some(hook);
    }

    /// Ends the call: inputs are no longer readable, outputs no longer writable.
    pub(crate) fn end(&mut self) {
        self.hook = None;
    }

    /// A byte field, or the `get` status.
    fn lookup(&self, field: i32, index: i32) -> Result<&[u8], i32> {
        let Some(hook) = self.hook else { return Err(abi::UNAVAILABLE) };
        if !readable(hook, field) || numeric(field) {
            return Err(abi::UNAVAILABLE);
        }
        let Ok(index) = u32::try_from(index) else { return Err(abi::ABSENT) };
        let found = if field == field::CONFIG_ENTRY {
            self.rule.config.get(index as usize).map(Vec::as_slice)
        } else {
            self.inputs.find(field, index)
        };
        found.ok_or(abi::ABSENT)
    }

    fn lookup_int(&mut self, field: i32, index: i32) -> i64 {
        let Some(hook) = self.hook else { return abi::ABSENT_I64 };
        if !readable(hook, field) || !numeric(field) || index != 0 {
            return abi::ABSENT_I64;
        }
        if field == field::NOW_MS {
            return *self.now_ms.get_or_insert_with(now_ms);
        }
        self.inputs.find_int(field).unwrap_or(abi::ABSENT_I64)
    }

    fn set(&mut self, field: i32, value: &[u8]) -> i32 {
        let status = match self.check_output(field, false) {
            status::OK => self.outputs.set_bytes(field, value, self.max_output),
            refused => refused,
        };
        self.note(field, status)
    }

    fn set_int(&mut self, field: i32, value: i64) -> i32 {
        let status = match self.check_output(field, true) {
            status::OK => self.outputs.set_int(field, value),
            refused => refused,
        };
        self.note(field, status)
    }

    /// Remembers the first refused output of the call.
    fn note(&mut self, field: i32, status: i32) -> i32 {
        if status != status::OK && self.outputs.refused.is_none() {
            self.outputs.refused = Some((field, status));
        }
        status
    }

    fn check_output(&self, field: i32, int: bool) -> i32 {
        let known = (field::OUT_CLIENT_ID..=field::OUT_CONTENT_FORMAT).contains(&field);
        if !known {
            return if (0..field::OUT_CLIENT_ID).contains(&field) {
                status::NOT_WRITABLE
            } else {
                status::UNKNOWN_FIELD
            };
        }
        if numeric(field) != int {
            return status::INVALID;
        }
        match self.hook {
            Some(hook) if writable(hook, field) => status::OK,
            _ => status::NOT_WRITABLE,
        }
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The guest's memory and the store's data, side by side.
fn memory_and_state<'a>(caller: &'a mut Caller<'_, HostState>) -> wasmtime::Result<(&'a mut [u8], &'a mut HostState)> {
    let memory = match caller.data().memory {
        Some(memory) => memory,
        // Before instantiation finished (a start function): find it by name.
        None => match caller.get_export("memory") {
            Some(Extern::Memory(memory)) => {
                caller.data_mut().memory = Some(memory);
                memory
            }
            _ => wasmtime::bail!("the rule has no exported memory"),
        },
    };
    Ok(memory.data_and_store_mut(caller))
}

/// The guest range `ptr..ptr+len`, or a trap naming the import when it is not inside memory.
fn span(memory_len: usize, import: &str, ptr: i32, len: i32) -> wasmtime::Result<Range<usize>> {
    let start = ptr.cast_unsigned() as usize;
    let Ok(n) = usize::try_from(len) else {
        wasmtime::bail!("bad pointer: sluice1.{import} was given the negative length {len}")
    };
    match start.checked_add(n) {
        Some(end) if end <= memory_len => Ok(start..end),
        _ => wasmtime::bail!(
            "bad pointer: sluice1.{import} was given {start:#x}..+{n}, outside the rule's memory of {memory_len} bytes"
        ),
    }
}

/// Copies `value` into `dst` (a checked range) up to its length; returns the full length.
fn copy_out(mem: &mut [u8], dst: Range<usize>, value: &[u8]) -> i32 {
    let n = value.len().min(dst.len());
    if let (Some(to), Some(from)) = (mem.get_mut(dst.start..dst.start + n), value.get(..n)) {
        to.copy_from_slice(from);
    }
    i32::try_from(value.len()).unwrap_or(i32::MAX)
}

fn get(mut caller: Caller<'_, HostState>, field: i32, index: i32, dst: i32, cap: i32) -> wasmtime::Result<i32> {
    let (mem, state) = memory_and_state(&mut caller)?;
    let dst = span(mem.len(), import::GET, dst, cap)?;
    Ok(match state.lookup(field, index) {
        Ok(value) => copy_out(mem, dst, value),
        Err(status) => status,
    })
}

/// `inputs`: the whole block, or only its length when it does not fit (never half of it).
fn inputs(mut caller: Caller<'_, HostState>, dst: i32, cap: i32) -> wasmtime::Result<i32> {
    let (mem, state) = memory_and_state(&mut caller)?;
    let dst = span(mem.len(), import::INPUTS, dst, cap)?;
    if state.hook.is_none() {
        return Ok(abi::UNAVAILABLE);
    }
    let block = state.inputs.block();
    if let Some(to) = mem.get_mut(dst.start..dst.start + block.len()).filter(|_| block.len() <= dst.len()) {
        to.copy_from_slice(block);
    }
    Ok(i32::try_from(block.len()).unwrap_or(i32::MAX))
}

fn get_i64(mut caller: Caller<'_, HostState>, field: i32, index: i32) -> i64 {
    caller.data_mut().lookup_int(field, index)
}

fn set(mut caller: Caller<'_, HostState>, field: i32, src: i32, len: i32) -> wasmtime::Result<i32> {
    let (mem, state) = memory_and_state(&mut caller)?;
    let src = span(mem.len(), import::SET, src, len)?;
    Ok(state.set(field, mem.get(src).unwrap_or_default()))
}

fn set_i64(mut caller: Caller<'_, HostState>, field: i32, value: i64) -> i32 {
    caller.data_mut().set_int(field, value)
}

fn config(mut caller: Caller<'_, HostState>, key: i32, key_len: i32, dst: i32, cap: i32) -> wasmtime::Result<i32> {
    let (mem, state) = memory_and_state(&mut caller)?;
    let key = span(mem.len(), import::CONFIG, key, key_len)?;
    let dst = span(mem.len(), import::CONFIG, dst, cap)?;
    let rule = Arc::clone(&state.rule);
    let value = mem.get(key).and_then(|key| rule.config_value(key)).map(<[u8]>::to_vec);
    Ok(match value {
        Some(value) => copy_out(mem, dst, &value),
        None => abi::ABSENT,
    })
}

fn log(mut caller: Caller<'_, HostState>, level: i32, msg: i32, len: i32) -> wasmtime::Result<()> {
    let (mem, state) = memory_and_state(&mut caller)?;
    let msg = span(mem.len(), import::LOG, msg, len)?;
    if !state.rule.log_limit.allow() {
        return Ok(());
    }
    let end = msg.start + msg.len().min(MAX_LOG_LINE);
    let text = String::from_utf8_lossy(mem.get(msg.start..end).unwrap_or_default());
    rule_log(&state.rule, level, &text);
    Ok(())
}

/// Logs one line of a rule at the ABI level (0 error … 4 trace).
fn rule_log(rule: &GuestInfo, level: i32, text: &str) {
    let (name, version) = (rule.name.as_str(), rule.version.as_str());
    match level {
        0 => error!(rule = name, version, "{text}"),
        1 => warn!(rule = name, version, "{text}"),
        3 => debug!(rule = name, version, "{text}"),
        4 => trace!(rule = name, version, "{text}"),
        _ => info!(rule = name, version, "{text}"),
    }
}

/// Reads an AssemblyScript string (UTF-16LE at `ptr`, its byte length at `ptr - 4`), best
/// effort: at most 1,024 characters; anything unreadable gives `?`.
fn as_string(mem: &[u8], ptr: i32) -> String {
    let ptr = ptr.cast_unsigned() as usize;
    if ptr == 0 {
        return String::new();
    }
    let Some(len) = ptr.checked_sub(4).and_then(|at| mem.get(at..ptr)) else { return "?".into() };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(bytes) = mem.get(ptr..ptr.saturating_add(len.min(2048))) else { return "?".into() };
    let units = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

fn abort(mut caller: Caller<'_, HostState>, msg: i32, file: i32, line: i32, col: i32) -> wasmtime::Result<()> {
    let (mem, _) = memory_and_state(&mut caller)?;
    let (msg, file) = (as_string(mem, msg), as_string(mem, file));
    wasmtime::bail!("the rule aborted: {msg} (at {file}:{line}:{col})")
}

#[allow(clippy::too_many_arguments)] // the signature of AssemblyScript's `trace`
fn trace_import(
    mut caller: Caller<'_, HostState>,
    msg: i32,
    n: i32,
    a0: f64,
    a1: f64,
    a2: f64,
    a3: f64,
    a4: f64,
) -> wasmtime::Result<()> {
    let (mem, state) = memory_and_state(&mut caller)?;
    if !state.rule.log_limit.allow() {
        return Ok(());
    }
    let values = [a0, a1, a2, a3, a4];
    let n = usize::try_from(n).unwrap_or(0).min(values.len());
    let args: Vec<String> = values.iter().take(n).map(f64::to_string).collect();
    rule_log(&state.rule, 2, &format!("trace: {} {}", as_string(mem, msg), args.join(", ")));
    Ok(())
}

/// Defines every allowed import in `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let m = abi::IMPORT_MODULE;
    linker.func_wrap(m, import::GET, get)?;
    linker.func_wrap(m, import::GET_I64, get_i64)?;
    linker.func_wrap(m, import::SET, set)?;
    linker.func_wrap(m, import::SET_I64, set_i64)?;
    linker.func_wrap(m, import::CONFIG, config)?;
    linker.func_wrap(m, import::LOG, log)?;
    linker.func_wrap(m, import::INPUTS, inputs)?;
    linker.func_wrap("env", "abort", abort)?;
    linker.func_wrap("env", "trace", trace_import)?;
    linker.func_wrap("env", "seed", rand::random::<f64>)?;
    linker.func_wrap("env", "Date.now", || now_ms() as f64)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::abi::{block, hook};
    use sluice_sdk::{Code, Request};
    use verdict::MAX_TEXT;

    fn state(hook: Hook) -> HostState {
        let info = GuestInfo::new("t", "1", &sluice_sdk::Config::from_entries(vec![("a.b".into(), "c".into())]));
        let mut state = HostState::new(Arc::new(info), StoreLimits::default(), 1 << 20);
        state.begin(hook);
        state
    }

    #[test]
    fn request_fields_are_readable_in_route_but_not_in_uplink() {
        let req = Request { path: vec!["a".into(), "b".into()], ..Request::default() };
        let mut s = state(Hook::Route);
        s.inputs.request(&req);
        assert_eq!(s.lookup(field::PATH_SEGMENT, 1), Ok(&b"b"[..]));
        assert_eq!(s.lookup(field::PATH_SEGMENT, 2), Err(abi::ABSENT));
        assert_eq!(s.lookup(field::CONFIG_ENTRY, 0), Ok(&b"a.b\0c"[..]));
        assert_eq!(s.lookup_int(field::METHOD, 0), 1);
        let mut s = state(Hook::Uplink);
        s.inputs.request(&req);
        assert_eq!(s.lookup(field::PATH_SEGMENT, 0), Err(abi::UNAVAILABLE));
        assert_eq!(s.lookup_int(field::METHOD, 0), abi::ABSENT_I64);
    }

    #[test]
    fn the_block_holds_what_the_hook_may_read_and_get_finds_the_same_bytes() {
        let req = Request {
            path: vec!["ps".into(), "a".into()],
            query: vec!["c=1".into()],
            content_format: Some(50),
            payload: b"{}".to_vec(),
            ..Request::default()
        };
        let who = sluice_sdk::Principal {
            client_id: "d1".into(),
            attributes: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let msg = sluice_sdk::Downlink { topic: "t".into(), payload: b"x".to_vec(), ..Default::default() };
        for hook in Hook::chain() {
            let mut s = state(hook);
            match hook {
                Hook::Authenticate => s.inputs.request(&req),
                Hook::Route => {
                    s.inputs.request(&req);
                    s.inputs.principal(&who);
                }
                Hook::Authorize => {
                    s.inputs.authorize(sluice_sdk::Access::Subscribe, "t/#");
                    s.inputs.principal(&who);
                }
                Hook::Uplink => {
                    let up = sluice_sdk::Uplink { topic: "t".into(), payload: b"x".to_vec(), content_format: Some(0) };
                    s.inputs.uplink(&up);
                    s.inputs.principal(&who);
                }
                Hook::Downlink | Hook::Init => {
                    s.inputs.downlink(&msg);
                    s.inputs.principal(&who);
                }
            }
            let mut seen = 0;
            let block = s.inputs.block().to_vec();
            for (field, index, data) in block::records(&block) {
                assert!(readable(hook, field), "{hook} may not read field {field}");
                if numeric(field) {
                    assert_eq!(block::int(data), Some(s.lookup_int(field, index)));
                } else {
                    assert_eq!(s.lookup(field, index), Ok(data));
                }
                seen += 1;
            }
            assert!(seen >= 3, "{hook}: only {seen} records");
        }
    }

    #[test]
    fn outputs_are_checked_when_set() {
        let mut s = state(Hook::Route);
        assert_eq!(s.set_int(field::OUT_QOS, 3), status::INVALID);
        assert_eq!(s.set_int(field::OUT_CODE, i64::from(Code::new(3, 0).0)), status::INVALID);
        assert_eq!(s.set(field::OUT_TOPIC, b"\xff"), status::INVALID);
        assert_eq!(s.set(field::OUT_TOPIC, &vec![b'a'; MAX_TEXT + 1]), status::TOO_LARGE);
        assert_eq!(s.set(field::OUT_CLIENT_ID, b"x"), status::NOT_WRITABLE);
        assert_eq!(s.set(field::PATH_SEGMENT, b"x"), status::NOT_WRITABLE);
        assert_eq!(s.set(999, b"x"), status::UNKNOWN_FIELD);
        assert_eq!(s.set(field::OUT_QOS, b"x"), status::INVALID);
        assert_eq!(s.set(field::OUT_TOPIC, b"a/+/b"), status::OK);
        assert!(decode_route(hook::ROUTE_PUBLISH, &mut s.outputs).is_err());
    }

    #[test]
    fn config_values_are_found_by_key() {
        let s = state(Hook::Init);
        assert_eq!(s.rule.config_value(b"a.b"), Some(&b"c"[..]));
        assert_eq!(s.rule.config_value(b"a"), None);
    }
}
