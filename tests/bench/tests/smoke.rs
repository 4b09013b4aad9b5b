//! Every scenario at a tiny size against the real gateway, started in-process on ephemeral
//! ports with its embedded broker: the counts must be exact (no message lost or refused on an
//! idle loopback). Nothing here asserts a rate or a latency: the machine is shared.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::Config;
use sluice::server::Server;
use sluice_bench::fanout::{self, FanoutConfig};
use sluice_bench::find_rate::{self, FindRateConfig};
use sluice_bench::handshakes::HandshakesConfig;
use sluice_bench::idle::{self, IdleConfig};
use sluice_bench::noisy::{self, AbuseConfig};
use sluice_bench::procfs::Process;
use sluice_bench::put::{Load, LoadConfig, Phase};
use sluice_bench::sink::Sink;
use sluice_bench::soak::{self, SoakConfig};
use sluice_bench::stop::Stop;
use sluice_bench::swaps::{self, SwapsConfig};

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A gateway on ephemeral ports with its embedded broker, anyone let in; `extra` is more YAML
/// at the top level (e.g. `rules_dir: …`).
async fn gateway(extra: &str) -> Server {
    // The broker's port is picked free and then bound by the gateway: a test running beside
    // may take it in between, so try again with another.
    let mut tries = 0;
    loop {
        let text = format!(
            "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: embedded\n  embedded_bind: 127.0.0.1:{}\n  publish_timeout: 3s\n{extra}rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
            free_tcp_port()
        );
        let config = Config::parse(&text, "bench.yaml").unwrap_or_else(|p| panic!("{p}\n{text}"));
        match sluice::server::start(config).await {
            Ok(server) => return server,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("gateway start failed ({e:#}); trying another broker port");
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

fn load_config(server: &Server) -> LoadConfig {
    let mut c = LoadConfig::new(server.coap_addr, Some(server.broker_url.clone()));
    c.devices = 20;
    c.sockets = Some(10);
    c.gateway = Some(Process::current());
    // The embedded broker runs in this process too.
    c.broker = Some(Process::current());
    c
}

fn phase(con: bool, rate: u64, messages: u64) -> Phase {
    Phase { rate, duration: Duration::from_secs(10), con, window: 8, max_messages: messages }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_puts_from_many_devices_are_all_delivered() {
    let server = gateway("").await;
    let mut c = load_config(&server);
    c.senders = 2;
    let mut load = Load::prepare(c, 200).await.unwrap();
    let r = load.run(&phase(false, 2_000, 200), &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    assert_eq!(r.u64("sent"), 200);
    assert_eq!(r.u64("delivered"), 200, "{}", r.to_table());
    assert_eq!(r.u64("lost"), 0);
    assert_eq!(r.u64("failed"), 0);
    assert_eq!(r.u64("sockets"), 10);
    assert!(r.get("delivery_latency").unwrap()["p99_us"].is_number());
    assert!(r.get("gateway_cpu_us_per_msg").unwrap().is_number());
    for key in ["broker_cpu_s", "broker_cpu_us_per_msg", "generator_cpu_us_per_msg", "machine_cpu_busy_pct"] {
        assert!(r.get(key).is_some_and(|v| v.is_number()), "{key}: {}", r.to_table());
    }
    assert_eq!(r.u64("broker_pid"), u64::from(std::process::id()));
    assert!(r.u64("machine_cores") >= 1);
    let busy = r.f64("machine_cpu_busy_pct");
    assert!((0.0..=100.0).contains(&busy), "{busy}");
    load.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn con_puts_with_a_window_are_all_acknowledged_and_delivered() {
    let server = gateway("").await;
    let mut load = Load::prepare(load_config(&server), 400).await.unwrap();
    // Two runs on the same devices: Message-IDs and tokens continue, nothing is a duplicate.
    for _ in 0..2 {
        let r = load.run(&phase(true, 0, 200), &Stop::new()).await.unwrap();
        println!("{}", r.to_table());
        assert_eq!(r.u64("sent"), 200);
        assert_eq!(r.u64("answered_2_04"), 200, "{}", r.to_table());
        assert_eq!((r.u64("failed"), r.u64("timeouts")), (0, 0));
        assert_eq!(r.u64("delivered"), 200);
        assert_eq!(r.u64("duplicates"), 0);
        let rtt = r.get("rtt").unwrap();
        assert_eq!(rtt["count"], 200);
        for p in ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"] {
            assert!(rtt[p].as_f64().unwrap() > 0.0, "{p}");
        }
        assert!(r.to_json()["acks_per_s"].as_f64().unwrap() > 0.0);
    }
    load.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_observer_gets_every_message() {
    let server = gateway("").await;
    let mut cfg = FanoutConfig::new(server.coap_addr, server.broker_url.clone());
    cfg.observers = 50;
    cfg.messages = 5;
    cfg.interval = Duration::from_millis(20);
    cfg.gateway = Some(Process::current());
    cfg.broker = Some(Process::current());
    let r = fanout::run(&cfg, &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    assert_eq!(r.u64("registered"), 50, "{}", r.to_table());
    assert_eq!(r.u64("published"), 5);
    assert_eq!(r.u64("notifications"), 250, "{}", r.to_table());
    assert_eq!(r.u64("messages_complete"), 5);
    assert_eq!(r.u64("deregistered"), 50);
    assert!(r.get("latency").unwrap()["p99_us"].is_number());
    assert!(r.get("broker_cpu_us_per_notification").unwrap().is_number(), "{}", r.to_table());
    assert!(r.get("machine_cpu_busy_pct").unwrap().is_number());
    assert!(
        sluice_bench_eventually(|| server.gateway().observer_count() == 0).await,
        "deregistration left {} observers",
        server.gateway().observer_count()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_observers_register_and_leave() {
    let server = gateway("").await;
    let mut cfg = IdleConfig::new(server.coap_addr);
    cfg.devices = 100;
    cfg.sockets = Some(20);
    cfg.settle = Duration::from_millis(200);
    cfg.gateway = Some(Process::current());
    cfg.deregister = false;
    let r = idle::run(&cfg, &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    assert_eq!(r.u64("registered"), 100, "{}", r.to_table());
    assert_eq!(r.u64("register_timeouts"), 0);
    assert_eq!(r.f64("devices_per_socket"), 5.0);
    assert!(r.get("gateway_bytes_per_device").unwrap().is_number());
    // Five devices share each source port, on topics of their own: 100 observations.
    assert_eq!(server.gateway().observer_count(), 100);

    cfg.deregister = true;
    let r = idle::run(&cfg, &Stop::new()).await.unwrap();
    assert_eq!(r.u64("registered"), 100, "{}", r.to_table());
    assert_eq!(r.u64("deregistered"), 100);
    server.shutdown().await;
}

/// A package built by scripts/build-rules.sh (`/ok/{x}` → topic `ok/{x}`).
fn package(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/rules").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run scripts/build-rules.sh first", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_swaps_under_load_lose_and_fail_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let server = gateway(&format!("rules_dir: {}\n", rules.display())).await;
    let mut c = load_config(&server);
    c.path_template = "/ok/{device}?c=d{device}".into();
    c.topic_filter = "ok/#".into();
    let mut load = Load::prepare(c, 2_000).await.unwrap();
    let cfg = SwapsConfig {
        rules_dir: rules.clone(),
        packages: vec![package("fault"), package("fault-as")],
        swaps: 3,
        file_name: "swapped.wasm".into(),
        settle: Duration::from_millis(1500),
        keep: false,
    };
    let phase = Phase { rate: 300, duration: Duration::from_secs(3), con: true, window: 8, max_messages: 900 };
    let status = server.rules_status();
    let r = swaps::run(&mut load, &phase, &cfg, &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    assert_eq!(r.u64("swaps_done"), 3, "{}", r.to_table());
    // The first install and every swap were reloads of their own (swaps are 750 ms apart).
    let reloads = status.borrow().count;
    assert!(reloads >= 4, "{reloads} reloads");
    assert!(status.borrow().error.is_none(), "{:?}", status.borrow().error);
    assert!(r.u64("sent") > 0);
    assert_eq!(r.u64("answered_2_04"), r.u64("sent"), "{}", r.to_table());
    assert_eq!((r.u64("failed"), r.u64("timeouts"), r.u64("lost")), (0, 0, 0), "{}", r.to_table());
    assert!(r.get("broker_cpu_us_per_msg").unwrap().is_number(), "{}", r.to_table());
    assert!(r.get("machine_cpu_busy_pct").unwrap().is_number());
    assert!(!rules.join("swapped.wasm").exists(), "the swapped package is removed at the end");
    load.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_sink_counts_what_the_generator_sends() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = LoadConfig::new(sink.addr(), None);
    c.devices = 20;
    c.sockets = Some(10);
    c.senders = 3;
    let mut load = Load::prepare(c, 400).await.unwrap();
    let r = load.run(&phase(false, 2_000, 200), &Stop::new()).await.unwrap();
    assert_eq!((r.u64("sent"), r.u64("delivered")), (200, 200), "{}", r.to_table());
    let r = load.run(&phase(true, 0, 200), &Stop::new()).await.unwrap();
    assert_eq!((r.u64("answered_2_04"), r.u64("delivered")), (200, 200), "{}", r.to_table());
    assert_eq!(r.get("rtt").unwrap()["count"], 200);
    load.close().await;
    let report = sink.stop();
    assert_eq!(report.u64("received"), 400);
    assert_eq!(report.u64("confirmable"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_rate_steps_up_within_its_bounds() {
    let server = gateway("").await;
    let cfg = FindRateConfig {
        start: 250,
        max_rate: 1_000,
        step: Duration::from_millis(400),
        loss_pct: 0.1,
        bisect: 1,
        max_steps: 3,
        max_time: Duration::from_secs(20),
        pause: Duration::from_millis(100),
    };
    let mut load = Load::prepare(load_config(&server), cfg.messages()).await.unwrap();
    let (summary, steps) = find_rate::run(&mut load, &cfg, &Stop::new()).await.unwrap();
    println!("{}", summary.to_table());
    assert!(!steps.is_empty() && steps.len() <= 3);
    assert_eq!(summary.u64("steps"), steps.len() as u64);
    assert_eq!(summary.get("trail").unwrap().as_array().unwrap().len(), steps.len());
    for s in &steps {
        assert_eq!(s.u64("failed"), 0);
    }
    if summary.get("best_rate").is_some_and(|v| v.is_number()) {
        for key in ["best_broker_cpu_us_per_msg", "best_generator_cpu_us_per_msg", "best_machine_cpu_busy_pct"] {
            assert!(summary.get(key).is_some_and(|v| v.is_number()), "{key}: {}", summary.to_table());
        }
    }
    load.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_gateway_is_named_with_the_fix() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = format!("127.0.0.1:{port}").parse().unwrap();
    let err = Load::prepare(LoadConfig::new(target, Some("mqtt://127.0.0.1:1".into())), 10).await.err().unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("no CoAP endpoint answers") && text.contains("sluice run"), "{text}");
    let err = Load::prepare(LoadConfig::new("192.0.2.1:5683".parse().unwrap(), None), 10).await.err().unwrap();
    assert!(format!("{err:#}").contains("not a loopback address"));
}

/// Polls `f` until it is true or 5 s pass.
async fn sluice_bench_eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[test]
fn the_benchmark_gateway_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let config = Config::load(&path).unwrap_or_else(|p| panic!("{p}"));
    assert!(config.coap.bind.ip().is_loopback());
    assert_eq!(config.mqtt.broker.to_string(), "mqtt://127.0.0.1:21883", "the port of mosquitto.conf");
    let mosquitto = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("mosquitto.conf")).unwrap();
    assert!(mosquitto.contains("listener 21883 127.0.0.1"));
    // DTLS for the handshakes scenario, with the identity and key that are its defaults.
    let dtls = &config.dtls;
    assert_eq!(dtls.bind.to_string(), "127.0.0.1:25684");
    let psk = std::fs::read_to_string(dtls.psk_file.as_ref().unwrap()).unwrap();
    let defaults = HandshakesConfig::new(dtls.bind);
    assert!(psk.lines().any(|l| l == format!("{}:{}", defaults.identity, defaults.key)), "{psk}");
}

#[test]
fn the_noisy_neighbour_gateway_config_chains_the_fault_rule_first() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("noisy.yaml");
    let config = Config::load(&path).unwrap_or_else(|p| panic!("{p}"));
    let bench = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml")).unwrap();
    assert_eq!((config.coap.bind, &config.mqtt.broker), (bench.coap.bind, &bench.mqtt.broker));
    let rules: Vec<&str> = config.rules.iter().map(|r| r.rule.as_str()).collect();
    assert!(
        rules.len() == 2 && rules[0].ends_with("target/rules/fault.wasm") && rules[1] == "builtin:emqx",
        "{rules:?}"
    );
}

/// Runs the `sluice-bench` binary, which must succeed and print exactly one JSON report.
async fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-bench")).args(args).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    serde_json::from_str(lines[0]).unwrap()
}

/// Runs the `sluice-bench` binary, which must exit with 1; returns what it printed on stderr.
async fn bench_refused(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-bench")).args(args).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_psk_handshakes_each_yield_a_working_session() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    std::fs::write(&psk, "bench:bench-psk-key\n").unwrap();
    let server = gateway(&format!("dtls:\n  bind: 127.0.0.1:0\n  psk_file: {}\n", psk.display())).await;
    let target = server.coaps_addr.expect("DTLS is served").to_string();
    let r = bench_json(&[
        "handshakes",
        "--target",
        &target,
        "--gateway-pid",
        "auto",
        "--json",
        "--count",
        "20",
        "--concurrency",
        "4",
        "--duration",
        "60s",
    ])
    .await;
    assert_eq!(r["scenario"], "handshakes");
    assert_eq!((r["completed"].as_u64(), r["failed"].as_u64()), (Some(20), Some(0)), "{r}");
    assert_eq!(r["handshake"]["count"], 20, "{r}");
    assert_eq!(r["request_rtt"]["count"], 20, "{r}");
    assert_eq!(r["gateway_pid"], std::process::id());
    // 20 handshakes can take less than one /proc clock tick (10 ms): a number, maybe 0.
    assert!(r["gateway_cpu_us_per_handshake"].as_f64().is_some_and(|us| us >= 0.0), "{r}");

    // A wrong key is named before the run, not counted as failures.
    let err = bench_refused(&["handshakes", "--target", &target, "--key", "wrong", "--count", "5"]).await;
    assert!(err.contains("no DTLS PSK session") && err.contains("--identity/--key"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_prints_one_json_object_per_run() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = sink.addr().to_string();
    let r = bench_json(&[
        "put",
        "--sink",
        "--target",
        &target,
        "--gateway-pid",
        "auto",
        "--json",
        "--devices",
        "5",
        "--rate",
        "1000",
        "--duration",
        "300ms",
        "--max-messages",
        "100",
    ])
    .await;
    assert_eq!(r["scenario"], "put");
    assert_eq!(r["sent"], r["delivered"], "{r}");
    // `auto` found the process bound to the sink's port: this one.
    assert_eq!(r["gateway_pid"], std::process::id());
    assert!(r["generator_cpu_us_per_msg"].is_number(), "{r}");
    assert!(r["machine_cpu_busy_pct"].is_number(), "{r}");
    assert_eq!(sink.stop().u64("received"), r["sent"].as_u64().unwrap());

    let err = bench_refused(&["put", "--target", &target, "--rate", "10", "--duration", "1s"]).await;
    assert!(err.contains("no CoAP endpoint answers"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_targets_share_the_devices_and_the_report_is_the_aggregate() {
    // Two sinks: each gets its share, the report counts both.
    let sinks =
        [Sink::start("127.0.0.1:0".parse().unwrap()).unwrap(), Sink::start("127.0.0.1:0".parse().unwrap()).unwrap()];
    let targets = format!("{},{}", sinks[0].addr(), sinks[1].addr());
    let r = bench_json(&[
        "put",
        "--sink",
        "--target",
        &targets,
        "--gateway-pid",
        "auto",
        "--json",
        "--devices",
        "10",
        "--rate",
        "1000",
        "--duration",
        "300ms",
        "--max-messages",
        "200",
    ])
    .await;
    assert_eq!((r["gateways"].as_u64(), r["target"].as_str()), (Some(2), Some(targets.as_str())), "{r}");
    assert_eq!(r["sent"], r["delivered"], "{r}");
    let [a, b] = sinks.map(|s| s.stop().u64("received"));
    assert!(a > 0 && b > 0 && a + b == r["sent"].as_u64().unwrap(), "{a} + {b}: {r}");

    // Two gateways on one broker (the first one's embedded broker): every CON acknowledged and
    // delivered, through both.
    let first = gateway("").await;
    let second = {
        let text = format!(
            "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {}\n  publish_timeout: 3s\nrules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
            first.broker_url
        );
        sluice::server::start(Config::parse(&text, "bench.yaml").unwrap()).await.unwrap()
    };
    let targets = format!("{},{}", first.coap_addr, second.coap_addr);
    let r = bench_json(&[
        "put",
        "--con",
        "--target",
        &targets,
        "--mqtt",
        &first.broker_url,
        "--json",
        "--devices",
        "10",
        "--rate",
        "0",
        "--max-messages",
        "400",
    ])
    .await;
    assert_eq!((r["gateways"].as_u64(), r["sent"].as_u64()), (Some(2), Some(400)), "{r}");
    assert_eq!((r["answered_2_04"].as_u64(), r["delivered"].as_u64()), (Some(400), Some(400)), "{r}");

    let err = bench_refused(&["fanout", "--target", &targets]).await;
    assert!(err.contains("give one --target"), "{err}");
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_finds_the_broker_by_its_mqtt_port() {
    let server = gateway("").await;
    let coap = server.coap_addr.to_string();
    let r = bench_json(&[
        "put",
        "--target",
        &coap,
        "--mqtt",
        &server.broker_url,
        "--gateway-pid",
        "auto",
        "--broker-pid",
        "auto",
        "--json",
        "--devices",
        "5",
        "--rate",
        "1000",
        "--duration",
        "300ms",
        "--max-messages",
        "100",
    ])
    .await;
    assert_eq!(r["sent"], r["delivered"], "{r}");
    // The embedded broker listens in this process.
    assert_eq!(r["broker_pid"], std::process::id(), "{r}");
    for key in ["broker_cpu_s", "broker_cpu_us_per_msg", "generator_cpu_us_per_msg", "machine_cpu_busy_pct"] {
        assert!(r[key].is_number(), "{key}: {r}");
    }

    // Nothing listens on the port of --mqtt: named before the run.
    let url = format!("mqtt://127.0.0.1:{}", free_tcp_port());
    let err = bench_refused(&["put", "--target", &coap, "--mqtt", &url, "--broker-pid", "auto"]).await;
    assert!(err.contains("--broker-pid auto") && err.contains("listens on TCP port"), "{err}");
    server.shutdown().await;
}

/// A CoAP endpoint that answers pings, and only every other CON request (by token parity).
fn half_deaf_endpoint() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let d = &buf[..n];
            if n == 4 && d[1] == 0 {
                let _ = socket.send_to(&[0x70, 0, d[2], d[3]], peer); // ping → RST
                continue;
            }
            let tkl = usize::from(d[0] & 0x0f);
            if n >= 4 + tkl && tkl > 0 && d[4 + tkl - 1] % 2 == 0 {
                let mut ack = vec![0x60 | tkl as u8, 0x44, d[2], d[3]];
                ack.extend_from_slice(&d[4..4 + tkl]);
                let _ = socket.send_to(&ack, peer);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_cons_time_out_and_free_their_window_slot() {
    let mut c = LoadConfig::new(half_deaf_endpoint(), None);
    c.sink = false;
    c.mqtt = None;
    c.devices = 4;
    c.sockets = Some(2);
    c.senders = 2;
    c.timeout = Duration::from_millis(200);
    // No MQTT and no sink: only the CoAP answers are counted.
    let mut load = Load::prepare(c, 40).await.unwrap();
    let r = load.run(&phase(true, 0, 40), &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    assert_eq!(r.u64("sent"), 40, "a lost request must not keep its window slot");
    assert_eq!((r.u64("answered_2_04"), r.u64("timeouts")), (20, 20), "{}", r.to_table());
    assert_eq!(r.get("rtt").unwrap()["count"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_loses_nothing_and_samples_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    std::fs::write(&psk, "bench:bench-psk-key\n").unwrap();
    let server = gateway(&format!("dtls:\n  bind: 127.0.0.1:0\n  psk_file: {}\n", psk.display())).await;
    let mut cfg = SoakConfig::new(server.coap_addr, server.broker_url.clone());
    cfg.dtls = server.coaps_addr;
    cfg.gateway = Some(Process::current());
    cfg.duration = Duration::from_secs(3);
    cfg.warmup = 0.3;
    cfg.interval = Duration::from_millis(500);
    cfg.devices = 10;
    (cfg.non_rate, cfg.con_rate, cfg.ps_write_rate, cfg.ps_read_rate) = (50.0, 50.0, 20.0, 20.0);
    cfg.ps_topics = 4;
    (cfg.observers, cfg.notify_rate, cfg.dtls_rate) = (3, 5.0, 2.0);
    // The gateway runs in this test process, beside the generator's own sockets and threads:
    // growth is not the gateway's alone here, so only the figures are checked, not the bounds.
    (cfg.max_rss_growth_mib, cfg.max_fd_growth) = (1024.0, 1000);
    let r = soak::run(&cfg, &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    let j = r.to_json();
    assert_eq!(j["pass"], true, "{}", r.to_table());
    for kind in ["non_publish", "con_publish", "ps_write", "ps_read"] {
        let k = &j[kind];
        assert!(k["sent"].as_u64().unwrap() > 0, "{kind}: {k}");
        assert_eq!(k["missing"], 0, "{kind}: {k}");
        assert_eq!(k["failed"], 0, "{kind}: {k}");
    }
    for kind in ["non_publish", "con_publish"] {
        let k = &j[kind];
        assert_eq!(k["delivered"], k["sent"], "{kind}: {k}");
    }
    assert_eq!(j["con_publish"]["answered"], j["con_publish"]["sent"]);
    let obs = &j["observe"];
    assert_eq!(obs["observers"], 6);
    assert!(obs["published"].as_u64().unwrap() > 0, "{obs}");
    assert_eq!(obs["notifications"], obs["notifications_expected"], "{obs}");
    assert_eq!(obs["deregistered"], 6);
    let dtls = &j["dtls"];
    assert!(dtls["completed"].as_u64().unwrap() > 0, "{dtls}");
    assert_eq!(dtls["failed"], 0, "{dtls}");
    for key in ["rss_mib_warm", "rss_mib_end", "rss_growth_mib", "fds_warm", "fds_end", "fd_growth"] {
        assert!(j[key].is_number(), "{key}: {j}");
    }
    let samples = j["samples"].as_array().unwrap();
    assert!(samples.iter().any(|s| s["phase"] == "warm"), "{j}");
    assert_eq!(samples.last().unwrap()["phase"], "end");
    assert!(samples.iter().all(|s| s["rss_mib"].is_number() && s["fds"].is_number()), "{j}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_fails_on_growth_beyond_its_bound() {
    let server = gateway("").await;
    let mut cfg = SoakConfig::new(server.coap_addr, server.broker_url.clone());
    cfg.gateway = Some(Process::current());
    cfg.duration = Duration::from_secs(1);
    cfg.interval = Duration::from_millis(200);
    (cfg.non_rate, cfg.con_rate, cfg.ps_write_rate, cfg.ps_read_rate, cfg.observers) = (20.0, 20.0, 5.0, 5.0, 0);
    cfg.ps_topics = 2;
    // Any fd opened after the warm-up fails the run: hold some open in this (the "gateway's")
    // process while it runs.
    cfg.max_fd_growth = 0;
    let hold = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let files: Vec<_> = (0..8).map(|_| std::fs::File::open("/proc/self/stat").unwrap()).collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(files);
    });
    let r = soak::run(&cfg, &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    assert_eq!(r.to_json()["pass"], false, "{}", r.to_table());
    assert!(r.to_json()["problems"].to_string().contains("open fds grew"), "{}", r.to_table());
    hold.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_on_a_faulty_rule_are_answered_and_good_devices_lose_nothing() {
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: embedded\n  embedded_bind: 127.0.0.1:{}\n  publish_timeout: 3s\nrules:\n  - rule: {}\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
        free_tcp_port(),
        package("fault").display()
    );
    let config = Config::parse(&text, "noisy.yaml").unwrap_or_else(|p| panic!("{p}\n{text}"));
    let server = sluice::server::start(config).await.unwrap();
    let mut load = Load::prepare(load_config(&server), 2_000).await.unwrap();
    let phase = Phase { rate: 200, duration: Duration::from_secs(2), con: true, window: 8, max_messages: 400 };
    let mut abuse = AbuseConfig::new();
    abuse.rate = 10;
    abuse.settle = Duration::from_millis(300);
    let r = noisy::run(&mut load, &phase, &abuse, &Stop::new()).await.unwrap();
    println!("{}", r.to_table());
    let j = r.to_json();
    for run in ["baseline", "attacked"] {
        assert!(j[run]["sent"].as_u64().unwrap() > 0, "{j}");
        assert_eq!(j[run]["answered_2_04"], j[run]["sent"], "{run}: {j}");
        assert_eq!(j[run]["lost"], 0, "{run}: {j}");
        assert!(j[run]["p99_us"].is_number(), "{j}");
    }
    assert_eq!(j["good_missing"], 0, "{j}");
    assert!(j["acks_per_s_ratio"].is_number() && j["p99_ratio"].is_number(), "{j}");
    // Every attack was answered, by the route hook's fail policy.
    let sent = j["abuse_sent"].as_u64().unwrap();
    assert!(sent > 0, "{j}");
    assert_eq!(j["abuse_answered"], sent, "{j}");
    assert_eq!(j["abuse_codes"]["5.00"], sent, "{j}");
    load.close().await;
    server.shutdown().await;
}
