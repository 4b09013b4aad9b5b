//! The README's rules walkthrough, step by step as a newcomer runs it: scaffold a rule in Rust
//! and one in AssemblyScript, build each with one command, copy it into the rules folder of a
//! running `sluice run`, see the next `coap-client-notls` request mapped by it and the swap in
//! the log; then a new version is swapped in, and a broken copy is refused while the previous
//! version keeps answering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// `sluice run` with its log in a file, stopped on drop.
struct Gateway {
    child: Child,
    log: PathBuf,
    coap: u16,
    mqtt: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// `sluice run --rules-dir RULES` on ephemeral ports. The config only moves the embedded
    /// broker off 1883 and keeps the zero-config default rule (builtin:emqx, anonymous).
    fn start(dir: &Path, rules: &Path) -> Gateway {
        let coap = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mqtt = free_tcp_port();
        let config = dir.join("sluice.yaml");
        std::fs::write(
            &config,
            format!(
                "mqtt:\n  embedded_bind: 127.0.0.1:{mqtt}\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n"
            ),
        )
        .unwrap();
        let log = dir.join("sluice.log");
        let child = Command::new(SLUICE)
            .args(["run", "--config", config.to_str().unwrap(), "--rules-dir", rules.to_str().unwrap()])
            .args(["--coap-bind", &format!("127.0.0.1:{coap}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let gateway = Gateway { child, log, coap, mqtt };
        gateway.wait_log("Sluice is serving.", 1);
        gateway
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `count` lines containing `needle`; returns the last one.
    fn wait_log(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            if lines.len() >= count {
                return lines[count - 1].to_string();
            }
            assert!(Instant::now() < deadline, "no {count}× {needle:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("coap://127.0.0.1:{}/{path}", self.coap)
    }
}

/// Runs a `sluice` subcommand; panics with its output when it fails.
fn sluice(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(SLUICE).args(args).current_dir(cwd).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sluice {args:?} failed:\n{text}");
    text
}

/// Replaces `from` with `to` in a file, asserting that it was there (the README's `sed -i`).
fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// The whole walkthrough for one language; `source` is the rule's source file in the project.
async fn walkthrough(lang: &str, source: &str, topic_code: (&str, &str)) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let rules = work.join("rules");
    std::fs::create_dir(&rules).unwrap();

    // Scaffold and build with one command each.
    sluice(&["rule", "new", "--lang", lang, "hello"], work);
    let built = sluice(&["rule", "build", "hello"], work);
    assert!(built.contains("1 test vector(s) pass"), "{built}");
    let package = work.join("hello/build/hello.wasm");
    assert!(package.is_file());

    let gw = Gateway::start(work, &rules);
    // Before: no rule maps /hello, and builtin:emqx answers 4.04.
    let out = coap_client(&["-m", "put", "-e", "21.5", &gw.url("hello/kitchen")]).await;
    assert!(out.all().contains("4.04"), "{out:?}");

    // Copy it in: the next request is mapped by it.
    std::fs::copy(&package, rules.join("hello.wasm")).unwrap();
    let added = gw.wait_log("Rule added.", 1);
    assert!(added.contains("hello") && added.contains("0.1.0"), "{added}");
    let sub = Sub::start(gw.mqtt, "hello/#", 1);
    let out = coap_client(&["-m", "put", "-e", "21.5", &gw.url("hello/kitchen")]).await;
    assert!(!out.all().contains("4."), "{out:?}");
    assert_eq!(sub.lines(), vec!["hello/kitchen 21.5"]);

    // Version 0.2.0 publishes to greetings/…: build, copy, and the log shows the swap.
    edit(&work.join("hello").join(source), topic_code.0, topic_code.1);
    edit(&work.join("hello/rule.yaml"), "version: 0.1.0", "version: 0.2.0");
    edit(&work.join("hello/rule.yaml"), "topic: hello/", "topic: greetings/");
    // Inside the project, like `cargo build`: no folder argument (and `test` alike).
    let project = work.join("hello");
    let rebuilt = sluice(&["rule", "build"], &project);
    assert!(rebuilt.contains("1 test vector(s) pass"), "{rebuilt}");
    let tested = sluice(&["rule", "test"], &project);
    assert!(tested.contains("pass"), "{tested}");
    std::fs::copy(&package, rules.join("hello.wasm")).unwrap();
    let swapped = gw.wait_log("Rule swapped.", 1);
    assert!(swapped.contains("old_version=0.1.0") && swapped.contains("new_version=0.2.0"), "{swapped}");
    let sub = Sub::start(gw.mqtt, "greetings/#", 1);
    coap_client(&["-m", "put", "-e", "22", &gw.url("hello/kitchen")]).await;
    assert_eq!(sub.lines(), vec!["greetings/kitchen 22"]);

    // A broken copy (cut short) is refused; 0.2.0 keeps answering.
    let bytes = std::fs::read(&package).unwrap();
    std::fs::write(rules.join("hello.wasm"), &bytes[..bytes.len() / 2]).unwrap();
    let refused = gw.wait_log("Rule refused; the previous version keeps serving.", 1);
    assert!(refused.contains("hello.wasm"), "{refused}");
    let sub = Sub::start(gw.mqtt, "greetings/#", 1);
    coap_client(&["-m", "put", "-e", "23", &gw.url("hello/kitchen")]).await;
    assert_eq!(sub.lines(), vec!["greetings/kitchen 23"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_rule_is_scaffolded_built_and_hot_swapped() {
    walkthrough("rust", "src/lib.rs", ("format!(\"hello/{}\"", "format!(\"greetings/{}\"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_rule_is_scaffolded_built_and_hot_swapped() {
    walkthrough("assemblyscript", "assembly/index.ts", ("\"hello/\" +", "\"greetings/\" +")).await;
}
