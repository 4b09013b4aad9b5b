//! The browser dashboard against a real `sluice run`: a device publishes and another observes
//! with libcoap's client; headless Chromium (driven over the DevTools protocol) shows both in
//! the clients table, finds them by prefix, shows the observer on the client's page and kicks
//! it, which the gateway confirms; the rules page reloads; a gateway with a token asks for it.
//! Screenshots land in target/dashboard-screenshots/ (asserted on text, never on pixels).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::cli::{SLUICE, workspace};
use common::free_tcp_port;
use serde_json::{Value, json};

/// How long one wait for the page may take.
const WAIT: Duration = Duration::from_secs(15);

/// `sluice run --config FILE` on ephemeral ports, its log in a file, stopped on drop.
struct Gateway {
    child: Child,
    log: PathBuf,
    coap: u16,
    admin: u16,
}

impl Gateway {
    /// `extra_admin` is more YAML for the `admin:` section (say `token: …`).
    fn start(dir: &Path, extra_admin: &str) -> Gateway {
        let coap = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let admin = free_tcp_port();
        let config = dir.join("sluice.yaml");
        std::fs::write(
            &config,
            format!(
                "coap:\n  bind: 127.0.0.1:{coap}\nmqtt:\n  embedded_bind: 127.0.0.1:{}\nadmin:\n  bind: 127.0.0.1:{admin}\n{extra_admin}rules:\n  - rule: builtin:emqx\n    config: {{anonymous: true}}\n",
                free_tcp_port()
            ),
        )
        .unwrap();
        let log = dir.join("sluice.log");
        let child = Command::new(SLUICE)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let gateway = Gateway { child, log, coap, admin };
        let deadline = Instant::now() + WAIT;
        while http(gateway.admin, "GET", "/healthz", None).map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "the gateway never became healthy:\n{}", gateway.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn coap_url(&self, path: &str) -> String {
        format!("coap://127.0.0.1:{}/{path}", self.coap)
    }

    fn dashboard(&self) -> String {
        format!("http://127.0.0.1:{}/", self.admin)
    }

    /// GET on the admin API (no token); (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, None).unwrap_or_else(|| panic!("no answer to GET {path}:\n{}", self.log()))
    }

    /// The value of one `/metrics` series, `name{labels}` exactly as rendered.
    fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until `series` reads `expected`.
    fn settles(&self, series: &str, expected: f64) {
        let deadline = Instant::now() + WAIT;
        while self.metric(series) != Some(expected) {
            assert!(Instant::now() < deadline, "{series} never read {expected}:\n{}", self.get("/metrics").1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM first: the gateway stops cleanly.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (the admin API closes each connection); (status, body), `None` when
/// nothing answers.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A background process (libcoap's observer), killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium in its own process group (its helpers with it), killed on drop.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Launches it; returns it and the browser's DevTools websocket address.
    fn launch() -> (Chromium, String) {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("chromium is not installed: run scripts/test.sh, which installs it");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads (and keeps draining) its standard error; sends the DevTools line, or its
        // output so far when it ends without one.
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(Ok(url.trim().to_string()));
                        sent = true;
                    } else {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(seen));
            }
        });
        let chromium = Chromium { child, _profile: profile };
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(url)) => url,
            Ok(Err(output)) => panic!("chromium ended without a DevTools address:\n{output}"),
            Err(_) => panic!("chromium printed no DevTools address in 30 s"),
        };
        (chromium, url)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The browser's process group: it and the helpers it started.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol client on the browser's websocket, attached to one page (flat session).
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let authority = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).unwrap();
        let stream = TcpStream::connect(authority).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (ws, _) = tungstenite::client(url, stream).unwrap();
        let mut cdp = Cdp { ws, next_id: 0, session: None };
        let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = cdp.call("Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        cdp.call("Page.enable", json!({}));
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        cdp
    }

    /// Sends one command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws.send(tungstenite::Message::text(message.to_string())).unwrap();
        loop {
            let frame = self.ws.read().unwrap_or_else(|e| panic!("DevTools: no answer to {method}: {e}"));
            let tungstenite::Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "DevTools {method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Polls `expression` until `done` holds for its value (15 s at most); returns the value.
    fn wait(&mut self, what: &str, expression: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(expression);
            if done(&value) {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "the page never showed {what}; last {expression} = {value}\npage text:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait("a loaded document", "document.readyState", |v| v == "complete");
    }

    /// Text of the first element matching `selector` (null when there is none).
    fn text(&mut self, selector: &str) -> Value {
        self.eval(&format!("(e => e ? e.textContent.trim() : null)(document.querySelector({}))", json!(selector)))
    }

    /// A PNG of the page into target/dashboard-screenshots/NAME.png.
    fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = workspace().join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// The texts of each row's cells of a table's body (`#id tbody tr`).
fn rows_js(table: &str) -> String {
    format!(
        "[...document.querySelectorAll('{table} tbody tr:not(.empty)')].map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
}

/// The first cells (the client ids) of the clients table.
const CLIENT_IDS: &str =
    "[...document.querySelectorAll('#clients-table tbody tr:not(.empty)')].map(r => r.cells[0].textContent.trim())";

/// `coap-client-notls ARGS` once (with a 10 s cap on its waits); its output.
fn coap_client(args: &[&str]) -> String {
    let out = Command::new("coap-client-notls")
        .args(["-B", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("coap-client-notls is not installed: run scripts/test.sh");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_dashboard_lists_clients_shows_an_observer_and_kicks_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), "");

    // A device publishes; another observes the same topic in the background.
    let out = coap_client(&["-m", "put", "-e", "21.5", &gw.coap_url("ps/sensors/t1?clientid=dev-42")]);
    assert!(!out.contains("4.") && !out.contains("5."), "the publish was refused: {out}\n{}", gw.log());
    let _watcher = Background(
        Command::new("coap-client-notls")
            .args(["-s", "60", "-m", "get", &gw.coap_url("ps/sensors/t1?clientid=watcher-7")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    gw.settles("sluice_observers", 1.0);

    let (_chromium, devtools) = Chromium::launch();
    let mut page = Cdp::connect(&devtools);

    // Overview: the counts, the broker, and a request rate once two samples were taken.
    page.navigate(&gw.dashboard());
    page.wait("the overview's client count", "document.querySelector('#ov-clients').textContent", |v| v == "2");
    page.wait("the overview's observer count", "document.querySelector('#ov-observers').textContent", |v| v == "1");
    page.wait("a request rate", "document.querySelector('#ov-rate').textContent", |v| {
        v.as_str().is_some_and(|t| t.ends_with("req/s"))
    });
    let mqtt = page.text("#ov-mqtt");
    assert!(mqtt.as_str().unwrap().starts_with("connected"), "{mqtt}");
    assert_eq!(page.text("#ov-dtls"), "off");
    let requests: u64 = page.text("#ov-requests").as_str().unwrap().parse().unwrap();
    assert!(requests >= 2, "{requests} requests");
    assert!(!page.eval("document.querySelector('#view-overview').hidden").as_bool().unwrap());
    page.screenshot("overview");

    // Clients: both devices, each row linking to its page; a prefix finds one.
    page.eval("location.hash = '#/clients'");
    page.wait("dev-42 and watcher-7 in the clients table", CLIENT_IDS, |v| v == &json!(["dev-42", "watcher-7"]));
    let watcher = page
        .wait("watcher-7's observer count", &rows_js("#clients-table"), |v| v[1][4] == "1")
        .get(1)
        .cloned()
        .unwrap();
    assert_eq!(watcher[3], "udp", "{watcher}");
    assert_eq!(
        page.eval("document.querySelector('#clients-table tbody tr:nth-child(2) a').getAttribute('href')"),
        "#/clients/watcher-7"
    );
    page.screenshot("clients");
    page.eval(
        "(s => { s.value = 'watch'; s.dispatchEvent(new Event('input', {bubbles: true})); })(document.querySelector('#client-search'))",
    );
    page.wait("only watcher-7 for the prefix 'watch'", CLIENT_IDS, |v| v == &json!(["watcher-7"]));

    // The client's page: its observer; Kick ends it.
    page.eval("document.querySelector('#clients-table a[href=\"#/clients/watcher-7\"]').click()");
    page.wait("watcher-7's page", "location.hash + ' ' + document.querySelector('#client-id').textContent", |v| {
        v == "#/clients/watcher-7 watcher-7"
    });
    let observers = page.wait("the observer of sensors/t1", &rows_js("#observers"), |v| {
        v.as_array().is_some_and(|rows| !rows.is_empty())
    });
    assert_eq!(observers.as_array().unwrap().len(), 1, "{observers}");
    assert_eq!(observers[0][0], "sensors/t1", "{observers}");
    assert!(observers[0][2] == "yes" || observers[0][2] == "no", "{observers}");
    assert_eq!(page.eval("document.querySelector('#client-fields [data-field=\"transport\"]').textContent"), "udp");
    page.screenshot("client");

    page.eval("document.querySelector('#kick').click()");
    let result = page.wait("the kick's result", "document.querySelector('#kick-result').textContent", |v| {
        v.as_str().is_some_and(|t| !t.is_empty() && !t.starts_with("kicking"))
    });
    assert_eq!(result, "ended 1 observer, session closed: false");
    // The gateway agrees: no observer left.
    gw.settles("sluice_observers", 0.0);
    let (status, body) = gw.get("/clients/watcher-7");
    if status == 200 {
        let client: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(client["observers"], 0, "{client}");
        assert_eq!(client["observer_list"], json!([]), "{client}");
    } else {
        assert_eq!(status, 404, "{body}");
    }
    page.wait("no observer row after the kick", &rows_js("#observers"), |v| v == &json!([]));

    // Rules: the chain, and a reload from the button.
    page.eval("location.hash = '#/rules'");
    let rules =
        page.wait("the rules table", &rows_js("#rules-table"), |v| v.as_array().is_some_and(|rows| !rows.is_empty()));
    assert_eq!(rules[0][1], "builtin:emqx", "{rules}");
    assert_eq!(rules[0][4], "native", "{rules}");
    assert_eq!(page.text("#last-reload"), "No reload since the gateway started.");
    page.eval("document.querySelector('#reload').click()");
    page.wait("the reload's result", "document.querySelector('#reload-result').textContent", |v| {
        v.as_str().is_some_and(|t| t.starts_with("reloaded"))
    });
    let last = page.text("#last-reload");
    assert!(last.as_str().unwrap().starts_with("Reload #1"), "{last}");
    page.screenshot("rules");

    // A gateway with a token: the dashboard asks for it, keeps it for the tab and sends it.
    let secured_dir = tempfile::tempdir().unwrap();
    let secured = Gateway::start(secured_dir.path(), "  token: dash-Token-31\n");
    assert_eq!(secured.get("/overview").0, 401);
    page.navigate(&secured.dashboard());
    page.wait("the token field", "document.querySelector('#token-form').hidden", |v| v.as_bool() == Some(false));
    page.eval(
        "document.querySelector('#token').value = 'dash-Token-31'; document.querySelector('#token-form').requestSubmit()",
    );
    page.wait("the overview with the token", "document.querySelector('#ov-clients').textContent", |v| v == "0");
    assert_eq!(page.eval("sessionStorage.getItem('sluice-admin-token')"), "dash-Token-31");
    assert!(page.eval("document.querySelector('#token-form').hidden").as_bool().unwrap());
    assert_eq!(page.text("#error"), "");
}
