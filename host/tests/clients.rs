//! Two of the most used CoAP client libraries that no one here wrote, used the way an
//! application uses them — aiocoap (Python) and the `coap` npm package (Node.js), neither of
//! which answers an Echo challenge (RFC 9175) by itself — against `sluice run` with no config,
//! as a new user starts it: PUT, Observe with three notifications, Block1 and Block2 of 5,000
//! bytes each way, and discovery all work without a single challenge (tests/clients/). With
//! `coap.amplification_budget: 0` (strict RFC 9175) the same libraries get a 4.01 whose
//! diagnostic says what to do.
//!
//! The scripts come from `tests/clients/` and are installed by the README's test command
//! (`pip install aiocoap`, `npm ci` in `tests/clients/node`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::process::Sluice;
use common::*;

/// The cases every script runs, each printing `ok <case>` or `FAIL <case>: …`.
const CASES: [&str; 5] = ["put", "observe", "block1", "block2", "discovery"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs a client script against the gateway; its output, and whether it exited 0.
async fn script(program: &str, script: &str, gw: &Sluice) -> (String, bool) {
    let path = repo().join(script);
    let child = tokio::process::Command::new(program)
        .arg(&path)
        .args(["127.0.0.1", &gw.coap.port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} {}: {e}", path.display()));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish in 120 s"))
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !text.contains("ModuleNotFoundError") && !text.contains("Cannot find module"),
        "{script}'s library is missing: run the README's test command (scripts/test.sh installs aiocoap \
         and runs `npm ci` in tests/clients/node):\n{text}"
    );
    (text, out.status.success())
}

/// Every case passed: one `ok` line each, no `FAIL`.
fn all_ok(library: &str, text: &str, ok: bool, gw: &Sluice) {
    for case in CASES {
        assert!(
            text.lines().any(|l| l.trim() == format!("ok {case}")),
            "{library}: case {case} did not pass:\n{text}\n--- gateway log ---\n{}",
            gw.log()
        );
    }
    assert!(ok && !text.contains("FAIL"), "{library}:\n{text}");
}

/// The value of one series (`name{labels}` exactly as rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_and_node_coap_work_against_the_default_gateway_without_echo() {
    let broker = Mosquitto::start();
    let gw = Sluice::start(broker.port, None, &[], "Sluice is serving.").await;
    // What reaches MQTT, seen by Debian's mosquitto_sub: the PUT to /mqtt of each library.
    let sub_py = Sub::start(broker.port, "py/pub", 1);
    let sub_js = Sub::start(broker.port, "js/pub", 1);

    let (text, ok) = script("python3", "tests/clients/aiocoap_cases.py", &gw).await;
    println!("aiocoap:\n{text}");
    all_ok("aiocoap", &text, ok, &gw);
    let (text, ok) = script("node", "tests/clients/node/cases.js", &gw).await;
    println!("coap (npm):\n{text}");
    all_ok("coap (npm)", &text, ok, &gw);

    assert_eq!(sub_py.lines(), vec!["py/pub hi"]);
    assert_eq!(sub_js.lines(), vec!["js/pub hi"]);
    // The 5,000-byte values are retained messages of the broker: both arrived whole.
    for topic in ["py/big", "js/big"] {
        let out = tokio::process::Command::new("mosquitto_sub")
            .args(["-p", &broker.port.to_string(), "-t", topic, "-C", "1", "-W", "5"])
            .output()
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 5_000 + 1, "{topic}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metrics = metrics_answer(gw.admin).await;
    assert_eq!(value(&metrics, "sluice_coap_echo_challenges_total"), 0.0, "no device was challenged");
    assert!(value(&metrics, "sluice_coap_peers_verified_total") >= 2.0, "each observer's ACK verified it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_strict_echo_the_same_clients_are_told_why() {
    let broker = Mosquitto::start();
    let config =
        "coap:\n  amplification_budget: 0\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n";
    let gw = Sluice::start(broker.port, Some(config), &[], "Sluice is serving.").await;
    for (program, path, library) in [
        ("python3", "tests/clients/aiocoap_cases.py", "aiocoap"),
        ("node", "tests/clients/node/cases.js", "coap (npm)"),
    ] {
        let (text, ok) = script(program, path, &gw).await;
        println!("{library} under strict Echo:\n{text}");
        assert!(!ok, "{library}: the observation is challenged and the library does not repeat it:\n{text}");
        let observe = text.lines().find(|l| l.starts_with("FAIL observe")).unwrap_or_else(|| panic!("{text}"));
        assert!(observe.contains("4.01"), "{observe}");
        assert!(observe.contains("repeat"), "the 4.01's diagnostic says what to do: {observe}");
        assert!(text.lines().any(|l| l.trim() == "ok put"), "a small answer needs no verification:\n{text}");
    }
}
