//! `rule.yaml`: the source of a package's manifest and vectors, at the root of a rule project.
//!
//! ```yaml
//! name: my-rule
//! version: 0.1.0
//! language: rust            # or assemblyscript
//! description: Publishes /hello/… to hello/….
//! config:                   # documented keys (optional)
//!   prefix: {type: string, description: the topic prefix}
//! defaults: {prefix: hello} # the config it runs with when the gateway gives none
//! limits: {memory: 16MiB, timeout: 10ms}
//! vectors:
//!   - name: hello is published
//!     hook: route
//!     request: {method: POST, path: hello/a}
//!     expect: {publish: {topic: hello/a}}
//! ```
//! `sluice rule pack` and `sluice rule build` turn it into the package's custom sections.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::package::{ConfigKey, Manifest, PackageError, Problem, validate_manifest};
use super::vectors::Vector;
use crate::config::RuleLimitsConfig;

/// The file name at a rule project's root.
pub const RULE_YAML: &str = "rule.yaml";

/// `rule.yaml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleYaml {
    name: String,
    version: String,
    #[serde(default = "abi")]
    abi: u32,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    hooks: Vec<String>,
    #[serde(default)]
    config: BTreeMap<String, ConfigKey>,
    #[serde(default)]
    defaults: serde_json::Value,
    #[serde(default)]
    limits: RuleLimitsConfig,
    #[serde(default)]
    vectors: Vec<Vector>,
}

fn abi() -> u32 {
    sluice_sdk::abi::ABI_MAJOR
}

/// A parsed `rule.yaml`.
#[derive(Debug, Clone)]
pub struct RuleSource {
    /// The manifest it describes.
    pub manifest: Manifest,
    /// Its vectors.
    pub vectors: Vec<Vector>,
    /// `rust` or `assemblyscript`.
    pub language: Language,
}

/// The language of a rule project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A Rust crate (`Cargo.toml`), built for `wasm32-unknown-unknown`.
    Rust,
    /// An AssemblyScript project (`package.json`, `asbuild` script).
    AssemblyScript,
}

impl Language {
    /// Parses `rust` or `assemblyscript` (also `as`).
    pub fn parse(text: &str) -> Option<Language> {
        match text.to_ascii_lowercase().as_str() {
            "rust" => Some(Language::Rust),
            "assemblyscript" | "as" => Some(Language::AssemblyScript),
            _ => None,
        }
    }

    /// The name written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::AssemblyScript => "assemblyscript",
        }
    }
}

impl RuleSource {
    /// Reads `path` (a `rule.yaml`); `dir` guesses the language when it is not written.
    pub fn read(path: &Path) -> Result<RuleSource, PackageError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| PackageError::Io {
            file: file.clone(),
            action: "cannot read (a rule project has rule.yaml at its root)",
            error,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        RuleSource::parse(&text, &file, dir)
    }

    /// Parses `rule.yaml` text; `file` names it in errors, `dir` is the project folder.
    pub fn parse(text: &str, file: &str, dir: &Path) -> Result<RuleSource, PackageError> {
        let invalid = |problem: Problem| PackageError::Invalid { file: file.into(), what: "rule.yaml", problem };
        let raw: RuleYaml = serde_yaml::from_str(text).map_err(|e| invalid(e.into()))?;
        let language = match &raw.language {
            Some(l) => Language::parse(l).ok_or_else(|| invalid(Problem::Language(l.clone())))?,
            None if dir.join("package.json").is_file() => Language::AssemblyScript,
            None => Language::Rust,
        };
        let manifest = Manifest {
            name: raw.name,
            version: raw.version,
            abi: raw.abi,
            language: language.name().into(),
            description: raw.description,
            hooks: raw.hooks,
            config: raw.config,
            defaults: raw.defaults,
            limits: raw.limits,
        };
        validate_manifest(&manifest).map_err(|e| invalid(e.into()))?;
        Ok(RuleSource { manifest, vectors: raw.vectors, language })
    }
}

/// Reads vectors from a `.json` list, or the `vectors:` of a `rule.yaml`.
pub fn read_vectors(path: &Path) -> Result<Vec<Vector>, PackageError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| PackageError::Io {
        file: file.clone(),
        action: "cannot read",
        error,
    })?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| PackageError::Invalid {
            file,
            what: "vectors",
            problem: Problem::VectorsFile(e),
        })
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(RuleSource::parse(&text, &file, dir)?.vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_yaml_gives_manifest_and_vectors() {
        let text = "name: my-rule\nversion: 0.1.0\nlanguage: rust\ndefaults: {prefix: hello}\nvectors:\n  - name: hi\n    hook: route\n    request: {path: hello/a}\n    expect: {publish: {topic: hello/a}}\n";
        let src = RuleSource::parse(text, "rule.yaml", Path::new("/nonexistent")).unwrap();
        assert_eq!(src.manifest.name, "my-rule");
        assert_eq!(src.language, Language::Rust);
        assert_eq!(src.vectors.len(), 1);
        assert_eq!(src.manifest.defaults["prefix"], "hello");
    }

    #[test]
    fn unknown_keys_and_languages_are_refused() {
        let err = RuleSource::parse("name: a\nversion: 0.1.0\nlanguage: go\n", "rule.yaml", Path::new("."));
        assert!(err.unwrap_err().to_string().contains("use rust or assemblyscript"));
        let err = RuleSource::parse("name: a\nversion: 0.1.0\nbogus: 1\n", "rule.yaml", Path::new("."));
        assert!(err.unwrap_err().to_string().contains("bogus"));
    }
}
