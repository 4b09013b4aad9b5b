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
use sluice_sdk::abi::{Hook, section};

pub use super::module::{Import, Section, exported_hooks, exports, imports, sections, strip_debug};
use super::module::{ModuleError, append_custom, rebuild};
use super::vectors::Vector;
use super::{Limits, LimitsError};
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
    pub limits: RuleLimitsConfig,
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
    #[error("{file}: not a WebAssembly module ({error}); give the .wasm file a rule build produced")]
    NotWasm {
        /// The file.
        file: String,
        /// What is wrong.
        error: ModuleError,
    },
    /// A module without the manifest section.
    #[error("{file}: not a Sluice package: no sluice.manifest section; build it with `sluice rule build DIR`")]
    NoManifest {
        /// The file.
        file: String,
    },
    /// The manifest, the vectors or `rule.yaml` do not parse or are invalid.
    #[error("{file}: {what}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// `manifest`, `vectors`, `rule.yaml`.
        what: &'static str,
        /// What is wrong, ending with the fix.
        problem: Problem,
    },
}

/// What is wrong with a manifest, vectors or `rule.yaml`, ending with the fix.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The manifest's fields.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest section is not a JSON manifest.
    #[error("{0}; rebuild the package with `sluice rule build` or `sluice rule pack`")]
    ManifestJson(serde_json::Error),
    /// The vectors section is not a JSON list of vectors.
    #[error("{0}; fix `vectors:` in rule.yaml and rebuild")]
    VectorsJson(serde_json::Error),
    /// A vectors file is not a JSON list of vectors.
    #[error("{0}; expected a JSON list of vectors")]
    VectorsFile(serde_json::Error),
    /// `rule.yaml` does not parse (unknown keys included).
    #[error("{0}")]
    Yaml(#[from] serde_yaml::Error),
    /// `language:` is neither Rust nor AssemblyScript.
    #[error("language {0:?}: use rust or assemblyscript")]
    Language(String),
}

/// A manifest field the gateway cannot accept; each names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// `name` is not lowercase letters, digits and `-`, optionally after a publisher and `/`.
    #[error(
        "name {0:?} is not a rule name; use lowercase letters, digits and '-', optionally after a publisher and '/' (like my-rule or acme/my-rule)"
    )]
    Name(String),
    /// `version` is empty.
    #[error("version is empty; set version: 0.1.0 in rule.yaml")]
    NoVersion,
    /// `abi` is another major version.
    #[error(
        "built for Sluice rule ABI v{0}, this gateway speaks v{ours}; rebuild the rule against a matching SDK",
        ours = sluice_sdk::abi::ABI_MAJOR
    )]
    Abi(u32),
    /// `hooks` names something that is not a hook.
    #[error("hooks: {0:?} is not a hook; use {names}", names = hook_names())]
    Hook(String),
    /// `defaults` is not a mapping.
    #[error("defaults must be a mapping of config keys")]
    Defaults,
    /// `limits` are invalid.
    #[error(transparent)]
    Limits(#[from] LimitsError),
}

/// The hooks a manifest may list, for messages: `authenticate, route, …`.
fn hook_names() -> String {
    Hook::chain().map(Hook::name).join(", ")
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
        let sections = sections(&wasm).map_err(|error| PackageError::NotWasm { file: file.into(), error })?;
        let custom = |name: &str| {
            let found = sections.iter().rev().find(|s| s.name.as_deref() == Some(name))?;
            wasm.get(found.payload.clone())
        };
        let Some(manifest) = custom(section::MANIFEST) else {
            return Err(PackageError::NoManifest { file: file.into() });
        };
        let invalid = |what, problem| PackageError::Invalid { file: file.into(), what, problem };
        let manifest: Manifest =
            serde_json::from_slice(manifest).map_err(|e| invalid("manifest", Problem::ManifestJson(e)))?;
        validate_manifest(&manifest).map_err(|e| invalid("manifest", e.into()))?;
        let vectors = match custom(section::VECTORS) {
            None => Vec::new(),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| invalid("vectors", Problem::VectorsJson(e)))?,
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
pub fn validate_manifest(m: &Manifest) -> Result<(), ManifestError> {
    if !is_rule_name(&m.name) {
        return Err(ManifestError::Name(m.name.clone()));
    }
    if m.version.trim().is_empty() {
        return Err(ManifestError::NoVersion);
    }
    if m.abi != sluice_sdk::abi::ABI_MAJOR {
        return Err(ManifestError::Abi(m.abi));
    }
    if let Some(hook) = m.hooks.iter().find(|h| Hook::from_name(h).is_none_or(|h| h == Hook::Init)) {
        return Err(ManifestError::Hook(hook.clone()));
    }
    if !(m.defaults.is_null() || m.defaults.is_object()) {
        return Err(ManifestError::Defaults);
    }
    Limits::resolve(None, &m.limits)?;
    Ok(())
}

/// True for a rule name: `NAME` or `PUBLISHER/NAME`, each lowercase letters, digits and `-`
/// (not first). The publisher keeps two publishers' rules of one name apart (`acme/senml`,
/// `initech/senml`).
pub fn is_rule_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('-')
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match name.split_once('/') {
        Some((publisher, rest)) => part(publisher) && part(rest),
        None => part(name),
    }
}

/// The file name of a package named `name`: `NAME.wasm`, `PUBLISHER.NAME.wasm` for a
/// namespaced one (a file name holds no `/`).
pub fn file_name(name: &str) -> String {
    format!("{}.wasm", name.replace('/', "."))
}

/// Writes the manifest and vectors into `wasm` as custom sections, replacing any old ones.
/// The manifest's `hooks` are set from the module's exports.
pub fn pack(wasm: &[u8], manifest: &Manifest, vectors: &[Vector]) -> Result<Vec<u8>, PackageError> {
    let label = "the module";
    let found = sections(wasm).map_err(|error| PackageError::NotWasm { file: label.into(), error })?;
    let mut manifest = manifest.clone();
    manifest.hooks = exported_hooks(wasm);
    validate_manifest(&manifest).map_err(|e| PackageError::Invalid {
        file: label.into(),
        what: "manifest",
        problem: e.into(),
    })?;
    let ours = |s: &Section| matches!(s.name.as_deref(), Some(section::MANIFEST | section::VECTORS));
    let mut out = rebuild(wasm, found.into_iter().filter(|s| !ours(s)));
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
            limits: RuleLimitsConfig::default(),
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
        assert!(validate_manifest(&m).unwrap_err().to_string().contains("my-rule"));
        let mut m = manifest();
        m.abi = 2;
        assert!(validate_manifest(&m).unwrap_err().to_string().contains("ABI v2"));
        let mut m = manifest();
        m.hooks = vec!["init".into()];
        let err = validate_manifest(&m).unwrap_err().to_string();
        assert!(err.contains("authenticate, route, authorize, uplink, downlink"), "{err}");
    }
}
