//! Rule packages: one `.wasm` file that carries its own manifest and test vectors.
//!
//! A package is an ordinary core WebAssembly module with two custom sections, both JSON:
//! [`sluice_sdk::abi::section::MANIFEST`] (a [`Manifest`]) and [`sluice_sdk::abi::section::VECTORS`] (a
//! list of [`Vector`]s). Custom sections are ignored by every Wasm runtime, so a package runs
//! as is; sharing a rule is copying one file. [`pack`] writes the sections (replacing old ones),
//! [`Package::read`] reads and checks them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_sdk::abi::section;

use super::module::append_custom;
pub use super::module::{Import, Section, exported_hooks, exports, imports, sections, strip_debug};
use super::vectors::Vector;
use crate::config::RuleLimitsConfig;

/// The manifest of a package: who the rule is and what it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The rule's name: lowercase letters, digits and `-`.
    pub name: String,
    /// Its version (semver by convention), shown in logs on every swap.
    pub version: String,
    /// The ABI major version it was built for.
    #[serde(default = "abi_major")]
    pub abi: u32,
    /// `rust` or `assemblyscript`.
    #[serde(default)]
    pub language: String,
    /// One line about what it does.
    #[serde(default)]
    pub description: String,
    /// The hooks it implements (`authenticate`, `route`, `authorize`, `uplink`, `downlink`).
    #[serde(default)]
    pub hooks: Vec<String>,
    /// The config keys it understands, for documentation and `sluice rule inspect`.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigKey>,
    /// The config it runs with when the gateway config gives none (same shape as YAML config).
    #[serde(default)]
    pub defaults: serde_json::Value,
    /// What one instance may use; the gateway config may override each value.
    #[serde(default)]
    pub limits: ManifestLimits,
}

fn abi_major() -> u32 {
    sluice_sdk::abi::ABI_MAJOR
}

/// One documented config key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigKey {
    /// `string`, `bool`, `int`, `list`, `map`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

/// Limits as written in a manifest or in `rules[].limits` (`memory: 16MiB`, `timeout: 10ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Linear memory cap per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Deadline per hook call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Recycle an instance after this many calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_after_calls: Option<u64>,
}

/// Why a package could not be read, packed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The file could not be read or written.
    #[error("{file}: {action}: {error}")]
    Io {
        /// The file.
        file: String,
        /// What was being done.
        action: &'static str,
        /// The OS error (in the message, not chained, so that it is printed once).
        error: std::io::Error,
    },
    /// Not a WebAssembly module at all.
    #[error("{file}: not a WebAssembly module ({reason}); give the .wasm file a rule build produced")]
    NotWasm {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A module without the manifest section.
    #[error("{file}: not a Sluice package: no sluice.manifest section; build it with `sluice rule build DIR`")]
    NoManifest {
        /// The file.
        file: String,
    },
    /// The manifest or vectors do not parse or are invalid.
    #[error("{file}: {what}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// `manifest`, `vectors`, `limits`, …
        what: &'static str,
        /// What is wrong, ending with the fix.
        reason: String,
    },
}

/// A package read from disk or memory, checked.
#[derive(Debug, Clone)]
pub struct Package {
    /// Where it came from (a path, or a label).
    pub file: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its test vectors.
    pub vectors: Vec<Vector>,
    /// The whole file, sections included (what the runtime compiles).
    pub wasm: Vec<u8>,
    /// SHA-256 of the whole file, lowercase hex (what `sha256:` pins compare).
    pub sha256: String,
}

impl Package {
    /// Reads and checks a package file.
    pub fn read(path: &Path) -> Result<Package, PackageError> {
        let file = path.display().to_string();
        let wasm = std::fs::read(path).map_err(|error| PackageError::Io {
            file: file.clone(),
            action: "cannot read",
            error,
        })?;
        Package::from_bytes(wasm, &file)
    }

    /// Checks a package held in memory; `file` names it in errors.
    pub fn from_bytes(wasm: Vec<u8>, file: &str) -> Result<Package, PackageError> {
        let sections = sections(&wasm).map_err(|reason| PackageError::NotWasm { file: file.into(), reason })?;
        let custom = |name: &str| {
            sections.iter().rev().find(|s| s.name.as_deref() == Some(name)).map(|s| &wasm[s.payload.clone()])
        };
        let Some(manifest) = custom(section::MANIFEST) else {
            return Err(PackageError::NoManifest { file: file.into() });
        };
        let manifest: Manifest = serde_json::from_slice(manifest).map_err(|e| PackageError::Invalid {
            file: file.into(),
            what: "manifest",
            reason: format!("{e}; rebuild the package with `sluice rule build` or `sluice rule pack`"),
        })?;
        validate_manifest(&manifest).map_err(|reason| PackageError::Invalid {
            file: file.into(),
            what: "manifest",
            reason,
        })?;
        let vectors = match custom(section::VECTORS) {
            None => Vec::new(),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| PackageError::Invalid {
                file: file.into(),
                what: "vectors",
                reason: format!("{e}; fix `vectors:` in rule.yaml and rebuild"),
            })?,
        };
        let sha256 = sha256_hex(&wasm);
        Ok(Package { file: file.into(), manifest, vectors, wasm, sha256 })
    }

    /// The hooks the module exports (from its export section, not the manifest).
    pub fn exported_hooks(&self) -> Vec<String> {
        exported_hooks(&self.wasm)
    }
}

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a manifest's fields; the error names the field and the fix.
pub fn validate_manifest(m: &Manifest) -> Result<(), String> {
    if m.name.is_empty()
        || !m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || m.name.starts_with('-')
    {
        return Err(format!(
            "name {:?} is not a rule name; use lowercase letters, digits and '-' (like my-rule)",
            m.name
        ));
    }
    if m.version.trim().is_empty() {
        return Err("version is empty; set version: 0.1.0 in rule.yaml".into());
    }
    if m.abi != sluice_sdk::abi::ABI_MAJOR {
        return Err(format!(
            "built for Sluice rule ABI v{}, this gateway speaks v{}; rebuild the rule against a matching SDK",
            m.abi,
            sluice_sdk::abi::ABI_MAJOR
        ));
    }
    for hook in &m.hooks {
        if !HOOKS.contains(&hook.as_str()) {
            return Err(format!("hooks: {hook:?} is not a hook; use {}", HOOKS.join(", ")));
        }
    }
    if !(m.defaults.is_null() || m.defaults.is_object()) {
        return Err("defaults must be a mapping of config keys".into());
    }
    limits(None, &m.limits)?;
    Ok(())
}

/// The hooks a rule may implement, in chain order.
pub const HOOKS: &[&str] = &["authenticate", "route", "authorize", "uplink", "downlink"];

/// The limits of one rule: `entry` (the gateway config) over `manifest` over the defaults.
pub fn limits(entry: Option<&RuleLimitsConfig>, manifest: &ManifestLimits) -> Result<super::Limits, String> {
    let manifest = RuleLimitsConfig {
        memory: manifest.memory.clone(),
        timeout: manifest.timeout.clone(),
        recycle_after_calls: manifest.recycle_after_calls,
    };
    let limits = super::Limits::from_config(&manifest)?;
    match entry {
        Some(entry) => limits.with(entry),
        None => Ok(limits),
    }
}

/// Writes the manifest and vectors into `wasm` as custom sections, replacing any old ones.
/// The manifest's `hooks` are set from the module's exports.
pub fn pack(wasm: &[u8], manifest: &Manifest, vectors: &[Vector]) -> Result<Vec<u8>, PackageError> {
    let label = "the module";
    let found = sections(wasm).map_err(|reason| PackageError::NotWasm { file: label.into(), reason })?;
    let mut manifest = manifest.clone();
    manifest.hooks = exported_hooks(wasm);
    validate_manifest(&manifest).map_err(|reason| PackageError::Invalid {
        file: label.into(),
        what: "manifest",
        reason,
    })?;
    let mut out = Vec::with_capacity(wasm.len() + 4096);
    out.extend_from_slice(&wasm[..8]);
    for s in &found {
        if matches!(s.name.as_deref(), Some(section::MANIFEST | section::VECTORS)) {
            continue;
        }
        out.extend_from_slice(&wasm[s.whole.clone()]);
    }
    // Serializing these plain data types cannot fail.
    append_custom(&mut out, section::MANIFEST, &serde_json::to_vec(&manifest).unwrap_or_default());
    append_custom(&mut out, section::VECTORS, &serde_json::to_vec(vectors).unwrap_or_default());
    Ok(out)
}

/// The package files of a rules folder, in file-name order: `*.wasm`, skipping dotfiles and
/// files still being written (`*.tmp`, `*.part`, `*~`).
pub fn package_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_package_file(p) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// True for a file the rules folder watcher should look at.
pub fn is_package_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    !name.starts_with('.') && name.ends_with(".wasm")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "t".into(),
            version: "0.1.0".into(),
            abi: 1,
            language: "rust".into(),
            description: String::new(),
            hooks: vec![],
            config: BTreeMap::new(),
            defaults: serde_json::Value::Null,
            limits: ManifestLimits::default(),
        }
    }

    const EMPTY: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn pack_then_read_round_trips_and_replaces_old_sections() {
        let once = pack(EMPTY, &manifest(), &[]).unwrap();
        let mut m = manifest();
        m.version = "0.2.0".into();
        let twice = pack(&once, &m, &[]).unwrap();
        let p = Package::from_bytes(twice.clone(), "t.wasm").unwrap();
        assert_eq!(p.manifest.version, "0.2.0");
        assert_eq!(sections(&twice).unwrap().len(), 2);
        assert_eq!(p.sha256, sha256_hex(&twice));
    }

    #[test]
    fn a_module_without_manifest_names_the_fix() {
        let err = Package::from_bytes(EMPTY.to_vec(), "x.wasm").unwrap_err().to_string();
        assert!(err.contains("sluice rule build"), "{err}");
        let err = Package::from_bytes(b"hello".to_vec(), "x.wasm").unwrap_err().to_string();
        assert!(err.contains("not a WebAssembly module"), "{err}");
    }

    #[test]
    fn bad_names_and_abi_versions_are_refused() {
        let mut m = manifest();
        m.name = "My_Rule".into();
        assert!(validate_manifest(&m).unwrap_err().contains("my-rule"));
        let mut m = manifest();
        m.abi = 2;
        assert!(validate_manifest(&m).unwrap_err().contains("ABI v2"));
    }

    #[test]
    fn entry_limits_win_over_manifest_limits() {
        let entry = RuleLimitsConfig { timeout: Some("5ms".into()), ..Default::default() };
        let manifest =
            ManifestLimits { timeout: Some("20ms".into()), memory: Some("4MiB".into()), ..Default::default() };
        let l = limits(Some(&entry), &manifest).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(5));
        assert_eq!(l.memory_bytes, 4 << 20);
    }
}
