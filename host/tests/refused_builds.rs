//! Modules built by the real Rust and AssemblyScript toolchains that the gateway must refuse —
//! an import outside the ABI, the marker of another ABI version, a missing `sluice_init` — each
//! with a message that names the problem and the fix, at compile time (before anything runs),
//! from `sluice rule inspect`/`test`, and when dropped into a running gateway's rules folder,
//! where the rule already serving keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sluice::rules::Engine;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn module(name: &str) -> (PathBuf, Vec<u8>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/rules").join(format!("{name}.wasm"));
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-rules.sh first", path.display()));
    (path, bytes)
}

/// (module, what the refusal must say)
const CASES: &[(&str, &[&str])] = &[
    ("broken-rust-wasi-import", &["wasi_snapshot_preview1.fd_write", "wasm32-unknown-unknown"]),
    ("broken-rust-abi-v2", &["v2", "v1"]),
    ("broken-rust-no-init", &["sluice_init"]),
    ("broken-as-import", &["env.foo"]),
    ("broken-as-abi2", &["v2", "v1"]),
    ("broken-as-noinit", &["sluice_init"]),
];

#[test]
fn each_refused_build_is_refused_at_compile_with_the_reason() {
    let engine = Engine::new(None).unwrap();
    for (name, needles) in CASES {
        let (_, bytes) = module(name);
        let error = engine.compile(&bytes).err().unwrap_or_else(|| panic!("{name} was accepted")).to_string();
        for needle in *needles {
            assert!(error.contains(needle), "{name}: {needle:?} not in {error:?}");
        }
    }
}

#[test]
fn sluice_rule_test_refuses_them_with_the_reason_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    for (name, needles) in CASES {
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, packed(name)).unwrap();
        let out = Command::new(SLUICE).args(["rule", "test"]).arg(&path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        for needle in *needles {
            assert!(text.contains(needle), "{name}: {needle:?} not in {text:?}");
        }
    }
}

/// A refused build packed as if it were a new version of the serving package (a manifest, so
/// that the module itself is what gets refused).
fn packed(name: &str) -> Vec<u8> {
    let manifest = sluice::rules::Manifest {
        name: "fault".into(),
        version: "9.9.9".into(),
        abi: 1,
        language: "rust".into(),
        description: format!("the refused build {name}"),
        hooks: vec![],
        config: Default::default(),
        defaults: serde_json::Value::Null,
        limits: Default::default(),
    };
    sluice::rules::pack(&module(name).1, &manifest, &[]).unwrap()
}

/// Each refused build copied over a serving package is refused; the serving version stays.
#[test]
fn dropped_into_a_rules_folder_they_are_refused_and_the_old_rule_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("fault.wasm"), module("fault").1).unwrap();
    let mut config = sluice::config::Config::zero_config();
    config.rules_dir = Some(rules.clone());
    let engine = Engine::new(None).unwrap();
    let (chain, reloader) = sluice::rules::start_rules(&config, None, &engine).unwrap();
    let serving = || chain.load().rules().iter().find(|r| r.name == "fault").cloned();
    let before = serving().expect("the fault package serves");
    for (i, (name, needles)) in CASES.iter().enumerate() {
        std::fs::write(rules.join("fault.wasm"), packed(name)).unwrap();
        let status = reloader.wait_for(i as u64 + 1, Duration::from_secs(20)).expect("a reload");
        let refused = status.refused();
        assert_eq!(refused.len(), 1, "{name}: {status:?}");
        assert!(needles.iter().all(|n| refused[0].1.contains(n)), "{name}: {refused:?}");
        let now = serving().expect("still serving");
        assert_eq!((now.version, now.sha256), (before.version.clone(), before.sha256.clone()), "{name}");
        // Quiet for longer than the debounce, so that the next write is its own reload.
        std::thread::sleep(Duration::from_millis(400));
    }
}
