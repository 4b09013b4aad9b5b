//! deploy/grafana/sluice.json against a real gateway: the dashboard parses, every panel has a
//! title and a query, every metric its PromQL names is a family `/metrics` serves (a histogram's
//! `_bucket`/`_sum`/`_count` count as their family), every label it matches or groups by is one
//! the gateway (or Prometheus: `instance`, `job`) puts on those series, and every family served
//! has a panel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PSK: &str = "secretkey1";

/// The dashboard file.
fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sluice.json")
}

/// A free UDP port on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `sluice run --config FILE` in the background, killed on drop.
struct Running {
    child: tokio::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts the binary on `config` (written to a temporary folder with the files in `files`)
/// and waits until its admin API at `admin` answers `/healthz` with 200.
async fn run_gateway(dir: tempfile::TempDir, config: &str, admin: SocketAddr) -> Running {
    let file = dir.path().join("sluice.yaml");
    std::fs::write(&file, config).unwrap();
    let log = dir.path().join("sluice.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut running = Running { child, log, _dir: dir };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("sluice run exited ({status}):\n{}", running.log());
        }
        if let Ok((200, _)) = get(admin, "/healthz").await {
            return running;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gateway never got healthy:\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` on the admin API: (status, body).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The families of a scrape: name → (type, label names seen on its samples).
fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_string(), (kind.trim().to_string(), BTreeSet::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).unwrap();
        let name = &line[..end];
        let family = family_of(&families, name).unwrap_or_else(|| panic!("a sample without a family: {line}"));
        if line.as_bytes()[end] == b'{' {
            let labels = &line[end + 1..line.rfind('}').unwrap()];
            for label in split_labels(labels) {
                families.get_mut(&family).unwrap().1.insert(label);
            }
        }
    }
    families
}

/// The label names of a rendered label set `a="x",b="y"` (values may hold escaped quotes).
fn split_labels(labels: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = labels.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        names.push(name.trim_start_matches(',').trim().to_string());
        assert_eq!(chars.next(), Some('"'), "{labels}");
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => {}
            }
        }
    }
    names
}

/// The family a series name belongs to: itself, or the histogram (or summary) it is the
/// `_bucket`, `_sum` or `_count` of.
fn family_of(families: &BTreeMap<String, (String, BTreeSet<String>)>, name: &str) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some((kind, _)) = families.get(base)
            && (kind == "histogram" || (kind == "summary" && suffix != "_bucket"))
        {
            return Some(base.to_string());
        }
    }
    None
}

/// What one PromQL expression names.
#[derive(Debug, Default, PartialEq)]
struct Names {
    /// Metric names, each with the label names of its own matchers (`m{a="x"}` → ("m", [a])).
    metrics: Vec<(String, Vec<String>)>,
    /// Label names in `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`, ….
    grouping: Vec<String>,
}

/// Aggregation operators: followed by `by`/`without` or `(`, never metric names.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names.
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Other keywords.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"];

/// The metric and label names of a PromQL expression: identifiers outside strings, `[…]`
/// ranges and `{…}` matchers that are neither functions (followed by `(`), aggregations,
/// keywords, nor Grafana variables (`$x`); label names from matchers and grouping lists.
fn promql_names(expr: &str) -> Names {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // A quoted string starting at `j` (its quote); returns the index after it.
    let skip_string = |j: usize| {
        let quote = chars[j];
        let mut k = j + 1;
        while k < chars.len() && chars[k] != quote {
            if chars[k] == '\\' && quote != '`' {
                k += 1;
            }
            k += 1;
        }
        k + 1
    };
    // A `{…}` matcher list at `j`: its label names and the index after it.
    let matchers = |j: usize| {
        let mut labels = Vec::new();
        let mut k = j + 1;
        let mut expect_name = true;
        while k < chars.len() && chars[k] != '}' {
            let c = chars[k];
            if c == '"' || c == '\'' || c == '`' {
                k = skip_string(k);
                continue;
            }
            if expect_name && ident_start(c) {
                let start = k;
                while k < chars.len() && ident_char(chars[k]) {
                    k += 1;
                }
                labels.push(chars[start..k].iter().collect::<String>());
                expect_name = false;
                continue;
            }
            if c == ',' {
                expect_name = true;
            }
            k += 1;
        }
        (labels, k + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // A matcher list without a metric name before it.
            let (labels, next) = matchers(i);
            names.grouping.extend(labels);
            i = next;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (0.99, 1e3, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    let mut k = next + 1;
                    while k < chars.len() && chars[k] != ')' {
                        if ident_start(chars[k]) {
                            let s = k;
                            while k < chars.len() && ident_char(chars[k]) {
                                k += 1;
                            }
                            names.grouping.push(chars[s..k].iter().collect());
                        } else {
                            k += 1;
                        }
                    }
                    i = k + 1;
                }
            } else if AGGREGATIONS.contains(&lower.as_str()) || KEYWORDS.contains(&lower.as_str()) {
                // Not a metric.
            } else if chars.get(next) == Some(&'(') {
                // A function call.
            } else if chars.get(next) == Some(&'{') {
                let (labels, after) = matchers(next);
                names.metrics.push((word, labels));
                i = after;
            } else {
                names.metrics.push((word, Vec::new()));
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_names_finds_metrics_and_labels_only() {
    let n = promql_names(
        r#"histogram_quantile(0.99, sum by (action, le) (rate(a_seconds_bucket{instance=~"$instance",code=~"[45].*(x"}[$__rate_interval])))"#,
    );
    assert_eq!(n.metrics, vec![("a_seconds_bucket".to_string(), vec!["instance".to_string(), "code".to_string()])]);
    assert_eq!(n.grouping, vec!["action", "le"]);
    let n = promql_names("sum without (x) (b_total) / on(y) group_left c_gauge > 0 and d offset 5m");
    let metrics: Vec<&str> = n.metrics.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(metrics, ["b_total", "c_gauge", "d"]);
    assert_eq!(n.grouping, vec!["x", "y"]);
    let n = promql_names(r#"count(sluice_x{a="b,c=\"d\"",e!="f"}) * 1e3"#);
    assert_eq!(n.metrics, vec![("sluice_x".to_string(), vec!["a".to_string(), "e".to_string()])]);
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("a panels array") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn the_dashboard_is_a_grafana_model_with_titled_queried_panels() {
    let text = std::fs::read_to_string(dashboard_path()).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("deploy/grafana/sluice.json parses");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a DS_PROMETHEUS data source variable of type prometheus"
    );
    let mut ids = BTreeSet::new();
    let panels = all_panels(&dashboard);
    assert!(panels.len() > 10, "{} panels", panels.len());
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "panel id {} twice", p["id"]);
        assert!(p["gridPos"]["w"].as_u64().is_some() && p["gridPos"]["h"].as_u64().is_some(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: the data source variable");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title}: no target"));
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title}: a target without expr");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}: refId twice");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: the target's data source");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_dashboard_is_served_and_every_family_has_a_panel() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk.txt");
    std::fs::write(&psk, format!("dev1:{PSK}\n")).unwrap();
    let (coap, coaps, admin) = (free_udp_port(), free_udp_port(), free_tcp_port());
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let config = format!(
        "coap:\n  bind: 127.0.0.1:{coap}\n  ack_timeout: 1s\ndtls:\n  bind: 127.0.0.1:{coaps}\n  psk_file: {}\nadmin:\n  bind: 127.0.0.1:{admin}\nmqtt:\n  broker: {}\n  publish_timeout: 3s\nrules:\n  - rule: {}\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
        psk.display(),
        broker.url(),
        cli::rule_package("senml").canonicalize().unwrap().display(),
    );
    let gw = run_gateway(dir, &config, admin_addr).await;

    // A publish, a read, a refused request, and a DTLS request: every family has samples.
    let base = format!("coap://127.0.0.1:{coap}");
    let out = coap_client(&["-m", "put", "-e", "21.5", &format!("{base}/ps/sensors/t1?clientid=dev-42")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let out = coap_client(&["-m", "get", &format!("{base}/ps/sensors/t1?clientid=dev-42")]).await;
    assert!(out.stdout.contains("21.5"), "{out:?}");
    let out = coap_client(&["-m", "put", "-e", "x", &format!("{base}/ps/sensors/%23?clientid=dev-42")]).await;
    assert!(out.all().contains("4.00"), "{out:?}");
    let target = format!("coaps://127.0.0.1:{coaps}/.well-known/core");
    let out = coap_client_bin("coap-client-openssl", &["-u", "dev1", "-k", PSK, &target]).await;
    assert!(out.stdout.contains("</mqtt>"), "{out:?}");

    let (status, text) = get(admin_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let served = families(&text);
    for family in [
        "sluice_coap_requests_total",
        "sluice_request_duration_seconds",
        "sluice_dtls_handshakes_total",
        "sluice_rule_calls_total",
    ] {
        assert!(served.contains_key(family), "{family} is not served:\n{text}");
    }
    assert!(text.contains("sluice_rule_calls_total{rule=\"senml\""), "{text}");

    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    // Labels Prometheus adds to every scraped series.
    let target_labels = ["instance", "job"];
    for p in all_panels(&dashboard) {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let names = promql_names(expr);
            assert!(!names.metrics.is_empty(), "{title}: no metric in {expr}");
            let mut labels_here: BTreeSet<String> = target_labels.iter().map(|l| l.to_string()).collect();
            for (metric, matched) in &names.metrics {
                let Some(family) = family_of(&served, metric) else {
                    problems.push(format!("{title}: {metric} is not served (expr {expr})"));
                    continue;
                };
                used.insert(family.clone());
                let mut labels = served[&family].1.clone();
                if metric.ends_with("_bucket") {
                    labels.insert("le".into());
                }
                for label in matched {
                    if !labels.contains(label) && !target_labels.contains(&label.as_str()) {
                        problems.push(format!("{title}: {metric} has no label {label} (expr {expr})"));
                    }
                }
                labels_here.extend(labels);
            }
            for label in &names.grouping {
                if !labels_here.contains(label) {
                    problems.push(format!("{title}: no series of {expr} has the label {label}"));
                }
            }
        }
    }
    for family in served.keys() {
        if !used.contains(family) {
            problems.push(format!("{family} is served but no panel shows it"));
        }
    }
    assert!(problems.is_empty(), "{}\n\n/metrics:\n{text}\n\nlog:\n{}", problems.join("\n"), gw.log());
    println!("{} families served, all on the dashboard: {:?}", served.len(), used);
    drop(gw);
}
