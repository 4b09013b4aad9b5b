//! Building a [`Chain`] from the config: which rules, in which order, and loading each one.
//!
//! The chain is: every package in `rules_dir` that no `rules:` entry names (file-name order,
//! each with its manifest `defaults`), then the `rules:` entries in order (an empty list means
//! `builtin:emqx`). An entry is `builtin:NAME`, a package path (relative to the config file's
//! folder) or a package name found in `rules_dir`. A package is read, checked against its pin,
//! compiled, initialised with its manifest `defaults` overlaid by the entry's `config`, and run
//! against its own test vectors before it may serve.
//!
//! The same code serves start-up, `sluice check` and hot reload: [`build`] takes the chain
//! that is serving (if any), reuses every rule whose package bytes, config and limits are
//! unchanged (so its instances and counters survive), and on a failure keeps the old version
//! of that slot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tracing::warn;

use super::Limits;
use super::chain::{Chain, LoadError, Loaded, RuleInfo};
use super::oci;
use super::package::{self, Package};
use super::signature::{Detached, Trust};
use super::vectors::{json_config, merge, run_package_vectors};
use super::{Engine, WasmRule};
use crate::config::{Config, RuleConfig, flatten};

/// Where one slot of the chain comes from.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// `builtin:NAME`.
    Builtin(String),
    /// A package file.
    Package(PathBuf),
    /// A package in an OCI registry (`oci://…`).
    Registry(String),
    /// An entry that names nothing loadable; the reason.
    Unresolved(MissingPackage),
}

/// One planned slot of the chain.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The slot's identity across reloads.
    pub slot: String,
    pub origin: Origin,
    /// The entry, when the config names this rule (none: an unnamed package of `rules_dir`).
    pub entry: Option<RuleConfig>,
}

/// What changed between two chain versions.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new slot.
    Added(RuleInfo),
    /// A slot now runs another build or config.
    Swapped {
        /// What served before.
        old: RuleInfo,
        /// What serves now.
        new: RuleInfo,
    },
    /// A slot is gone.
    Removed(RuleInfo),
    /// A slot's new version failed; `kept` is the version that keeps serving, if any.
    Refused {
        /// The slot.
        slot: String,
        /// The file, when it is a package.
        file: Option<PathBuf>,
        /// Why.
        reason: String,
        /// The old version that keeps serving.
        kept: Option<RuleInfo>,
    },
}

/// The rules folder, resolved against the config file's folder.
pub fn rules_dir(config: &Config, config_dir: Option<&Path>) -> Option<PathBuf> {
    let dir = config.rules_dir.as_ref()?;
    Some(match config_dir {
        Some(base) if dir.is_relative() => base.join(dir),
        _ => dir.clone(),
    })
}

/// Loads the chain a config describes (start-up, and `sluice check`): every slot is loaded
/// (read, pinned, compiled, initialised, its vectors run); every failing `rules:` entry is in
/// the error, with its index; a failing unnamed package of `rules_dir` is logged and left out.
pub fn load_chain(config: &Config, config_dir: Option<&Path>, engine: &Engine) -> Result<Chain, ChainError> {
    let mut rules = Vec::new();
    let mut failed = Vec::new();
    let mut entries = 0..;
    let ctx = LoadContext::new(config, config_dir);
    for spec in plan(config, config_dir) {
        let entry = spec.entry.is_some().then(|| entries.next().unwrap_or_default());
        match (load(&spec, engine, None, &ctx), entry) {
            (Ok(loaded), _) => rules.push(loaded),
            (Err(error), Some(entry)) => failed.push(EntryError { entry, error }),
            (Err(error), None) => {
                warn!(rule = %spec.slot, reason = %error, "Rule refused; the others serve without it.");
            }
        }
    }
    if failed.is_empty() { Ok(Chain::from_loaded(rules)) } else { Err(ChainError(failed)) }
}

/// The `rules:` entries that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ChainError(pub Vec<EntryError>);

/// One `rules:` entry that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("rules.{entry}: {error}")]
pub struct EntryError {
    /// Its index in `rules:`.
    pub entry: usize,
    /// Why.
    pub error: LoadError,
}

/// A path rather than a package name: `acme/senml` is a (namespaced) name unless a file of
/// that path exists.
fn looks_like_path(rule: &str, config_dir: Option<&Path>) -> bool {
    let path = match config_dir {
        Some(base) if Path::new(rule).is_relative() => base.join(rule),
        _ => PathBuf::from(rule),
    };
    if package::is_rule_name(rule) && !path.exists() {
        return false;
    }
    rule.contains('/') || rule.contains('\\') || rule.ends_with(".wasm")
}

/// Decides the slots of the chain.
pub(crate) fn plan(config: &Config, config_dir: Option<&Path>) -> Vec<Spec> {
    let dir = rules_dir(config, config_dir);
    let files = dir.as_deref().and_then(|d| package::package_files(d).ok()).unwrap_or_default();
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let mut claimed: Vec<PathBuf> = Vec::new();
    let mut slots: HashMap<String, usize> = HashMap::new();
    let mut entries = Vec::new();
    for entry in config.rule_chain() {
        let n = slots.entry(entry.rule.clone()).or_insert(0);
        *n += 1;
        let slot = if *n == 1 { entry.rule.clone() } else { format!("{}#{n}", entry.rule) };
        let origin = if let Some(name) = entry.rule.strip_prefix("builtin:") {
            Origin::Builtin(name.into())
        } else if entry.rule.starts_with("oci://") {
            Origin::Registry(entry.rule.clone())
        } else if looks_like_path(&entry.rule, config_dir) {
            let path = match config_dir {
                Some(base) if Path::new(&entry.rule).is_relative() => base.join(&entry.rule),
                _ => PathBuf::from(&entry.rule),
            };
            claimed.push(path.clone());
            Origin::Package(path)
        } else {
            match find_by_name(&entry.rule, dir.as_deref(), &files) {
                Ok(path) => {
                    claimed.push(path.clone());
                    Origin::Package(path)
                }
                Err(reason) => Origin::Unresolved(reason),
            }
        };
        entries.push(Spec { slot, origin, entry: Some(entry) });
    }
    // One rule name runs once: a package of rules_dir that no entry names, whose manifest
    // name is that of a package already in the chain (named by an entry, or earlier in
    // file-name order), is refused — two copies of one rule would both run.
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in &claimed {
        if let Ok(p) = Package::read(path) {
            names.entry(p.manifest.name).or_insert_with(|| path.clone());
        }
    }
    let mut specs: Vec<Spec> = Vec::new();
    for f in files.iter().filter(|f| !claimed.iter().any(|c| same(c, f))) {
        // The slot is the file's canonical path, so that it is the same whether the folder was
        // reached through a relative or an absolute path.
        let file = f.canonicalize().unwrap_or_else(|_| f.clone());
        let origin = match Package::read(&file).map(|p| p.manifest.name) {
            Ok(name) => match names.get(&name) {
                Some(first) => {
                    Origin::Unresolved(MissingPackage::Duplicate { name, file: file.clone(), first: first.clone() })
                }
                None => {
                    names.insert(name, file.clone());
                    Origin::Package(file.clone())
                }
            },
            // Loading it reports what is wrong with it.
            Err(_) => Origin::Package(file.clone()),
        };
        specs.push(Spec { slot: file.display().to_string(), origin, entry: None });
    }
    specs.extend(entries);
    specs
}

/// Why a `rules:` entry names no package file; each names the fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MissingPackage {
    /// A package name, but no `rules_dir` to find it in.
    #[error(
        "names a package but no rules_dir is set; set rules_dir, write a path like rules/{0}.wasm, or use builtin:emqx"
    )]
    NoRulesDir(String),
    /// No package of that name in `rules_dir`.
    #[error("no package named {name} in {}; copy {name}.wasm there or fix the name", .dir.display())]
    NotInRulesDir {
        /// The name.
        name: String,
        /// The folder.
        dir: PathBuf,
    },
    /// A package path with no file.
    #[error("{} does not exist; build the rule or fix the path", .0.display())]
    NoFile(PathBuf),
    /// A package of rules_dir with the name of one already in the chain.
    #[error(
        "{} is rule {name} too, like {}, which runs; two packages of one name would both run: remove one, or rename one (a publisher in the name keeps two publishers' rules apart: acme/senml)",
        .file.display(), .first.display()
    )]
    Duplicate {
        /// The rule name.
        name: String,
        /// The package refused.
        file: PathBuf,
        /// The package of that name that runs.
        first: PathBuf,
    },
}

/// The package of `rules_dir` named `name`: `NAME.wasm`, else the one whose manifest says so.
fn find_by_name(name: &str, dir: Option<&Path>, files: &[PathBuf]) -> Result<PathBuf, MissingPackage> {
    let Some(dir) = dir else { return Err(MissingPackage::NoRulesDir(name.into())) };
    let direct = dir.join(package::file_name(name));
    if direct.is_file() {
        return Ok(direct);
    }
    for file in files {
        if Package::read(file).is_ok_and(|p| p.manifest.name == name) {
            return Ok(file.clone());
        }
    }
    Err(MissingPackage::NotInRulesDir { name: name.into(), dir: dir.to_path_buf() })
}

/// Builds the chain for `config` aside from `previous` (the serving chain, if any). Returns it
/// with what changed. A slot that fails keeps its previous version; a failing slot with no
/// previous version is an error for a `rules:` entry and is left out for an unnamed package.
pub(crate) fn build(
    config: &Config,
    config_dir: Option<&Path>,
    engine: &Engine,
    previous: Option<&Chain>,
) -> Result<(Chain, Vec<Change>), LoadError> {
    let old: HashMap<&str, &Arc<Loaded>> =
        previous.map(|c| c.loaded().iter().map(|l| (l.info.slot.as_str(), l)).collect()).unwrap_or_default();
    let mut rules = Vec::new();
    let mut changes = Vec::new();
    let ctx = LoadContext::new(config, config_dir);
    for spec in plan(config, config_dir) {
        let before = old.get(spec.slot.as_str()).copied();
        match load(&spec, engine, before, &ctx) {
            Ok(loaded) => {
                match before {
                    None => changes.push(Change::Added(loaded.info.clone())),
                    Some(b) if !Arc::ptr_eq(b, &loaded) => {
                        changes.push(Change::Swapped { old: b.info.clone(), new: loaded.info.clone() })
                    }
                    Some(_) => {}
                }
                rules.push(loaded);
            }
            Err(error) => {
                let file = match &spec.origin {
                    Origin::Package(p) => Some(p.clone()),
                    _ => None,
                };
                let reason = error.to_string();
                match before {
                    Some(b) => {
                        changes.push(Change::Refused { slot: spec.slot, file, reason, kept: Some(b.info.clone()) });
                        rules.push(b.clone());
                    }
                    None if spec.entry.is_some() => return Err(error),
                    None => changes.push(Change::Refused { slot: spec.slot, file, reason, kept: None }),
                }
            }
        }
    }
    if let Some(previous) = previous {
        for gone in previous.loaded() {
            if !rules.iter().any(|r| r.info.slot == gone.info.slot) {
                changes.push(Change::Removed(gone.info.clone()));
            }
        }
    }
    Ok((Chain::from_loaded(rules), changes))
}

/// What every slot of one load shares: the trust rules and how to reach registries.
pub(crate) struct LoadContext {
    trust: Trust,
    registry: crate::config::RegistryConfig,
    cache: PathBuf,
    docker_config: Option<PathBuf>,
}

impl LoadContext {
    pub(crate) fn new(config: &Config, config_dir: Option<&Path>) -> LoadContext {
        LoadContext {
            trust: config.trust.trust(),
            registry: config.registry.clone(),
            cache: config.registry.cache(config_dir),
            docker_config: config.registry.docker_config(config_dir),
        }
    }

    /// Pulls `reference` (or takes the cached copy when the registry is away).
    fn fetch(&self, reference: &str) -> Result<(Package, Vec<Detached>), LoadError> {
        let host = oci::parse_reference(reference)?.resolve_registry().to_string();
        let options = oci::RegistryOptions {
            insecure: self.registry.insecure.contains(&host),
            timeout: Some(self.registry.timeout),
            docker_config: self.docker_config.clone(),
            ..oci::RegistryOptions::default()
        };
        let got = oci::fetch_cached(reference, &options, &self.cache)?;
        if let oci::Fetched::Cache { digest, error } = &got.fetched {
            warn!(rule = %reference, %digest, cached = %got.file.display(), %error, "The registry did not answer; running the package cached for this reference.");
        }
        Ok((Package::from_bytes(got.wasm, reference)?, got.signatures))
    }
}

/// Loads one slot, reusing `before` when nothing it was built from changed.
fn load(
    spec: &Spec,
    engine: &Engine,
    before: Option<&Arc<Loaded>>,
    ctx: &LoadContext,
) -> Result<Arc<Loaded>, LoadError> {
    let entry_config = spec.entry.as_ref().map(|e| e.config.clone()).unwrap_or_default();
    match &spec.origin {
        Origin::Unresolved(reason) => Err(LoadError::NotFound { rule: spec.slot.clone(), reason: reason.clone() }),
        Origin::Builtin(name) => {
            let rule_name = format!("builtin:{name}");
            let config = flatten(&entry_config);
            let fingerprint = format!("{rule_name}|{:?}", config.entries());
            if let Some(b) = before.filter(|b| b.fingerprint == fingerprint) {
                return Ok(b.clone());
            }
            let rule = init_builtin(&rule_name, &config)?;
            let info = RuleInfo {
                name: rule_name,
                version: env!("CARGO_PKG_VERSION").into(),
                sha256: None,
                source: None,
                signer: None,
                slot: spec.slot.clone(),
            };
            Ok(Arc::new(Loaded::native(info, Arc::from(rule), fingerprint)))
        }
        Origin::Package(path) => {
            if !path.is_file() {
                return Err(LoadError::NotFound {
                    rule: spec.slot.clone(),
                    reason: MissingPackage::NoFile(path.clone()),
                });
            }
            let package = Package::read(path)?;
            load_checked(spec, engine, before, ctx, (package, &[]), path.clone(), &entry_config)
        }
        Origin::Registry(reference) => {
            let (package, signatures) = ctx.fetch(reference)?;
            let source = ctx.cache.join(format!("sha256-{}.wasm", package.sha256));
            load_checked(spec, engine, before, ctx, (package, &signatures), source, &entry_config)
        }
    }
}

/// A package read (from a file or a registry, with the registry's signatures of it): pinned,
/// trusted, limited, compiled.
fn load_checked(
    spec: &Spec,
    engine: &Engine,
    before: Option<&Arc<Loaded>>,
    ctx: &LoadContext,
    (package, signatures): (Package, &[Detached]),
    source: PathBuf,
    entry_config: &serde_yaml::Value,
) -> Result<Arc<Loaded>, LoadError> {
    if let Some(pin) = spec.entry.as_ref().and_then(|e| e.sha256.as_deref())
        && !pin.eq_ignore_ascii_case(&package.sha256)
    {
        return Err(LoadError::PinMismatch {
            file: package.file.clone(),
            expected: pin.to_ascii_lowercase(),
            actual: package.sha256.clone(),
        });
    }
    // Before anything of it runs (its vectors included), and again on every reload: the trust
    // config may have changed while the file did not.
    let signed = ctx.trust.check(&package.wasm, &package.file, signatures)?;
    let limits = Limits::resolve(spec.entry.as_ref().and_then(|e| e.limits.as_ref()), &package.manifest.limits)
        .map_err(|error| LoadError::Limits { rule: package.manifest.name.clone(), error })?;
    let entry_json = serde_json::to_value(entry_config)
        .map_err(|e| LoadError::ConfigFormat { rule: package.manifest.name.clone(), error: e.into() })?;
    let merged = merge(&package.manifest.defaults, &entry_json);
    // The signer is part of it: a signature attached in the registry later shows in /rules.
    let signer = signed.map(|s| s.describe());
    let fingerprint = format!("{}|{merged}|{limits:?}|{signer:?}", package.sha256);
    if let Some(b) = before.filter(|b| b.fingerprint == fingerprint) {
        return Ok(b.clone());
    }
    let rule = load_package(&package, engine, &merged, limits)?;
    let info = RuleInfo {
        name: package.manifest.name.clone(),
        version: package.manifest.version.clone(),
        sha256: Some(package.sha256.clone()),
        source: Some(source),
        signer,
        slot: spec.slot.clone(),
    };
    Ok(Arc::new(Loaded::wasm(info, Arc::new(rule), fingerprint)))
}

/// Initialises a builtin rule.
pub(crate) fn init_builtin(rule: &str, config: &sluice_sdk::Config) -> Result<Box<dyn sluice_sdk::Rule>, LoadError> {
    let name = rule.strip_prefix("builtin:").unwrap_or(rule);
    let Some(builtin) = super::builtin(name) else {
        let names: Vec<_> = super::BUILTINS.iter().map(|b| format!("builtin:{}", b.name)).collect();
        return Err(LoadError::UnknownBuiltin(rule.into(), names.join(", ")));
    };
    (builtin.init)(config).map_err(|reason| LoadError::Config { rule: rule.into(), reason })
}

/// Compiles a package, runs its vectors, and initialises it with `config` (JSON, defaults
/// already merged). The compile happens here, on the caller's thread: never a request task.
pub fn load_package(package: &Package, engine: &Engine, config: &Value, limits: Limits) -> Result<WasmRule, LoadError> {
    let name = &package.manifest.name;
    let version = &package.manifest.version;
    let compiled = engine.compile(&package.wasm)?;
    let failures = run_package_vectors(
        |c| {
            WasmRule::new(engine, &compiled, name, version, c, limits.clone())
                .map(|r| Box::new(r) as Box<dyn sluice_sdk::Rule>)
        },
        &package.manifest.defaults,
        &package.vectors,
    );
    if !failures.is_empty() {
        return Err(LoadError::Vectors { file: package.file.clone(), failures });
    }
    let config = json_config(config).map_err(|error| LoadError::ConfigFormat { rule: name.clone(), error })?;
    WasmRule::new(engine, &compiled, name, version, &config, limits)
}
