//! Signed rule packages as a publisher and an operator use them: `sluice rule keygen`,
//! `sluice rule sign`, `sluice rule inspect`, and a gateway config's `trust:` deciding which
//! packages load (the same load path every reload takes). Packages come from `target/rules/`
//! (`scripts/build-rules.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::cli::{ok, rule_package as package, sluice, text};
use sluice::config::Config;
use sluice::rules::{Engine, load_chain};

/// Loads a chain of `builtin:emqx` and `file` under `trust` (YAML), from a config in `dir`.
fn load(dir: &Path, file: &Path, trust: &str) -> Result<Vec<sluice::rules::RuleInfo>, String> {
    let yaml = format!(
        "rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n  - rule: {}\n{trust}",
        file.display()
    );
    let path = dir.join("sluice.yaml");
    let config = Config::parse(&yaml, path.to_str().unwrap()).map_err(|e| e.to_string())?;
    load_chain(&config, Some(dir), Engine::global()).map(|c| c.rules()).map_err(|e| e.to_string())
}

#[test]
fn signed_packages_load_under_trust_and_the_others_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("keys");
    let made = ok(&["rule", "keygen", "--signer", "acme", "--out", keys.to_str().unwrap()]);
    assert!(made.contains("acme.pub"), "{made}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("acme.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    // A second keygen does not overwrite the key.
    let again = sluice(&["rule", "keygen", "--signer", "acme", "--out", keys.to_str().unwrap()]);
    assert!(!again.status.success() && text(&again).contains("exists"), "{}", text(&again));
    ok(&["rule", "keygen", "--signer", "mallory", "--out", keys.to_str().unwrap()]);

    let unsigned = d.join("senml.wasm");
    std::fs::copy(package("senml"), &unsigned).unwrap();
    let signed = d.join("senml-signed.wasm");
    let by_mallory = d.join("senml-mallory.wasm");
    let acme_key = keys.join("acme.key");
    ok(&[
        "rule",
        "sign",
        unsigned.to_str().unwrap(),
        "--key",
        acme_key.to_str().unwrap(),
        "--out",
        signed.to_str().unwrap(),
    ]);
    let mallory_key = keys.join("mallory.key");
    let (from, to) = (unsigned.to_str().unwrap(), by_mallory.to_str().unwrap());
    ok(&["rule", "sign", from, "--key", mallory_key.to_str().unwrap(), "--out", to]);
    assert!(ok(&["rule", "inspect", unsigned.to_str().unwrap()]).contains("signed:    no"));
    let shown = ok(&["rule", "inspect", signed.to_str().unwrap()]);
    assert!(shown.contains("signed:    by acme (key ") && shown.contains("), valid"), "{shown}");
    // Signing does not change what the package does: its vectors pass.
    ok(&["rule", "test", signed.to_str().unwrap()]);

    // Changed after signing: one more custom section (`x`), still a valid module.
    let tampered = d.join("senml-tampered.wasm");
    let mut bytes = std::fs::read(&signed).unwrap();
    bytes.extend_from_slice(&[0, 2, 1, b'x']);
    std::fs::write(&tampered, bytes).unwrap();
    assert!(ok(&["rule", "inspect", tampered.to_str().unwrap()]).contains("INVALID"));

    let strict = "trust:\n  keys: [keys/acme.pub]\n  require_signature: true\n";
    let loaded = load(d, &signed, strict).unwrap();
    let signer = loaded[1].signer.clone().unwrap_or_default();
    assert!(signer.starts_with("acme (key "), "{loaded:?}");
    let err = load(d, &unsigned, strict).unwrap_err();
    assert!(err.contains("not signed") && err.contains("sluice rule sign"), "{err}");
    let err = load(d, &by_mallory, strict).unwrap_err();
    assert!(err.contains("signed by mallory") && err.contains("trust.keys"), "{err}");
    let err = load(d, &tampered, strict).unwrap_err();
    assert!(err.contains("changed after it was signed"), "{err}");

    // Without trust: any package runs, but a tampered signature never does.
    assert!(load(d, &unsigned, "").is_ok());
    assert!(load(d, &by_mallory, "").is_ok());
    assert!(load(d, &tampered, "").unwrap_err().contains("changed after it was signed"));
    // The key itself inline, instead of its file.
    let line = std::fs::read_to_string(keys.join("acme.pub")).unwrap();
    let inline = format!("trust:\n  keys: [\"{}\"]\n  require_signature: true\n", line.trim());
    assert!(load(d, &signed, &inline).is_ok());
    // A key file that is not there names the key and the fix.
    let err = load(d, &signed, "trust:\n  keys: [keys/nobody.pub]\n").unwrap_err();
    assert!(err.contains("trust.keys[0]") && err.contains("sluice rule keygen"), "{err}");
}

#[test]
fn one_rule_name_runs_once_and_a_publisher_keeps_two_names_apart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::copy(package("senml"), rules.join("senml.wasm")).unwrap();
    std::fs::copy(package("senml"), rules.join("senml-copy.wasm")).unwrap();
    // The same rule under a publisher's name: another rule.
    let original = sluice::rules::Package::read(&package("senml")).unwrap();
    let mut manifest = original.manifest.clone();
    manifest.name = "acme/senml".into();
    let namespaced = sluice::rules::pack(&original.wasm, &manifest, &original.vectors).unwrap();
    std::fs::write(rules.join("acme.senml.wasm"), namespaced).unwrap();

    let yaml =
        "rules_dir: rules\nrules:\n  - rule: acme/senml\n  - rule: builtin:emqx\n    config: {anonymous: true}\n";
    let config = Config::parse(yaml, dir.path().join("sluice.yaml").to_str().unwrap()).unwrap();
    let chain = load_chain(&config, Some(dir.path()), Engine::global()).unwrap();
    let names: Vec<String> = chain.rules().into_iter().map(|r| r.name).collect();
    assert_eq!(names.iter().filter(|n| *n == "senml").count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "acme/senml").count(), 1, "{names:?}");
    let senml = chain.rules().into_iter().find(|r| r.name == "senml").unwrap();
    assert!(senml.source.unwrap().ends_with("senml-copy.wasm"), "the first in file-name order runs");
    // A manifest name that is not one names the fix.
    manifest.name = "Acme/Senml".into();
    let err = sluice::rules::pack(&original.wasm, &manifest, &original.vectors).unwrap_err().to_string();
    assert!(err.contains("acme/my-rule"), "{err}");
}
