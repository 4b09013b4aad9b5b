//! `sluice rule build` and `sluice rule pack`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};

use crate::rules::package::{self, Package};
use crate::rules::source::{Language, RULE_YAML, RuleSource};
use crate::rules::{Engine, Limits, load_package};

/// `sluice rule build DIR [--out FILE]`.
pub(crate) fn build(dir: &Path, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let source = RuleSource::read(&dir.join(RULE_YAML))?;
    let raw = match source.language {
        Language::Rust => cargo_build(dir)?,
        Language::AssemblyScript => npm_build(dir)?,
    };
    let wasm = std::fs::read(&raw).with_context(|| format!("reading the compiled module {}", raw.display()))?;
    let wasm = package::strip_debug(&wasm)
        .map_err(|reason| anyhow::anyhow!("{}: not a WebAssembly module ({reason})", raw.display()))?;
    let out = out.unwrap_or_else(|| dir.join("build").join(crate::rules::package::file_name(&source.manifest.name)));
    let package = write_package(&wasm, &source, &out)?;
    verify(&package)
}

/// `sluice rule pack WASM --manifest rule.yaml [--out FILE]`.
pub(crate) fn pack(wasm: &Path, manifest: &Path, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let source = RuleSource::read(manifest)?;
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let out = out.unwrap_or_else(|| {
        wasm.parent().unwrap_or(Path::new(".")).join(crate::rules::package::file_name(&source.manifest.name))
    });
    write_package(&bytes, &source, &out)?;
    Ok(ExitCode::SUCCESS)
}

/// Packs and writes a package, then prints its path, size and sha256.
fn write_package(wasm: &[u8], source: &RuleSource, out: &Path) -> anyhow::Result<Package> {
    let bytes = package::pack(wasm, &source.manifest, &source.vectors)?;
    if let Some(folder) = out.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    // Write then rename, so that a watching gateway never sees half a file.
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    let package = Package::from_bytes(bytes, &out.display().to_string())?;
    println!(
        "{}: {} {} ({} bytes, sha256 {})",
        out.display(),
        package.manifest.name,
        package.manifest.version,
        package.wasm.len(),
        package.sha256
    );
    Ok(package)
}

/// Loads the package through the runtime (compile, init with its defaults) and runs its
/// vectors, as the gateway does before it lets a package serve.
pub(crate) fn verify(package: &Package) -> anyhow::Result<ExitCode> {
    let limits = Limits::resolve(None, &package.manifest.limits).with_context(|| package.file.clone())?;
    match load_package(package, Engine::global(), &package.manifest.defaults, limits) {
        Ok(_) => {
            println!("{} test vector(s) pass.", package.vectors.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("sluice rule: {e}");
            eprintln!("The package was written, but a gateway will refuse it until this is fixed.");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `cargo build --release --target wasm32-unknown-unknown` and the cdylib it produced.
fn cargo_build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("{} is missing; a Rust rule project has Cargo.toml beside rule.yaml", manifest.display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running cargo; install Rust from https://rustup.rs")?;
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let mut found: Option<(bool, PathBuf)> = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let cdylib = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"));
            let wasm = msg["filenames"]
                .as_array()
                .and_then(|f| f.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm")).map(PathBuf::from));
            if let (true, Some(wasm)) = (cdylib, wasm) {
                let ours = msg["manifest_path"].as_str().is_some_and(|m| Path::new(m) == manifest);
                if ours || !found.as_ref().is_some_and(|(o, _)| *o) {
                    found = Some((ours, wasm));
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo build failed (see above); if the target is missing: rustup target add wasm32-unknown-unknown");
    }
    match found {
        Some((_, wasm)) => Ok(wasm),
        None => {
            bail!("cargo built no .wasm; set crate-type = [\"cdylib\", \"rlib\"] under [lib] in {}", manifest.display())
        }
    }
}

/// `npm install` (once) and `npm run asbuild`, which writes `build/rule.raw.wasm`.
fn npm_build(dir: &Path) -> anyhow::Result<PathBuf> {
    let package_json = dir.join("package.json");
    let text = std::fs::read_to_string(&package_json).with_context(|| {
        format!("reading {}; an AssemblyScript rule project has package.json", package_json.display())
    })?;
    let scripts: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", package_json.display()))?;
    if scripts["scripts"]["asbuild"].is_null() {
        bail!("{} has no \"asbuild\" script; add one that writes build/rule.raw.wasm", package_json.display());
    }
    let npm = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("npm")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .context("running npm; install Node.js 20 or later")?;
        if !status.success() {
            bail!("npm {} failed in {} (see above)", args.join(" "), dir.display());
        }
        Ok(())
    };
    if !dir.join("node_modules").is_dir() {
        npm(&["install", "--no-audit", "--no-fund"])?;
    }
    npm(&["run", "asbuild"])?;
    let raw = dir.join("build").join("rule.raw.wasm");
    if !raw.is_file() {
        bail!("npm run asbuild wrote no {}; make the asbuild script write it", raw.display());
    }
    Ok(raw)
}
