//! The Wasm engine: one wasmtime `Engine` for the process, the `Linker` with the ABI's imports,
//! the epoch ticker, and the compilation of rule modules (checked first, cached on disk).
//!
//! [`Engine::compile`] never runs on the request path. It checks the module before compiling
//! it, so that a module built for the wrong target or ABI is refused with a message that names
//! the fix rather than a link error: the marker export `sluice_abi_v1`, an exported `memory`,
//! `sluice_init`, hooks of type `() -> i32`, and only the imports of the allowlist
//! (`sluice1.*` and AssemblyScript's `env.abort/trace/seed/Date.now`; no WASI).
//!
//! Compiled code is cached in a directory keyed by the module's SHA-256 and the engine's
//! compatibility hash (wasmtime version and settings), so a restart or a reload of an unchanged
//! package costs a file read instead of a compilation. Entries are written with
//! write-then-rename and carry a SHA-256 of their bytes, checked before loading; any entry that
//! does not check out is recompiled and replaced.
//!
//! Deadlines use epoch interruption: a ticker thread advances the engine's epoch every
//! millisecond ([`TICK`]) and each call sets its deadline in ticks. The thread holds only a weak
//! reference and ends when the engine is dropped.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_sdk::abi::{self, hook};
use tracing::{debug, warn};
use wasmparser::{CompositeInnerType, ExternalKind, FuncType, Parser, Payload, TypeRef};
use wasmtime::{InstancePre, Linker, Module};

use super::LoadError;
use super::abi::{ALLOWED_IMPORTS, Hook, HostState, add_to_linker};

/// The epoch tick: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(1);

/// The Wasm engine shared by every rule (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// The engine's compatibility hash, as part of cache file names.
    compat: String,
    /// Starts the epoch ticker with the first module compiled: a gateway with builtin rules
    /// only has no thread waking up every millisecond.
    ticker: std::sync::Once,
}

/// A module checked and compiled for an [`Engine`], ready to instantiate (cheap to clone).
#[derive(Clone)]
pub struct Compiled {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) pre: InstancePre<HostState>,
    hooks: Vec<&'static str>,
    sha256: String,
    from_cache: bool,
}

impl Compiled {
    /// The hooks the module exports, by name (`authenticate`, `route`, …; not `init`).
    pub fn hooks(&self) -> &[&'static str] {
        &self.hooks
    }

    /// SHA-256 of the module's bytes, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// True when the code came from the disk cache rather than a compilation.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("cache_dir", &self.inner.cache_dir).finish()
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("hooks", &self.hooks).field("sha256", &self.sha256).finish()
    }
}

fn refused(reason: impl Into<String>) -> LoadError {
    LoadError::Wasm { what: "Wasm module".into(), reason: reason.into() }
}

impl Engine {
    /// An engine whose compiled modules are cached in `cache_dir` (created if missing), or not
    /// cached with `None`. The epoch ticker thread starts with the first [`Engine::compile`].
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Engine, LoadError> {
        let engine_error =
            |e: wasmtime::Error| LoadError::Wasm { what: "the Wasm engine".into(), reason: format!("{e:#}") };
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .strategy(wasmtime::Strategy::Cranelift)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .concurrency_support(false);
        let engine = wasmtime::Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).map_err(engine_error)?;
        if let Some(dir) = &cache_dir {
            fs::create_dir_all(dir).map_err(|e| LoadError::Wasm {
                what: format!("module cache {}", dir.display()),
                reason: format!("cannot create it ({e}); fix its permissions or choose another directory"),
            })?;
        }
        let mut hasher = DefaultHasher::new(); // fixed keys: the same value in every run
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        Ok(Engine { inner: Arc::new(Inner { engine, linker, cache_dir, compat, ticker: std::sync::Once::new() }) })
    }

    /// The process's engine, created on first use with its cache in
    /// `$XDG_CACHE_HOME/sluice/modules` (or `~/.cache/sluice/modules`), or without a disk cache
    /// when neither can be created.
    pub fn global() -> &'static Engine {
        static GLOBAL: OnceLock<Engine> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let dir = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .map(|base| base.join("sluice").join("modules"));
            match dir.map(|dir| Engine::new(Some(dir))) {
                Some(Ok(engine)) => engine,
                other => {
                    if let Some(Err(e)) = other {
                        warn!(error = %e, "No module cache; rules are compiled at every start.");
                    }
                    #[allow(clippy::expect_used)] // a fixed, valid configuration: failing is a build defect
                    Engine::new(None).expect("the Wasm engine's configuration is valid")
                }
            }
        })
    }

    /// The cache directory, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.cache_dir.as_deref()
    }

    /// The wasmtime engine.
    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// Checks a rule module (ABI marker, exports, import allowlist), then compiles it or loads
    /// its code from the cache.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, LoadError> {
        self.inner.ticker.call_once(|| spawn_ticker(&self.inner.engine));
        let hooks = check(wasm)?;
        let sha256 = hex::encode(Sha256::digest(wasm));
        let cache = self.cache_path(&sha256);
        let cached = cache.as_deref().and_then(|path| self.load_cached(path));
        let from_cache = cached.is_some();
        let module = match cached {
            Some(module) => module,
            None => {
                let module = Module::from_binary(&self.inner.engine, wasm)
                    .map_err(|e| refused(format!("does not compile: {e:#}")))?;
                if let Some(path) = &cache {
                    store_cached(path, &module);
                }
                module
            }
        };
        let pre = self.inner.linker.instantiate_pre(&module).map_err(|e| refused(format!("does not link: {e:#}")))?;
        Ok(Compiled { engine: self.inner.engine.clone(), pre, hooks, sha256, from_cache })
    }

    /// The cache file for a module, if the engine has a cache.
    pub fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.inner.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.inner.compat)))
    }

    fn load_cached(&self, path: &Path) -> Option<Module> {
        let bytes = fs::read(path).ok()?;
        let Some((code, sum)) = bytes.split_last_chunk::<32>() else {
            debug!(path = %path.display(), "Cache entry too short; compiling.");
            return None;
        };
        if Sha256::digest(code).as_slice() != sum {
            debug!(path = %path.display(), "Cache entry does not match its checksum; compiling.");
            return None;
        }
        // SAFETY: `Module::deserialize` trusts its input to be wasmtime's own output. These
        // bytes are: the file lives in our cache directory, was written by `store_cached` from
        // `Module::serialize` (write-then-rename, so never half-written), its name carries the
        // SHA-256 of the module's source and the engine's compatibility hash, and the SHA-256 of
        // the bytes themselves was checked just above, so a truncated or altered file is
        // recompiled, never loaded. An entry from another wasmtime version or configuration is
        // refused by wasmtime's own header check with an `Err`.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(&self.inner.engine, code) };
        match module {
            Ok(module) => Some(module),
            Err(e) => {
                debug!(path = %path.display(), error = %e, "Cache entry refused; compiling.");
                None
            }
        }
    }
}

/// Writes a cache entry: the serialized code, then its SHA-256, to a temporary file renamed
/// into place. Failures only cost a compilation next time.
fn store_cached(path: &Path, module: &Module) {
    let mut bytes = match module.serialize() {
        Ok(bytes) => bytes,
        Err(e) => return debug!(error = %e, "Cannot serialize a module for the cache."),
    };
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    let tmp = path.with_extension(format!("{}.{:x}.tmp", std::process::id(), rand::random::<u64>()));
    let written = fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        debug!(path = %path.display(), error = %e, "Cannot write a module cache entry.");
    }
}

/// Advances the engine's epoch every [`TICK`] until the engine is dropped.
fn spawn_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        }
    });
    if let Err(e) = spawned {
        // Without a ticker no deadline fires; a looping rule would hang its thread.
        warn!(error = %e, "Cannot start the epoch thread; rule deadlines are not enforced.");
    }
}

/// Prints a function type as the allowlist writes it: `(i32, i32) -> i64`.
fn signature(ty: &FuncType) -> String {
    let list = |types: &[wasmparser::ValType]| types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    let results = match ty.results() {
        [] => "()".to_string(),
        [one] => one.to_string(),
        many => format!("({})", list(many)),
    };
    format!("({}) -> {results}", list(ty.params()))
}

const FIX_ABI: &str = "rebuild it against sluice-sdk (Rust) or @sluice/sdk (AssemblyScript) for ABI v1";
const ALLOWLIST: &str = "rules may only import sluice1.* and env.abort, env.trace, env.seed, env.Date.now";

/// Why an import is refused, naming the fix.
fn refuse_import(module: &str, name: &str, ty: &TypeRef, types: &[Option<FuncType>]) -> Option<String> {
    let what = format!("imports {module}.{name}");
    let func = match ty {
        TypeRef::Func(i) | TypeRef::FuncExact(i) => types.get(*i as usize).cloned().flatten(),
        TypeRef::Memory(_) => {
            return Some(format!(
                "{what} as a memory: a rule defines and exports its own memory (AssemblyScript: drop --importMemory)"
            ));
        }
        _ => return Some(format!("{what}, which is not a function: {ALLOWLIST}")),
    };
    if module.starts_with("wasi") {
        return Some(format!(
            "{what}: rules get no WASI — build for wasm32-unknown-unknown, not wasm32-wasip1 \
             (AssemblyScript: do not use the WASI shim)"
        ));
    }
    if let Some(v) = module.strip_prefix("sluice").filter(|v| *v != "1" && v.parse::<u32>().is_ok()) {
        return Some(format!("{what}: built for ABI v{v}; this gateway speaks ABI v1 — {FIX_ABI}"));
    }
    let Some((_, _, expected)) = ALLOWED_IMPORTS.iter().find(|(m, n, _)| *m == module && *n == name) else {
        return Some(if module == abi::IMPORT_MODULE {
            format!("{what}, which ABI v1 does not define (it has get, get_i64, set, set_i64, config, log) — {FIX_ABI}")
        } else {
            format!("{what}: {ALLOWLIST} (remove the import, or the library that needs it)")
        });
    };
    let found = func.as_ref().map_or_else(|| "?".to_string(), signature);
    (found != *expected).then(|| format!("{what} as {found}, but ABI v1 defines {expected} — {FIX_ABI}"))
}

/// Checks a module against ABI v1 without compiling it; returns the hooks it exports.
pub(crate) fn check(wasm: &[u8]) -> Result<Vec<&'static str>, LoadError> {
    let not_wasm = |e: wasmparser::BinaryReaderError| refused(format!("not a valid WebAssembly module: {e}"));
    let mut types: Vec<Option<FuncType>> = Vec::new();
    let mut funcs: Vec<u32> = Vec::new(); // the type of every function, imports first
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(not_wasm)? {
            Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                return Err(refused(
                    "a component, not a core module: rules are core modules — build for wasm32-unknown-unknown with the Sluice SDK",
                ));
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.map_err(not_wasm)?.into_types() {
                        types.push(match sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(f),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(not_wasm)?;
                    if let Some(reason) = refuse_import(import.module, import.name, &import.ty, &types) {
                        return Err(refused(reason));
                    }
                    if let TypeRef::Func(t) | TypeRef::FuncExact(t) = import.ty {
                        funcs.push(t);
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    funcs.push(ty.map_err(not_wasm)?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(not_wasm)?;
                    exports.push((export.name.to_string(), export.kind, export.index));
                }
            }
            _ => {}
        }
    }
    let export = |name: &str| exports.iter().find(|(n, _, _)| n == name);
    if export(abi::EXPORT_MARKER).is_none() {
        let other = exports.iter().find_map(|(n, _, _)| n.strip_prefix("sluice_abi_v"));
        return Err(refused(match other {
            Some(v) => format!("built for ABI v{v}; this gateway speaks ABI v1 — {FIX_ABI}"),
            None => format!(
                "no marker export {}: not a Sluice rule — build it with the Sluice SDK \
                 (Rust: sluice_sdk::export_rule!; AssemblyScript: @sluice/sdk)",
                abi::EXPORT_MARKER
            ),
        }));
    }
    match export("memory") {
        Some((_, ExternalKind::Memory, _)) => {}
        _ => return Err(refused("no memory export named \"memory\": a rule must export its linear memory")),
    }
    if export(hook::INIT).is_none() {
        return Err(refused(format!("no export {}: every rule has one — {FIX_ABI}", hook::INIT)));
    }
    let mut hooks = Vec::new();
    for hook in Hook::ALL {
        let Some((_, kind, index)) = export(hook.export()) else { continue };
        let ty = (*kind == ExternalKind::Func)
            .then(|| funcs.get(*index as usize))
            .flatten()
            .and_then(|t| types.get(*t as usize).cloned().flatten());
        let found = ty.as_ref().map_or_else(|| "not a function".to_string(), signature);
        if found != "() -> i32" {
            return Err(refused(format!("exports {} as {found}; every hook is () -> i32 — {FIX_ABI}", hook.export())));
        }
        if hook != Hook::Init {
            hooks.push(hook.name());
        }
    }
    Ok(hooks)
}
