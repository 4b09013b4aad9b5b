//! `sluice rule inspect` and `sluice rule test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;
use sluice_sdk::abi::section;

use crate::rules::package::{self, Package};
use crate::rules::source::{RULE_YAML, RuleSource, read_vectors};
use crate::rules::vectors::{Vector, run_package_vectors};
use crate::rules::{Engine, Limits, WasmRule};

/// `sluice rule inspect FILE`.
pub(crate) fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let sections = package::sections(&bytes)
        .map_err(|reason| anyhow::anyhow!("{}: not a WebAssembly module ({reason})", file.display()))?;
    let size_of =
        |name: &str| sections.iter().filter(|s| s.name.as_deref() == Some(name)).map(|s| s.whole.len()).sum::<usize>();
    let (manifest_size, vectors_size) = (size_of(section::MANIFEST), size_of(section::VECTORS));
    println!("file:      {}", file.display());
    println!(
        "size:      {} bytes (module {}, manifest {}, vectors {})",
        bytes.len(),
        bytes.len() - manifest_size - vectors_size,
        manifest_size,
        vectors_size
    );
    println!("sha256:    {}", package::sha256_hex(&bytes));
    match crate::rules::signature::signature_of(&bytes) {
        Ok(None) => println!("signed:    no"),
        Ok(Some(s)) if s.valid => println!("signed:    by {} (key {}), valid", s.key.signer, s.key.id()),
        Ok(Some(s)) => println!("signed:    by {} (key {}), INVALID: changed after signing", s.key.signer, s.key.id()),
        Err(reason) => println!("signed:    INVALID: {reason}"),
    }
    let package = Package::from_bytes(bytes.clone(), &file.display().to_string());
    match &package {
        Ok(p) => {
            let m = &p.manifest;
            println!("name:      {}", m.name);
            println!("version:   {}", m.version);
            println!("abi:       {}", m.abi);
            println!("language:  {}", m.language);
            if !m.description.is_empty() {
                println!("about:     {}", m.description);
            }
            println!("hooks:     {} (exported: {})", m.hooks.join(", "), p.exported_hooks().join(", "));
            if !m.config.is_empty() {
                println!("config:");
                for (key, spec) in &m.config {
                    println!("  {key} ({}): {}", spec.kind, spec.description);
                }
            }
            if !m.defaults.is_null() {
                println!("defaults:  {}", m.defaults);
            }
            println!(
                "limits:    memory {}, timeout {}, recycle after {} calls",
                m.limits.memory.as_deref().unwrap_or("default"),
                m.limits.timeout.as_deref().unwrap_or("default"),
                m.limits.recycle_after_calls.map_or("default".to_string(), |n| n.to_string())
            );
            println!("vectors:   {}", p.vectors.len());
            for v in &p.vectors {
                println!("  - {} ({})", v.name, v.hook.name());
            }
        }
        Err(e) => println!("package:   no ({e})"),
    }
    let imports = package::imports(&bytes).with_context(|| format!("reading the imports of {}", file.display()))?;
    println!("imports:");
    for (module, name, kind) in &imports {
        println!("  {module}.{name} ({kind})");
    }
    let exports = package::exports(&bytes).with_context(|| format!("reading the exports of {}", file.display()))?;
    println!("exports:   {}", exports.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "));
    Ok(if package.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Builds a rule from a config, or says why not.
type LoadFn = Box<dyn Fn(&sluice_sdk::Config) -> Result<Box<dyn sluice_sdk::Rule>, String>>;

/// What `sluice rule test` runs: a rule constructor, its default config and its vectors.
struct Target {
    label: String,
    defaults: Value,
    vectors: Vec<Vector>,
    load: LoadFn,
}

/// The target, with the vectors of `--vectors FILE` instead of its own when given (and, for a
/// builtin given a `rule.yaml`, that file's config defaults).
fn resolve_with_vectors(target: &str, vectors: Option<PathBuf>) -> anyhow::Result<Target> {
    let mut t = resolve(target)?;
    if let Some(path) = vectors {
        t.vectors = read_vectors(&path)?;
        if t.label.starts_with("builtin:") && path.file_name().is_some_and(|n| n == RULE_YAML) {
            t.defaults = RuleSource::read(&path)?.manifest.defaults;
        }
    }
    Ok(t)
}

/// `sluice rule test FILE|DIR|builtin:NAME [--vectors FILE]`.
pub(crate) fn test(target: &str, vectors: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let t = resolve_with_vectors(target, vectors)?;
    if t.vectors.is_empty() {
        bail!("{} has no test vectors; add vectors: to rule.yaml or pass --vectors FILE", t.label);
    }
    let failures = run_package_vectors(&t.load, &t.defaults, &t.vectors);
    for v in &t.vectors {
        match failures.iter().find(|f| f.vector == v.name) {
            None => println!("ok    {}", v.name),
            Some(f) => println!("FAIL  {}: {}", v.name, f.message),
        }
    }
    println!("{}: {} passed, {} failed", t.label, t.vectors.len() - failures.len(), failures.len());
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `sluice rule bench`: nanoseconds per call of each hook, on this thread, over the vectors'
/// inputs (each vector with its own config); prints the median, fastest and slowest vector of
/// each hook.
pub(crate) fn bench(target: &str, vectors: Option<PathBuf>, calls: u32) -> anyhow::Result<ExitCode> {
    let t = resolve_with_vectors(target, vectors)?;
    if t.vectors.is_empty() {
        bail!("{} has no test vectors to take inputs from; pass --vectors FILE", t.label);
    }
    let calls = calls.max(1);
    let mut per_hook: std::collections::BTreeMap<&'static str, Vec<f64>> = Default::default();
    for v in &t.vectors {
        let config = match &v.config {
            Some(c) => crate::rules::vectors::merge(&t.defaults, c),
            None => t.defaults.clone(),
        };
        let refused =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: the rule refused the vector's config: {e}", v.name);
        let config = crate::rules::vectors::json_config(&config).map_err(|e| refused(&e))?;
        let rule = (t.load)(&config).map_err(|e| refused(&e))?;
        let call = v.prepare().map_err(|e| anyhow::anyhow!("{}: {e}", v.name))?;
        for _ in 0..1_000 {
            call.call(rule.as_ref());
        }
        let start = std::time::Instant::now();
        for _ in 0..calls {
            call.call(rule.as_ref());
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(calls);
        per_hook.entry(call.hook().name()).or_default().push(ns);
    }
    println!("{}: ns per call ({calls} calls per vector, one thread)", t.label);
    println!("{:<13} {:>8} {:>10} {:>10} {:>10}", "hook", "vectors", "median", "fastest", "slowest");
    for (hook, mut ns) in per_hook {
        ns.sort_by(f64::total_cmp);
        let median = ns[ns.len() / 2];
        println!("{hook:<13} {:>8} {median:>10.0} {:>10.0} {:>10.0}", ns.len(), ns[0], ns[ns.len() - 1]);
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(target: &str) -> anyhow::Result<Target> {
    if let Some(name) = target.strip_prefix("builtin:") {
        let Some(builtin) = crate::rules::builtin(name) else {
            let names: Vec<_> = crate::rules::BUILTINS.iter().map(|b| format!("builtin:{}", b.name)).collect();
            bail!("{target} is not a builtin rule; use one of: {}", names.join(", "));
        };
        return Ok(Target {
            label: target.into(),
            defaults: Value::Null,
            vectors: Vec::new(),
            load: Box::new(builtin.init),
        });
    }
    let path = Path::new(target);
    let (package, vectors) = if path.is_dir() {
        let source = RuleSource::read(&path.join(RULE_YAML))?;
        let built = path.join("build").join(crate::rules::package::file_name(&source.manifest.name));
        if !built.is_file() {
            bail!("{} does not exist; build it first with `sluice rule build {}`", built.display(), path.display());
        }
        (Package::read(&built)?, source.vectors)
    } else {
        let package = Package::read(path)?;
        let vectors = package.vectors.clone();
        (package, vectors)
    };
    let limits = Limits::resolve(None, &package.manifest.limits).with_context(|| package.file.clone())?;
    let engine = Engine::global();
    let compiled = engine.compile(&package.wasm)?;
    let (name, version) = (package.manifest.name.clone(), package.manifest.version.clone());
    Ok(Target {
        label: format!("{} {}", name, version),
        defaults: package.manifest.defaults.clone(),
        vectors,
        load: Box::new(move |c| {
            WasmRule::new(engine, &compiled, &name, &version, c, limits.clone())
                .map(|r| Box::new(r) as Box<dyn sluice_sdk::Rule>)
                .map_err(|e| e.to_string())
        }),
    })
}
