//! The admin API (issue 16) against a real gateway (`sluice run --config FILE`) with a token:
//! devices publish, observe and get refused over libcoap's client, then every endpoint of
//! host/src/admin/openapi.json is called and its answer checked against the description (status
//! documented, media type, every required field with its type, recursively) and against what
//! the devices did: paging and filters, one client's observers and refusals, ending a client
//! (its observer gets a last 4.04, its session token stops working), a trace streaming the
//! device's next request, the CLI's `sluice trace`. Without the token everything but `/healthz`
//! and the dashboard's files is 401; a cross-site `Origin` on POST/DELETE is 403; no secret of
//! the config appears in any answer. The endpoints called must be exactly those described, so
//! an endpoint added without a test fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The description the gateway serves at `/openapi.json` (the same file, `include_str!`).
const OPENAPI: &str = include_str!("../src/admin/openapi.json");

const TOKEN: &str = "adm-Tok-31337-9f8e7d6c";
const BROKER_PASSWORD: &str = "mqtt-Pass-7777-q";
const SESSIONS_SECRET: &str = "sess-Secret-0123456789abcdef";
const USER_PASSWORD: &str = "pw-Zebra-4242-u";

/// The endpoints anyone may call without the token.
const PUBLIC: [(&str, &str); 4] =
    [("GET", "/"), ("GET", "/dashboard/app.js"), ("GET", "/dashboard/style.css"), ("GET", "/healthz")];

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
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

/// Writes `config` into `dir`, starts the binary on it and waits until `admin` answers
/// `/healthz` with 200.
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("sluice run exited ({status}):\n{}", running.log());
        }
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && http(admin, "GET", "/healthz", &[]).await.status == 200
        {
            return running;
        }
        assert!(Instant::now() < deadline, "the gateway never got healthy:\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    /// A header's value (the name in any case).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.head, self.body))
    }

    /// The `error` of a JSON error answer.
    fn error(&self) -> String {
        let json = self.json();
        let error = json["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", self.body));
        assert!(error.len() > 10, "an error that names no fix: {error:?}");
        error.to_string()
    }
}

/// The request head for `method path` with `headers` (and `Content-Length: 0` for POST).
fn request_head(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if matches!(method, "POST" | "PUT" | "DELETE") {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Splits a whole answer into its head and (de-chunked) body.
fn parse(raw: &[u8]) -> Resp {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no end of head in {:?}", String::from_utf8_lossy(raw));
    });
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut body = raw[end + 4..].to_vec();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status? {head}"));
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size.min(rest.len())]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    Resp { status, head, body: String::from_utf8_lossy(&body).into_owned() }
}

/// One request, one connection.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request_head(addr, method, path, headers).as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no end of answer in 20 s"))
        .unwrap();
    parse(&raw)
}

/// The OpenAPI description, and checks of answers against it.
struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Spec {
        Spec { doc: serde_json::from_str(OPENAPI).expect("host/src/admin/openapi.json parses") }
    }

    /// Every (METHOD, path) it describes.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    out.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not in openapi.json");
        op
    }

    /// True when the operation needs no token (`security: []`).
    fn public(&self, method: &str, path: &str) -> bool {
        let security = self.operation(method, path).get("security").unwrap_or(&self.doc["security"]);
        security.as_array().is_some_and(Vec::is_empty)
    }

    /// Follows `$ref`s.
    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(r) = schema["$ref"].as_str() {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("an external $ref {r}"));
            schema = self.doc.pointer(pointer).unwrap_or_else(|| panic!("a dangling $ref {r}"));
        }
        schema
    }

    /// What is wrong with `value` for `schema` (types, required fields, enums, bounds).
    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == true {
            return;
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.validate(part, value, at, errors);
        }
        if let Some(kind) = schema["type"].as_str() {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            if !ok {
                errors.push(format!("{at}: expected {kind}, got {value}"));
                return;
            }
        }
        if let Some(choices) = schema["enum"].as_array()
            && !choices.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {choices:?}"));
        }
        if let (Some(n), Some(min)) = (value.as_f64(), schema["minimum"].as_f64())
            && n < min
        {
            errors.push(format!("{at}: {n} < minimum {min}"));
        }
        if let (Some(n), Some(max)) = (value.as_f64(), schema["maximum"].as_f64())
            && n > max
        {
            errors.push(format!("{at}: {n} > maximum {max}"));
        }
        if let Some(object) = value.as_object() {
            for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !object.contains_key(key) {
                    errors.push(format!("{at}: no field {key:?} (has {:?})", object.keys().collect::<Vec<_>>()));
                }
            }
            for (key, v) in object {
                if let Some(property) = schema["properties"].get(key) {
                    self.validate(property, v, &format!("{at}.{key}"), errors);
                } else if schema["additionalProperties"].is_object() {
                    self.validate(&schema["additionalProperties"], v, &format!("{at}.{key}"), errors);
                }
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errors.push(format!("{at}: {} items > maxItems {max}", items.len()));
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter().enumerate() {
                    self.validate(&schema["items"], item, &format!("{at}[{i}]"), errors);
                }
            }
        }
    }

    /// Checks an answer of `METHOD template`: its status is documented, its media type is the
    /// one documented, and a JSON body (each line of NDJSON) fits the schema. The JSON (an
    /// array of the lines for NDJSON; null for other media).
    fn check(&self, method: &str, template: &str, resp: &Resp) -> Value {
        let what = format!("{method} {template} → {}", resp.status);
        let documented = &self.operation(method, template)["responses"][resp.status.to_string()];
        assert!(documented.is_object(), "{what}: this status is not documented\n{}\n{}", resp.head, resp.body);
        let documented = self.resolve(documented);
        let Some(content) = documented["content"].as_object() else { return Value::Null };
        let media = resp.header("content-type").unwrap_or_default();
        let media = media.split(';').next().unwrap().trim().to_ascii_lowercase();
        let schema = content.get(&media).map(|c| &c["schema"]);
        let schema =
            schema.unwrap_or_else(|| panic!("{what}: Content-Type {media:?}, documented {:?}", content.keys()));
        let mut errors = Vec::new();
        let value = match media.as_str() {
            "application/json" => {
                let value = resp.json();
                self.validate(schema, &value, "$", &mut errors);
                value
            }
            "application/x-ndjson" => {
                let lines: Vec<Value> = resp
                    .body
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: a line not JSON ({e}): {l}")))
                    .collect();
                let start = json!({"$ref": "#/components/schemas/TraceStart"});
                for (i, line) in lines.iter().enumerate() {
                    let schema = if i == 0 { &start } else { schema };
                    self.validate(schema, line, &format!("line {i}"), &mut errors);
                }
                Value::Array(lines)
            }
            _ => Value::Null,
        };
        assert!(
            errors.is_empty(),
            "{what}: the answer does not fit openapi.json:\n{}\n{}",
            errors.join("\n"),
            resp.body
        );
        value
    }
}

/// The admin API with the token, recording what was called.
struct Api {
    addr: SocketAddr,
    spec: Spec,
    exercised: BTreeSet<(String, String)>,
    /// Every answer's body, to look for secrets.
    bodies: Vec<String>,
}

impl Api {
    /// `METHOD path` (an instance of `template`) with the token and `headers`; the answer,
    /// checked against openapi.json, and its JSON.
    async fn call(&mut self, method: &str, template: &str, path: &str, headers: &[(&str, &str)]) -> (Resp, Value) {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let resp = http(self.addr, method, path, &all).await;
        self.record(method, template, path, &resp);
        let value = self.spec.check(method, template, &resp);
        (resp, value)
    }

    fn record(&mut self, method: &str, template: &str, path: &str, resp: &Resp) {
        self.exercised.insert((method.to_string(), template.to_string()));
        self.bodies.push(format!("{method} {path}: {}\n{}", resp.head, resp.body));
    }

    /// GET `/clients` with `query`: the client ids of the page, and the page.
    async fn ids(&mut self, query: &str) -> (Vec<String>, Value) {
        let (resp, page) = self.call("GET", "/clients", &format!("/clients{query}"), &[]).await;
        assert_eq!(resp.status, 200, "{query}: {}", resp.body);
        let ids = page["clients"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap().to_string());
        (ids.collect(), page)
    }

    /// `GET /clients/ID/trace?seconds=N`, running `during` once the first line has arrived:
    /// the answer (its lines checked), the lines, how long the stream lasted.
    async fn trace<F: Future<Output = ()>>(
        &mut self,
        id: &str,
        seconds: u64,
        during: F,
    ) -> (Resp, Vec<Value>, Duration) {
        let path = format!("/clients/{id}/trace?seconds={seconds}");
        let auth = format!("Bearer {TOKEN}");
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = request_head(self.addr, "GET", &path, &[("Authorization", &auth)]);
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the first line (`{"tracing": …}`) is complete.
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if text.find("\"tracing\"").is_some_and(|at| text[at..].contains('\n')) {
                break;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("GET {path}: no first line in 10 s: {text}"))
                .unwrap();
            assert!(n > 0, "GET {path}: closed before its first line: {text}");
            raw.extend_from_slice(&buf[..n]);
        }
        during.await;
        tokio::time::timeout(Duration::from_secs(seconds + 10), stream.read_to_end(&mut raw))
            .await
            .unwrap_or_else(|_| panic!("GET {path}: the stream did not end {seconds} s later"))
            .unwrap();
        let elapsed = started.elapsed();
        let resp = parse(&raw);
        self.record("GET", "/clients/{id}/trace", &path, &resp);
        let lines = self.spec.check("GET", "/clients/{id}/trace", &resp);
        (resp, lines.as_array().cloned().unwrap_or_default(), elapsed)
    }
}

/// The clients of a page, by id.
fn client<'a>(page: &'a Value, id: &str) -> &'a Value {
    let clients = page["clients"].as_array().unwrap();
    clients.iter().find(|c| c["client_id"] == id).unwrap_or_else(|| panic!("{id} not in {page}"))
}

/// An instance of a path template (`{id}` → dev-42; a trace of one second).
fn instance(template: &str) -> String {
    let path = template.replace("{id}", "dev-42");
    if template.ends_with("/trace") { format!("{path}?seconds=1") } else { path }
}

/// The value of one series in a `/metrics` text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `coap-client-notls` succeeded (no 4.xx/5.xx printed).
fn ok(out: &ClientOutput) {
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_described_with_the_token() {
    let started_ms = now_ms();
    let broker = Mosquitto::start();
    let (coap, admin_port) = (free_udp_port(), free_tcp_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let config = format!(
        "coap:\n  bind: 127.0.0.1:{coap}\n  ack_timeout: 1s\nadmin:\n  bind: 127.0.0.1:{admin_port}\n  token: {TOKEN}\nmqtt:\n  broker: {}\n  username: gateway\n  password: {BROKER_PASSWORD}\n  publish_timeout: 3s\nsessions:\n  secret: {SESSIONS_SECRET}\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n      anonymous_publish: [\"sensors/#\"]\n      users:\n        - username: tom\n          password: {USER_PASSWORD}\n          publish: [\"sensors/#\"]\n          subscribe: [\"sensors/#\"]\n",
        broker.url()
    );
    let gw = run_gateway(tempfile::tempdir().unwrap(), &config, admin).await;
    let base = format!("coap://127.0.0.1:{coap}");

    // dev-42 publishes a value, then is refused a topic outside its ACL.
    ok(&coap_client(&["-m", "put", "-e", "21.5", &format!("{base}/ps/sensors/t1?clientid=dev-42")]).await);
    let refused = coap_client(&["-m", "put", "-e", "1", &format!("{base}/ps/private/x?clientid=dev-42")]).await;
    assert!(refused.all().contains("4.03"), "{refused:?}");
    // sess-9 logs in (connection mode) and publishes with its token.
    let login = format!("{base}/mqtt/connection?clientid=sess-9&username=tom&password={USER_PASSWORD}");
    let out = coap_client(&["-m", "post", &login]).await;
    let session_token = out.stdout.trim().to_string();
    assert!(session_token.len() >= 16 && !session_token.contains(' '), "{out:?}");
    let with_token = format!("{base}/mqtt/sensors/s9?clientid=sess-9&token={session_token}");
    ok(&coap_client(&["-m", "put", "-e", "7", &with_token]).await);
    // watcher-7 observes.
    let watched = format!("{base}/ps/sensors/t1?clientid=watcher-7");
    let mut watcher = coap_client_spawn(&["-s", "60", "-m", "get", &watched]);

    let mut api = Api { addr: admin, spec: Spec::load(), exercised: BTreeSet::new(), bodies: Vec::new() };
    let auth = format!("Bearer {TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = http(admin, "GET", "/metrics", &[("Authorization", &auth)]).await.body;
        if value(&text, "sluice_observers") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "watcher-7 never registered:\n{text}\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without the token (or with a wrong one): 401 everywhere but the public files.
    let mut public = BTreeSet::new();
    for (method, template) in api.spec.operations() {
        let path = instance(&template);
        if api.spec.public(&method, &template) {
            public.insert((method.clone(), template.clone()));
            let resp = http(admin, &method, &path, &[]).await;
            assert_eq!(resp.status, 200, "{method} {path} without the token: {}", resp.body);
            continue;
        }
        for headers in [&[][..], &[("Authorization", "Bearer wrong-token")][..], &[("Authorization", TOKEN)][..]] {
            let resp = http(admin, &method, &path, headers).await;
            assert_eq!(resp.status, 401, "{method} {path} with {headers:?}: {}\n{}", resp.head, resp.body);
            assert!(resp.header("www-authenticate").is_some_and(|v| v.contains("Bearer")), "{}", resp.head);
            resp.error();
            api.spec.check(&method, &template, &resp);
        }
    }
    let expected: BTreeSet<(String, String)> = PUBLIC.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(public, expected, "the endpoints openapi.json marks public (security: [])");

    // /healthz, /metrics, /rules, /config, /overview.
    let (resp, _) = api.call("GET", "/healthz", "/healthz", &[]).await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok\n"));
    let (resp, _) = api.call("GET", "/metrics", "/metrics", &[]).await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("# TYPE sluice_observers gauge\n"), "{}", resp.body);
    assert_eq!(value(&resp.body, "sluice_observers"), Some(1.0), "{}", resp.body);
    let (resp, rules) = api.call("GET", "/rules", "/rules", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(rules["rules"][0]["name"], "builtin:emqx", "{rules}");
    assert_eq!(rules["rules"][0]["kind"], "native", "{rules}");
    assert_eq!(rules["last_reload"]["count"], 0, "{rules}");

    let (resp, config) = api.call("GET", "/config", "/config", &[]).await;
    assert_eq!(resp.status, 200);
    for secret in [TOKEN, BROKER_PASSWORD, SESSIONS_SECRET, USER_PASSWORD] {
        assert!(!resp.body.contains(secret), "{secret} in GET /config: {}", resp.body);
    }
    assert!(resp.body.contains("<redacted>"), "secrets are replaced by <redacted>: {}", resp.body);
    assert_eq!(config["admin"]["bind"], admin.to_string(), "{config}");
    assert!(resp.body.contains("builtin:emqx") && resp.body.contains(&broker.port.to_string()), "{config}");

    let (resp, overview) = api.call("GET", "/overview", "/overview", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(overview["version"], env!("CARGO_PKG_VERSION"), "{overview}");
    assert_eq!(overview["clients"], 3, "dev-42, sess-9, watcher-7: {overview}");
    assert_eq!(overview["observers"], 1, "{overview}");
    assert_eq!(overview["sessions"], 1, "{overview}");
    assert_eq!(overview["mqtt"]["connected"], true, "{overview}");
    assert_eq!(overview["mqtt"]["broker"], format!("127.0.0.1:{}", broker.port), "{overview}");
    assert_eq!(overview["dtls"]["enabled"], false, "{overview}");
    assert!(overview["requests_total"].as_u64().unwrap() >= 5, "{overview}");
    assert!(overview["responses_by_code"]["4.03"].as_u64() >= Some(1), "{overview}");
    assert!(overview["responses_by_code"]["2.04"].as_u64() >= Some(1), "{overview}");
    assert_eq!(overview["reloads"]["count"], 0, "{overview}");
    assert_eq!(overview["reloads"]["result"], "none", "{overview}");
    let uptime = overview["uptime_s"].as_f64().unwrap();
    assert!((0.0..120.0).contains(&uptime), "{overview}");

    // /clients: sorted, filtered, paged.
    let (ids, page) = api.ids("").await;
    assert_eq!(ids, ["dev-42", "sess-9", "watcher-7"], "{page}");
    assert_eq!(page["total"], 3, "{page}");
    assert_eq!(page["next"], Value::Null, "{page}");
    let dev = client(&page, "dev-42");
    assert!(dev["user"].is_null() || dev["user"] == "", "anonymous: {dev}");
    assert_eq!(dev["transport"], "udp", "{dev}");
    assert_eq!(dev["identity"], Value::Null, "{dev}");
    assert!(dev["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{dev}");
    assert!(dev["requests"].as_u64().unwrap() >= 2 && dev["errors"].as_u64().unwrap() >= 1, "{dev}");
    assert_eq!((dev["observers"].clone(), dev["session"].clone()), (json!(0), Value::Null), "{dev}");
    let (since, seen) = (dev["connected_since_ms"].as_u64().unwrap(), dev["last_seen_ms"].as_u64().unwrap());
    assert!(started_ms <= since && since <= seen && seen <= now_ms(), "Unix milliseconds: {dev}");
    let sess = client(&page, "sess-9");
    assert_eq!(sess["user"], "tom", "{sess}");
    let (opened, used) = (sess["session"]["opened_ms"].as_u64(), sess["session"]["last_seen_ms"].as_u64());
    let (opened, used) = (opened.expect("sess-9 has a session"), used.unwrap());
    assert!(started_ms <= opened && opened <= used && used <= now_ms(), "{sess}");
    assert_eq!(client(&page, "watcher-7")["observers"], 1, "{page}");

    assert_eq!(api.ids("?prefix=dev").await.0, ["dev-42"]);
    assert_eq!(api.ids("?user=tom").await.0, ["sess-9"]);
    assert_eq!(api.ids("?transport=udp").await.0.len(), 3);
    assert!(api.ids("?transport=dtls").await.0.is_empty());
    assert_eq!(api.ids("?prefix=watcher&transport=udp&limit=10").await.0, ["watcher-7"]);
    let (first, page) = api.ids("?limit=1").await;
    assert_eq!(first, ["dev-42"], "{page}");
    assert_eq!(page["next"], "dev-42", "{page}");
    assert_eq!(page["total"], 3, "{page}");
    let mut walked = first;
    let mut next = page["next"].as_str().map(str::to_string);
    while let Some(after) = next {
        assert!(walked.len() <= 3, "paging does not end: {walked:?}");
        let (ids, page) = api.ids(&format!("?limit=1&after={after}")).await;
        assert!(ids.len() <= 1, "{page}");
        walked.extend(ids);
        next = page["next"].as_str().map(str::to_string);
    }
    assert_eq!(walked, ["dev-42", "sess-9", "watcher-7"]);
    let (resp, _) = api.call("GET", "/clients", "/clients?limit=abc", &[]).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    let error = resp.error();
    assert!(error.contains("limit"), "{error}");

    // One client: its observers and refusals.
    let (resp, dev) = api.call("GET", "/clients/{id}", "/clients/dev-42", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(dev["client_id"], "dev-42");
    assert!(dev["observer_list"].as_array().unwrap().is_empty(), "{dev}");
    let refusal = dev["refusals"].as_array().unwrap().last().cloned().unwrap_or_else(|| panic!("no refusal: {dev}"));
    assert_eq!((refusal["method"].as_str(), refusal["code"].as_str()), (Some("PUT"), Some("4.03")), "{refusal}");
    assert_eq!(refusal["path"].as_str().unwrap().trim_start_matches('/'), "ps/private/x", "{refusal}");
    assert!(!refusal["diagnostic"].as_str().unwrap().is_empty(), "{refusal}");
    let at = refusal["at_ms"].as_u64().unwrap();
    assert!(started_ms <= at && at <= now_ms(), "{refusal}");
    let (resp, encoded) = api.call("GET", "/clients/{id}", "/clients/dev%2D42", &[]).await;
    assert_eq!((resp.status, &encoded["client_id"]), (200, &json!("dev-42")), "a percent-encoded id");
    let (resp, watcher_detail) = api.call("GET", "/clients/{id}", "/clients/watcher-7", &[]).await;
    assert_eq!(resp.status, 200);
    let observers = watcher_detail["observer_list"].as_array().unwrap();
    assert_eq!(observers.len(), 1, "{watcher_detail}");
    assert_eq!(observers[0]["filter"], "sensors/t1", "{watcher_detail}");
    let (resp, _) = api.call("GET", "/clients/{id}", "/clients/nobody-1", &[]).await;
    assert_eq!(resp.status, 404);
    let error = resp.error();
    assert!(error.contains("nobody-1") || error.contains("/clients"), "a 404 that names the fix: {error}");
    let (resp, _) = api.call("DELETE", "/clients/{id}", "/clients/nobody-1", &[]).await;
    assert_eq!(resp.status, 404);
    resp.error();

    // A method a path does not take: 405 with an error.
    let resp = http(admin, "PUT", "/clients/dev-42", &[("Authorization", &auth)]).await;
    assert_eq!(resp.status, 405, "{}", resp.body);
    api.spec.check("DELETE", "/clients/{id}", &resp);
    resp.error();

    // Cross-site requests are refused; the observer is still there.
    let evil = [("Origin", "http://evil.example")];
    let (resp, _) = api.call("DELETE", "/clients/{id}", "/clients/watcher-7", &evil).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    resp.error();
    let (resp, _) = api.call("POST", "/rules/reload", "/rules/reload", &evil).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    resp.error();
    let (_, overview) = api.call("GET", "/overview", "/overview", &[]).await;
    assert_eq!((overview["observers"].clone(), overview["reloads"]["count"].clone()), (json!(1), json!(0)));

    // A trace of dev-42: the first line, then its next request.
    let again = format!("{base}/ps/sensors/t1?clientid=dev-42");
    let put = async { ok(&coap_client(&["-m", "put", "-e", "21.6", &again]).await) };
    let (resp, lines, elapsed) = api.trace("dev-42", 3, put).await;
    assert_eq!(resp.status, 200);
    assert!(elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(lines.first(), Some(&json!({"tracing": "dev-42", "seconds": 3})), "{}", resp.body);
    let put = lines.iter().skip(1).find(|l| l["method"] == "PUT" && l["code"] == "2.04");
    let put = put.unwrap_or_else(|| panic!("no 2.04 PUT line in the trace:\n{}", resp.body));
    assert_eq!(put["client_id"], "dev-42", "{put}");
    assert_eq!(put["path"].as_str().unwrap().trim_start_matches('/'), "ps/sensors/t1", "{put}");
    assert!(put["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{put}");
    let decisions = put["decisions"].as_array().unwrap();
    assert!(decisions.iter().any(|d| d["rule"] == "builtin:emqx"), "{put}");
    for hook in ["authenticate", "route"] {
        assert!(decisions.iter().any(|d| d["hook"] == hook && d["rule"] == "builtin:emqx"), "{hook}: {put}");
    }
    assert!(put["mqtt"].is_string(), "a publish says what the broker did: {put}");
    assert!(lines.iter().skip(1).all(|l| l["client_id"] == "dev-42"), "only dev-42's requests: {}", resp.body);

    // A reload from the same origin.
    let origin = format!("http://{admin}");
    let same = [("Origin", origin.as_str())];
    let (resp, rules) = api.call("POST", "/rules/reload", "/rules/reload", &same).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(rules["last_reload"]["count"], 1, "{rules}");
    assert_eq!(rules["last_reload"]["result"], "ok", "{rules}");
    assert_eq!(rules["rules"][0]["name"], "builtin:emqx", "{rules}");

    // Ending watcher-7: its observer gets a last 4.04 and is gone.
    let (resp, ended) = api.call("DELETE", "/clients/{id}", "/clients/watcher-7", &same).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let fields = [&ended["client_id"], &ended["observers_ended"], &ended["session_closed"]];
    assert_eq!(fields, [&json!("watcher-7"), &json!(1), &json!(false)], "{ended}");
    let (resp, after) = api.call("GET", "/clients/{id}", "/clients/watcher-7", &[]).await;
    assert!(resp.status == 404 || after["observers"] == 0, "{}", resp.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = http(admin, "GET", "/metrics", &[("Authorization", &auth)]).await.body;
        if value(&text, "sluice_observers") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "sluice_observers did not drop to 0:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if tokio::time::timeout(Duration::from_secs(3), watcher.wait()).await.is_err() {
        watcher.kill().await.unwrap();
    }
    let out = watcher.wait_with_output().await.unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.contains("4.04") || out.contains("ended by an operator"), "watcher-7 got no last 4.04: {out:?}");

    // Ending sess-9 closes its session: its token answers 4.01.
    let (resp, ended) = api.call("DELETE", "/clients/{id}", "/clients/sess-9", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let fields = [&ended["client_id"], &ended["observers_ended"], &ended["session_closed"]];
    assert_eq!(fields, [&json!("sess-9"), &json!(0), &json!(true)], "{ended}");
    let out = coap_client(&["-m", "put", "-e", "8", &with_token]).await;
    assert!(out.all().contains("4.01"), "the closed session's token still works: {out:?}");
    let (_, overview) = api.call("GET", "/overview", "/overview", &[]).await;
    assert_eq!((overview["observers"].clone(), overview["sessions"].clone()), (json!(0), json!(0)), "{overview}");

    // The description itself, and the dashboard's files.
    let (resp, served) = api.call("GET", "/openapi.json", "/openapi.json", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(served, api.spec.doc, "GET /openapi.json serves host/src/admin/openapi.json");
    for path in ["/", "/dashboard/app.js", "/dashboard/style.css"] {
        let (resp, _) = api.call("GET", path, path, &[]).await;
        assert_eq!(resp.status, 200, "{path}");
        assert!(!resp.body.trim().is_empty(), "{path} is empty");
    }
    let (resp, _) = api.call("GET", "/", "/", &[]).await;
    assert!(resp.body.to_ascii_lowercase().contains("<html"), "{}", resp.body);

    // No secret in any answer.
    for body in &api.bodies {
        for secret in [TOKEN, BROKER_PASSWORD, SESSIONS_SECRET, USER_PASSWORD, session_token.as_str()] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
    }
    // Every endpoint described was called, and nothing else.
    assert_eq!(api.exercised, api.spec.operations(), "the endpoints called and those of openapi.json");
    drop(gw);
}

/// `sluice trace ID --admin ADDR --token T --seconds N` prints the device's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_trace_prints_the_requests_of_a_device() {
    let broker = Mosquitto::start();
    let (coap, admin_port) = (free_udp_port(), free_tcp_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let config = format!(
        "coap:\n  bind: 127.0.0.1:{coap}\nadmin:\n  bind: 127.0.0.1:{admin_port}\n  token: {TOKEN}\nmqtt:\n  broker: {}\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
        broker.url()
    );
    let gw = run_gateway(tempfile::tempdir().unwrap(), &config, admin).await;
    let target = format!("coap://127.0.0.1:{coap}/ps/sensors/t1?clientid=dev-42");
    ok(&coap_client(&["-m", "put", "-e", "21.5", &target]).await);

    let help = cli::ok(&["trace", "--help"]);
    for flag in ["--admin", "--token", "--seconds"] {
        assert!(help.contains(flag), "sluice trace --help: {help}");
    }
    let admin_text = admin.to_string();
    let trace = tokio::process::Command::new(cli::SLUICE)
        .args(["trace", "dev-42", "--admin", &admin_text, "--token", TOKEN, "--seconds", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Two requests inside the three seconds (the first may come before the trace is set up).
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        ok(&coap_client(&["-m", "put", "-e", "21.6", &target]).await);
    }
    let out = tokio::time::timeout(Duration::from_secs(15), trace.wait_with_output())
        .await
        .expect("sluice trace did not end after --seconds 3")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sluice trace failed: {all}\n{}", gw.log());
    assert!(stdout.contains("ps/sensors/t1") && stdout.contains("2.04"), "no request in: {all}");
    assert!(!all.contains(TOKEN), "the token in the output: {all}");

    // A wrong token: it fails, saying so.
    let out = cli::sluice(&["trace", "dev-42", "--admin", &admin_text, "--token", "wrong", "--seconds", "1"]);
    assert!(!out.status.success(), "{}", cli::text(&out));
    assert!(cli::text(&out).contains("401") || cli::text(&out).contains("token"), "{}", cli::text(&out));
    drop(gw);
}

/// A non-loopback admin address without a token serves the read-only endpoints only (what a
/// container's probes and Prometheus need) and refuses the rest with the fix; with
/// `admin.token_file`, everything, behind the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_bind_needs_a_token() {
    let broker = Mosquitto::start();
    let (coap, admin_port) = (free_udp_port(), free_tcp_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let config = |admin_yaml: &str| {
        format!(
            "coap:\n  bind: 127.0.0.1:{coap}\nadmin:\n  bind: 0.0.0.0:{admin_port}\n{admin_yaml}mqtt:\n  broker: {}\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
            broker.url()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = run_gateway(dir, &config(""), admin).await;
    for path in ["/healthz", "/metrics", "/rules", "/overview"] {
        let resp = http(admin, "GET", path, &[]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.body);
    }
    for (method, path) in [("GET", "/clients"), ("GET", "/config"), ("DELETE", "/clients/x"), ("POST", "/rules/reload")]
    {
        let resp = http(admin, method, path, &[]).await;
        assert_eq!(resp.status, 403, "{method} {path}: {}", resp.body);
        assert!(resp.body.contains("set admin.token"), "{method} {path}: {}", resp.body);
    }
    drop(gw);
    // The next gateway takes the same port once this one is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(admin).await.is_ok() {
        assert!(Instant::now() < deadline, "the first gateway did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let token_file = dir.path().join("admin.token");
    let gw = run_gateway(dir, &config(&format!("  token_file: {}\n", token_file.display())), admin).await;
    let resp = http(admin, "GET", "/metrics", &[]).await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    let auth = format!("Bearer {TOKEN}");
    let resp = http(admin, "GET", "/metrics", &[("Authorization", &auth)]).await;
    assert_eq!(resp.status, 200, "the token of admin.token_file (its newline ignored): {}", resp.body);
    drop(gw);
}
