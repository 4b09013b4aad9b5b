//! `sluice check` refuses exactly what `sluice run` refuses, with the same words: both are fed
//! the same broken rule packages (missing, not a package, not a module, a wrong pin, a config
//! the rule refuses, natively and in Wasm), DTLS credentials (a missing PSK file, certificates
//! that are not PEM), broker settings (a URL with no host, a CA file that is not a
//! certificate), and a configuration that works, which `check` passes and `run` serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn built_rule(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/rules").join(name);
    assert!(path.is_file(), "{} is missing: run scripts/build-rules.sh first", path.display());
    path
}

/// The problem lines (`FILE: KEY: message`) a command printed, sorted.
fn problems(stderr: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(stderr)
        .lines()
        .map(|l| l.strip_prefix("sluice: ").unwrap_or(l).to_string())
        .filter(|l| l.contains("sluice.yaml: "))
        .collect();
    lines.sort();
    lines
}

/// `check` and `run` on the config `yaml` in `dir`: both must refuse it, listing the same problems.
fn both_refuse(dir: &Path, yaml: &str) -> Vec<String> {
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, yaml).unwrap();
    let check = Command::new(SLUICE).args(["check", "--config"]).arg(&config).output().unwrap();
    let run = Command::new(SLUICE)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "check refuses:\n{}", String::from_utf8_lossy(&check.stderr));
    assert_eq!(run.status.code(), Some(1), "run refuses:\n{}", String::from_utf8_lossy(&run.stderr));
    let (from_check, from_run) = (problems(&check.stderr), problems(&run.stderr));
    assert!(!from_check.is_empty(), "{}", String::from_utf8_lossy(&check.stderr));
    assert_eq!(from_check, from_run, "the same problems, in the same words");
    from_check
}

fn has(problems: &[String], key: &str, words: &str) -> bool {
    problems.iter().any(|p| p.contains(&format!("sluice.yaml: {key}: ")) && p.contains(words))
}

#[test]
fn broken_rules_are_refused_by_check_as_by_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built_rule("emqx.wasm"), dir.path().join("emqx.wasm")).unwrap();
    std::fs::write(dir.path().join("junk.wasm"), "not a package").unwrap();
    let yaml = "coap:\n  bind: 127.0.0.1:0\nadmin:\n  bind: none\nrules:\n\
        \x20 - rule: builtin:nope\n\
        \x20 - rule: ./missing.wasm\n\
        \x20 - rule: ./junk.wasm\n\
        \x20 - rule: ./emqx.wasm\n    sha256: \"abababababababababababababababababababababababababababababababab\"\n\
        \x20 - rule: ./emqx.wasm\n    config:\n      users: 5\n\
        \x20 - rule: builtin:emqx\n    config:\n      anonymous: maybe\n";
    let found = both_refuse(dir.path(), yaml);
    println!("{}", found.join("\n"));
    assert_eq!(found.len(), 6, "every broken entry, not only the first: {found:?}");
    assert!(has(&found, "rules.0", "not a builtin rule"), "{found:?}");
    assert!(has(&found, "rules.1", "does not exist"), "{found:?}");
    assert!(has(&found, "rules.2", "not a WebAssembly module"), "{found:?}");
    assert!(has(&found, "rules.3", "set sha256: "), "{found:?}");
    // Compiled and initialised: the Wasm rule itself refuses its config.
    assert!(has(&found, "rules.4", "config refused: users"), "{found:?}");
    assert!(has(&found, "rules.5", "config refused: anonymous"), "{found:?}");
}

#[test]
fn broken_credentials_and_broker_settings_are_refused_by_check_as_by_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a CA").unwrap();
    let base = "coap:\n  bind: 127.0.0.1:0\nadmin:\n  bind: none\n";
    let psk = both_refuse(dir.path(), &format!("{base}dtls:\n  bind: 127.0.0.1:0\n  psk_file: nope.txt\n"));
    assert!(has(&psk, "dtls.psk_file", "nope.txt"), "{psk:?}");
    let certs = both_refuse(
        dir.path(),
        &format!("{base}dtls:\n  bind: 127.0.0.1:0\n  cert_file: server.crt\n  key_file: server.key\n"),
    );
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert!(has(&certs, "dtls.cert_file", "server.crt") || has(&certs, "dtls.key_file", "server.key"), "{certs:?}");
    let url = both_refuse(dir.path(), &format!("{base}mqtt:\n  broker: \"mqtt://\"\n"));
    assert!(has(&url, "mqtt.broker", "the host is empty"), "{url:?}");
    let ca = dir.path().join("ca.pem");
    let ca =
        both_refuse(dir.path(), &format!("{base}mqtt:\n  broker: mqtts://127.0.0.1:1\n  ca_file: {}\n", ca.display()));
    assert!(has(&ca, "mqtt.ca_file", "ca.pem"), "{ca:?}");
}

#[test]
fn a_config_check_passes_is_one_run_serves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built_rule("emqx.wasm"), dir.path().join("emqx.wasm")).unwrap();
    let config = dir.path().join("sluice.yaml");
    let yaml = format!(
        "coap:\n  bind: 127.0.0.1:0\nadmin:\n  bind: none\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nrules:\n  - rule: ./emqx.wasm\n    config:\n      anonymous: true\n",
        common::free_tcp_port()
    );
    std::fs::write(&config, yaml).unwrap();
    let check = Command::new(SLUICE).args(["check", "--config"]).arg(&config).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let mut run = Command::new(SLUICE)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(run.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while !line.contains("Sluice is serving.") {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0 && Instant::now() < deadline, "run did not serve");
    }
    common::faults::signal(run.id(), "TERM");
    assert!(run.wait().unwrap().success());
}
