//! The `sluice` binary as a user runs it, and the rule packages `scripts/build-rules.sh` builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// The repository's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/rules/NAME.wasm` (or under `SLUICE_RULES_DIR`).
pub fn rule_package(name: &str) -> PathBuf {
    let dir = std::env::var_os("SLUICE_RULES_DIR").map_or_else(|| workspace().join("target/rules"), PathBuf::from);
    let file = dir.join(format!("{name}.wasm"));
    assert!(file.is_file(), "{} is missing: run bash scripts/build-rules.sh", file.display());
    file
}

/// Runs `sluice ARGS`, without the machine user's Docker credential file (anonymous registries
/// unless told).
pub fn sluice(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(SLUICE).args(args).env("HOME", home.path()).env_remove("DOCKER_CONFIG").output().unwrap()
}

/// Standard output and standard error, together.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `sluice ARGS`, which must succeed; its output.
pub fn ok(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(out.status.success(), "sluice {args:?} failed:\n{}", text(&out));
    text(&out)
}

/// Runs `sluice ARGS`, which must fail; its output.
pub fn failed(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(!out.status.success(), "sluice {args:?} should have failed:\n{}", text(&out));
    text(&out)
}
