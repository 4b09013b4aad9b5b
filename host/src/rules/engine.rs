//! The Wasm engine: one wasmtime `Engine` for the process, the `Linker` with the ABI's imports,
//! the epoch ticker, and the compilation of rule modules (checked first, cached on disk).
//!
//! [`Engine::compile`] never runs on the request path. It checks the module against ABI v1
//! before compiling it (`abi::check`), so that a module built for the wrong target or ABI is
//! refused with a message that names the fix rather than a link error.
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
use tracing::{debug, warn};
use wasmtime::{InstancePre, Linker, Module};

use super::LoadError;
use super::abi::{AbiError, HostState, add_to_linker, check};

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

/// Why the Wasm runtime refused a module, or could not start or run one.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The module is not a rule of ABI v1.
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// wasmtime cannot compile it.
    #[error("does not compile: {0:#}")]
    Compile(wasmtime::Error),
    /// It does not link against the ABI's imports.
    #[error("does not link: {0:#}")]
    Link(wasmtime::Error),
    /// The engine cannot be configured.
    #[error("{0:#}")]
    Engine(wasmtime::Error),
    /// The module cache folder cannot be created.
    #[error("cannot create it ({0}); fix its permissions or choose another directory")]
    CacheDir(std::io::Error),
    /// The module was compiled by another engine than the one asked to run it.
    #[error("was compiled by another engine")]
    OtherEngine,
    /// `sluice_init` trapped, or an instance could not start.
    #[error("sluice_init failed: {reason}{hint}", hint = memory_hint(.reason))]
    Init {
        /// The trap, as wasmtime or the rule put it.
        reason: String,
    },
    /// `sluice_init` did not finish in time.
    #[error("sluice_init did not finish within {0:?} (limits.timeout)")]
    InitTimeout(Duration),
}

/// The fix of a failure that looks like the memory cap.
fn memory_hint(reason: &str) -> &'static str {
    if reason.contains("memory") && reason.contains("limit") { " (raise limits.memory)" } else { "" }
}

/// A refusal of the module being compiled.
fn refused(error: impl Into<WasmError>) -> LoadError {
    LoadError::Wasm { what: "Wasm module".into(), error: error.into() }
}

impl Engine {
    /// An engine whose compiled modules are cached in `cache_dir` (created if missing), or not
    /// cached with `None`. The epoch ticker thread starts with the first [`Engine::compile`].
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Engine, LoadError> {
        let engine_error = |e| LoadError::Wasm { what: "the Wasm engine".into(), error: WasmError::Engine(e) };
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
                error: WasmError::CacheDir(e),
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
        let hooks = check(wasm).map_err(refused)?;
        let sha256 = hex::encode(Sha256::digest(wasm));
        let cache = self.cache_path(&sha256);
        let cached = cache.as_deref().and_then(|path| self.load_cached(path));
        let from_cache = cached.is_some();
        let module = match cached {
            Some(module) => module,
            None => {
                let module =
                    Module::from_binary(&self.inner.engine, wasm).map_err(|e| refused(WasmError::Compile(e)))?;
                if let Some(path) = &cache {
                    store_cached(path, &module);
                }
                module
            }
        };
        let pre = self.inner.linker.instantiate_pre(&module).map_err(|e| refused(WasmError::Link(e)))?;
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
