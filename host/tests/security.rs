//! What a device can reach: the ACL of the default rule (`builtin:emqx`, and the same crate built
//! as `emqx.wasm`) holds through every URL form — `/mqtt`, `/ps`, connection-mode tokens, query
//! overrides, segments carrying `/`, `+`, `#`, NUL, `..`, empty levels, long topics, invalid
//! UTF-8, wildcards, `$` topics and crafted client ids — with the documented CoAP code, and
//! nothing refused reaches the broker or an observer. Connection-mode tokens are random and bound
//! to their client. Passwords, tokens, PSKs and the broker password never reach the log (at
//! `trace`), `/metrics` or `/rules`.
//!
//! Requests go out as raw datagrams (so that every Uri-Path byte is exact) and through libcoap's
//! `coap-client-notls` (so that its percent-decoding of real URLs is covered). Nothing "reached
//! the broker" is shown with a canary: a `mosquitto_sub` on `#` (and on `$x/#`, `$SYS/x/#`)
//! runs throughout; the last request is a permitted publish, and once the subscriber has seen
//! it, its lines must be exactly the permitted publishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Echo option (RFC 9175).
const ECHO: u16 = 252;
const TOM: &str = "c=dev1&u=tom&p=secret";
const WIDE: &str = "c=w1&u=wide&p=secret2";

/// Users for the ACL matrix: `tom` may publish under `devices/{his client id}/` and subscribe
/// there and to `broadcast/+`; `wide` may use `#` (which still does not reach `$` topics).
const ACL_USERS: &str = "anonymous: false
users:
  - username: tom
    password: secret
    publish: [\"devices/${clientid}/#\"]
    subscribe: [\"devices/${clientid}/#\", \"broadcast/+\"]
  - username: wide
    password: secret2
    publish: [\"#\"]
    subscribe: [\"#\"]
  - username: ann
    password: annpw
    publish: [\"ann/#\"]
    subscribe: [\"ann/#\"]
  - username: self
    password: selfpw
    publish: [\"${clientid}/#\"]
    subscribe: [\"${clientid}/#\"]";

/// The emqx rule built to Wasm by scripts/build-rules.sh.
fn emqx_wasm() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/rules/emqx.wasm");
    assert!(path.is_file(), "{} is missing: run scripts/build-rules.sh first", path.display());
    path.canonicalize().unwrap()
}

/// A gateway config on ephemeral ports with one rule (`builtin:emqx` or a package path), its
/// config (YAML), and extra top-level YAML.
fn config_text(broker: &str, rule: &str, rule_yaml: &str, extra: &str) -> String {
    format!(
        "coap:\n  bind: 127.0.0.1:0\n  ack_timeout: 1s\nadmin:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {broker}\n  embedded_bind: 127.0.0.1:{}\n  publish_timeout: 5s\n{extra}rules:\n  - rule: {rule}\n    config:\n{}\n",
        free_tcp_port(),
        rule_yaml.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
    )
}

async fn start(broker: &str, rule: &str, rule_yaml: &str, extra: &str) -> sluice::server::Server {
    let text = config_text(broker, rule, rule_yaml, extra);
    gateway(sluice::config::Config::parse(&text, "test.yaml").unwrap_or_else(|p| panic!("{p}\n{text}"))).await
}

/// A raw CoAP client that sends CON requests with exact Uri-Path bytes and waits for the
/// answer (piggybacked, or separate after an empty ACK), skipping notifications.
struct Device {
    raw: Raw,
    mid: u16,
}

/// One request: method, Uri-Path segments (raw bytes), Uri-Query entries, Observe.
struct Req {
    method: RequestType,
    path: Vec<Vec<u8>>,
    query: String,
    observe: Option<u32>,
    payload: Vec<u8>,
}

fn segs(path: &[&str]) -> Vec<Vec<u8>> {
    path.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn put(path: &[&str], query: &str) -> Req {
    with(RequestType::Put, path, query)
}

fn observe(path: &[&str], query: &str) -> Req {
    Req { observe: Some(0), ..with(RequestType::Get, path, query) }
}

fn with(method: RequestType, path: &[&str], query: &str) -> Req {
    Req { method, path: segs(path), query: query.to_string(), observe: None, payload: Vec::new() }
}

/// The response: code ("2.04"), payload (the diagnostic), the packet.
struct Answer {
    code: String,
    packet: Packet,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.packet.payload).into_owned()
    }
}

impl Device {
    fn new(server: SocketAddr) -> Device {
        Device { raw: Raw::new(server), mid: 0 }
    }

    /// Sends `req` and waits for its answer; a 4.01 carrying an Echo option (RFC 9175: the
    /// gateway checks that an unverified peer receives at its address) is answered the way
    /// libcoap does, by repeating the request with the Echo value.
    fn send(&mut self, req: &Req) -> Answer {
        let answer = self.send_with(req, None);
        match answer.packet.get_option(CoapOption::Unknown(ECHO)).and_then(|v| v.front().cloned()) {
            Some(echo) if answer.code == "4.01" => self.send_with(req, Some(echo)),
            _ => answer,
        }
    }

    fn send_with(&mut self, req: &Req, echo: Option<Vec<u8>>) -> Answer {
        self.mid = self.mid.wrapping_add(1);
        let mid = self.mid;
        let token = mid.to_be_bytes().to_vec();
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(req.method);
        p.header.message_id = mid;
        p.set_token(token.clone());
        for seg in &req.path {
            p.add_option(CoapOption::UriPath, seg.clone());
        }
        for q in req.query.split('&').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(o) = req.observe {
            p.set_observe_value(o);
        }
        if let Some(echo) = echo {
            p.add_option(CoapOption::Unknown(ECHO), echo);
        }
        p.payload = req.payload.clone();
        self.raw.send(&p.to_bytes().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(bytes) = self.raw.recv() else { continue };
            let Ok(answer) = Packet::from_bytes(&bytes) else { continue };
            if answer.header.get_type() == MessageType::Confirmable {
                self.ack(&answer);
            }
            let empty = u8::from(answer.header.code) == 0;
            if answer.get_token() == token.as_slice() && !empty {
                return Answer { code: code(&answer), packet: answer };
            }
        }
        panic!("no answer to {:?}", req.path);
    }

    fn ack(&self, p: &Packet) {
        let mut ack = Packet::new();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.code = MessageClass::Empty;
        ack.header.message_id = p.header.message_id;
        self.raw.send(&ack.to_bytes().unwrap());
    }

    /// The next notification (a packet that answers none of our requests), acknowledged.
    fn notification(&self, within: Duration) -> Option<Packet> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let Some(bytes) = self.raw.recv() else { continue };
            let p = Packet::from_bytes(&bytes).unwrap();
            if p.header.get_type() == MessageType::Confirmable {
                self.ack(&p);
            }
            if p.get_observe_value().is_some() && u8::from(p.header.code) != 0 {
                return Some(p);
            }
        }
        None
    }
}

/// `mosquitto_sub -v` on `#`, `$x/#` and `$SYS/x/#`, collecting every line from a thread.
struct Watch {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    /// Starts and waits until it receives (a probe published until it shows up).
    fn start(port: u16) -> Watch {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-q", "1"])
            .args(["-t", "#", "-t", "$x/#", "-t", "$SYS/x/#"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub: run scripts/test.sh, which installs mosquitto-clients");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let watch = Watch { child, lines };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            mqtt_pub(port, "probe/ready", "1", &[]);
            if watch.wait_for("probe/ready 1", Duration::from_millis(300)) {
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto_sub never received its probe");
        }
        watch
    }

    fn wait_for(&self, line: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.lines.lock().unwrap().iter().any(|l| l == line) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `canary` and returns every line but the probes.
    fn lines_until(mut self, canary: &str) -> Vec<String> {
        assert!(self.wait_for(canary, Duration::from_secs(30)), "the canary {canary:?} never reached the broker");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.lock().unwrap().iter().filter(|l| !l.starts_with("probe/ready")).cloned().collect()
    }
}

/// The payloads of the notifications `dev` gets until one carries `last`, repeats removed: a
/// broker that sends one copy per overlapping subscription (mosquitto does) makes the gateway
/// notify twice; what matters here is which messages arrive, not how often.
fn until(dev: &Device, last: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let n = dev.notification(Duration::from_secs(20)).unwrap_or_else(|| panic!("no {last:?} after {seen:?}"));
        let payload = String::from_utf8_lossy(&n.payload).into_owned();
        if seen.last() != Some(&payload) {
            seen.push(payload.clone());
        }
        if payload == last {
            return seen;
        }
    }
}

/// Sends each case; asserts its code; returns the payloads of the ones that published.
fn run_cases(dev: &mut Device, cases: Vec<(Req, &str)>, published: &mut Vec<String>, label: &str) {
    for (mut req, expected) in cases {
        let payload = format!("{label}-{}", dev.mid.wrapping_add(1));
        req.payload = payload.clone().into_bytes();
        let answer = dev.send(&req);
        let shown: Vec<String> = req.path.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect();
        assert_eq!(
            answer.code,
            expected,
            "{label}: {:?} /{} ?{}: {}",
            req.method,
            shown.join("|"),
            req.query,
            answer.text()
        );
        let topic_path = shown.first().is_some_and(|m| m == "mqtt" || m == "ps")
            && shown.get(1..) != Some(&["connection".to_string()][..]);
        if (expected == "2.04" || expected == "2.01") && topic_path {
            let topic: Vec<String> = shown.iter().skip(1).cloned().collect();
            published.push(format!("{} {payload}", topic.join("/")));
        }
        if answer.code.starts_with('4') {
            // Every refusal says why, and never echoes a password.
            assert!(!answer.packet.payload.is_empty(), "{label}: {} without a diagnostic", answer.code);
            assert!(!answer.text().contains("secret"), "{label}: {}", answer.text());
        }
    }
}

/// The first CoAP code a libcoap client printed ("4.03"), or "2.xx" when it printed none.
fn client_code(out: &ClientOutput) -> String {
    let all = out.all();
    all.lines()
        .filter_map(|l| l.get(..4))
        .find(|c| {
            c.as_bytes()[0].is_ascii_digit() && c.as_bytes()[1] == b'.' && c[2..].bytes().all(|b| b.is_ascii_digit())
        })
        .map(str::to_string)
        .unwrap_or_else(|| "2.xx".into())
}

/// The ACL matrix, for a rule (`builtin:emqx` or the path of `emqx.wasm`).
async fn acl_holds_for_every_url_form(rule: &str) {
    let broker = Mosquitto::start();
    let gw = start(&broker.url(), rule, ACL_USERS, "").await;
    let watch = Watch::start(broker.port);
    let mut published = Vec::new();
    let mut dev = Device::new(gw.coap_addr);
    let long = "x".repeat(250);
    let long_path: Vec<&str> =
        ["mqtt", "devices", "dev2"].into_iter().chain(std::iter::repeat_n(long.as_str(), 4)).collect();
    let own_long: Vec<&str> =
        ["mqtt", "devices", "dev1"].into_iter().chain(std::iter::repeat_n(long.as_str(), 4)).collect();

    // Publishing: /mqtt and /ps, every method, query overrides, and crafted segments.
    let cases = vec![
        (put(&["mqtt", "devices", "dev1", "t"], TOM), "2.04"),
        (put(&["mqtt", "devices", "dev2", "t"], TOM), "4.03"),
        (put(&["ps", "devices", "dev2", "t"], TOM), "4.03"),
        (with(RequestType::Post, &["ps", "devices", "dev2", "t"], TOM), "4.03"),
        (with(RequestType::Delete, &["ps", "devices", "dev2", "t"], TOM), "4.03"),
        (with(RequestType::Get, &["ps", "devices", "dev2", "t"], TOM), "4.03"),
        (with(RequestType::Post, &["mqtt", "devices", "dev2", "t"], TOM), "4.05"),
        (with(RequestType::Delete, &["mqtt", "devices", "dev2", "t"], TOM), "4.05"),
        (put(&["mqtt", "devices", "dev2", "t"], &format!("{TOM}&qos=2&retain=true&expiry=5")), "4.03"),
        (put(&["mqtt", "devices", "dev2", "t"], &format!("{TOM}&q=0&r=1")), "4.03"),
        (put(&["ps", "devices", "dev2", "t"], &format!("{TOM}&retain=false")), "4.03"),
        (put(&["ps", "devices", "dev2", "t"], &format!("{TOM}&expiry=1&qos=1")), "4.03"),
        // A `/` inside a segment (%2F) is a level separator: the ACL sees devices/dev2/t.
        (put(&["mqtt", "devices/dev2/t"], TOM), "4.03"),
        (put(&["mqtt", "devices", "dev2/t"], TOM), "4.03"),
        (put(&["ps", "devices/dev2", "t"], TOM), "4.03"),
        // `..` is a literal level in MQTT: it never climbs out of devices/dev1/.
        (put(&["mqtt", "devices", "dev1", "..", "dev2"], TOM), "2.04"),
        (put(&["mqtt", "devices", "dev1/../../dev2/t"], TOM), "2.04"),
        (put(&["mqtt", "..", "devices", "dev2"], TOM), "4.03"),
        (put(&["mqtt", "devices", "..", "dev2", "t"], TOM), "4.03"),
        // Empty levels and a trailing slash.
        (put(&["mqtt", "", "devices", "dev1", "t"], TOM), "4.03"),
        (put(&["mqtt", "devices", "", "dev1", "t"], TOM), "4.03"),
        (put(&["mqtt", "devices", ""], TOM), "4.03"),
        (put(&["mqtt", "devices", "dev1", ""], TOM), "2.04"),
        (put(&["mqtt", ""], TOM), "4.00"),
        (put(&["mqtt"], TOM), "4.00"),
        (put(&["ps"], TOM), "4.00"),
        // Long topics: outside the ACL refused, inside published whole.
        (put(&long_path, TOM), "4.03"),
        (put(&own_long, TOM), "2.04"),
        // Wildcards (%2B, %23) and NUL (%00) are refused in a publish topic, in either mode.
        (put(&["mqtt", "devices", "dev1", "+"], TOM), "4.00"),
        (put(&["mqtt", "devices", "dev1", "#"], TOM), "4.00"),
        (put(&["mqtt", "#"], TOM), "4.00"),
        (put(&["mqtt", "+", "+", "t"], TOM), "4.00"),
        (put(&["mqtt", "devices", "dev1", "a+b"], TOM), "4.00"),
        (put(&["mqtt", "devices", "dev1", "a#"], TOM), "4.00"),
        (put(&["mqtt", "devices", "dev1", "a\0b"], TOM), "4.00"),
        (put(&["ps", "devices", "dev1", "#"], TOM), "4.00"),
        (put(&["ps", "devices", "+", "t"], TOM), "4.00"),
        (put(&["ps", "devices", "dev1", "a\0"], TOM), "4.00"),
        (with(RequestType::Delete, &["ps", "devices", "#"], TOM), "4.00"),
        // `$` topics: not for tom, and not for `#` either.
        (put(&["mqtt", "$SYS", "x", "y"], TOM), "4.03"),
        (put(&["mqtt", "$SYS", "x", "y"], WIDE), "4.03"),
        (put(&["mqtt", "$x", "y"], WIDE), "4.03"),
        (put(&["ps", "$x", "y"], WIDE), "4.03"),
        (put(&["mqtt", "a", "b"], WIDE), "2.04"),
        // The connection resource is not a topic; without a token it is a bad request.
        (put(&["mqtt", "connection"], TOM), "4.00"),
        // Credentials: none, a wrong password, an unknown user, no client id.
        (put(&["mqtt", "devices", "dev1", "t"], "c=dev1"), "4.01"),
        (put(&["mqtt", "devices", "dev1", "t"], "c=dev1&u=tom&p=Secret"), "4.01"),
        (put(&["mqtt", "devices", "dev1", "t"], "c=dev1&u=tom"), "4.01"),
        (put(&["mqtt", "devices", "dev1", "t"], "c=dev1&u=eve&p=secret"), "4.01"),
        (put(&["mqtt", "devices", "dev1", "t"], "u=tom&p=secret"), "4.00"),
        (put(&["mqtt", "devices", "dev1", "t"], "c=&u=tom&p=secret"), "4.00"),
        // ${clientid} with /, + or # matches nothing, so a crafted id reaches no one's topics.
        (put(&["mqtt", "devices", "a", "b", "t"], "c=a/b&u=tom&p=secret"), "4.03"),
        (put(&["mqtt", "devices", "dev2", "t"], "c=dev2/..&u=tom&p=secret"), "4.03"),
        (put(&["mqtt", "devices", "+"], "c=+&u=tom&p=secret"), "4.00"),
        (put(&["mqtt", "devices", "x"], "c=+&u=tom&p=secret"), "4.03"),
        (put(&["mqtt", "devices", "x", "y"], "c=#&u=tom&p=secret"), "4.03"),
        (put(&["mqtt", "$SYS", "t"], "c=$SYS&u=tom&p=secret"), "4.03"),
        // A placeholder at the start of a pattern: a client id cannot make it a `$` topic,
        // nor an empty or multi-level one.
        (put(&["mqtt", "dev5", "t"], "c=dev5&u=self&p=selfpw"), "2.04"),
        (put(&["mqtt", "$SYS", "t"], "c=$SYS&u=self&p=selfpw"), "4.03"),
        (put(&["mqtt", "$x", "t"], "c=$x&u=self&p=selfpw"), "4.03"),
        (put(&["mqtt", "a", "b", "t"], "c=a/b&u=self&p=selfpw"), "4.03"),
        (put(&["mqtt", "", "t"], "c=&u=self&p=selfpw"), "4.00"),
    ];
    run_cases(&mut dev, cases, &mut published, "pub");

    // Invalid UTF-8 in a segment: refused by the CoAP layer before any rule.
    let bad_utf8 = Req {
        method: RequestType::Put,
        path: vec![b"mqtt".to_vec(), vec![0xc3, 0x28]],
        query: TOM.into(),
        observe: None,
        payload: b"u".to_vec(),
    };
    let answer = dev.send(&bad_utf8);
    assert_eq!(answer.code, "4.00", "{}", answer.text());
    let bad_query = Req {
        method: RequestType::Put,
        path: segs(&["mqtt", "devices", "dev1", "t"]),
        query: "c=dev1&u=tom&p=\u{fffd}".into(),
        observe: None,
        payload: vec![],
    };
    assert_eq!(dev.send(&bad_query).code, "4.01");
    let bad_query_bytes = Device::new(gw.coap_addr);
    let raw_query = {
        let mut p = request(RequestType::Put, true, 9, &[9], "mqtt/devices/dev2/t");
        p.add_option(CoapOption::UriQuery, b"c=dev1".to_vec());
        p.add_option(CoapOption::UriQuery, b"u=tom".to_vec());
        p.add_option(CoapOption::UriQuery, vec![b'p', b'=', 0xff, 0xfe]);
        p
    };
    bad_query_bytes.raw.send(&raw_query.to_bytes().unwrap());
    let answer = bad_query_bytes.raw.recv_packet().expect("an answer to a query that is not UTF-8");
    assert_eq!(code(&answer), "4.00", "{:?}", String::from_utf8_lossy(&answer.payload));

    // The same through libcoap's URL parser: percent-encoded /, +, #, NUL, $, and //.
    let base = format!("coap://127.0.0.1:{}/", gw.coap_addr.port());
    let url_cases = [
        ("mqtt/devices%2Fdev2%2Ft", TOM, "4.03"),
        ("ps/devices%2Fdev2/t", TOM, "4.03"),
        ("mqtt/devices/dev1/%2B", TOM, "4.00"),
        ("mqtt/devices/dev1/%23", TOM, "4.00"),
        ("mqtt/%23", WIDE, "4.00"),
        ("mqtt/devices/dev1/a%00b", TOM, "4.00"),
        ("mqtt/%24SYS/x", WIDE, "4.03"),
        ("mqtt/$SYS/x", WIDE, "4.03"),
        ("mqtt//devices/dev1", TOM, "4.03"),
        ("mqtt/devices/a/b/t", "c=a%2Fb&u=tom&p=secret", "4.03"),
        ("mqtt/devices/dev2/t", "c=dev1&u=tom&p=secret&c=dev2", "4.03"),
    ];
    for (path, query, expected) in url_cases {
        let out = coap_client(&["-m", "put", "-e", "via-libcoap", &format!("{base}{path}?{query}")]).await;
        assert_eq!(client_code(&out), expected, "{path}?{query}: {out:?}");
    }

    // Subscribing: a filter must be covered by a pattern; + and # never widen it.
    let mut obs = Device::new(gw.coap_addr);
    let refused = vec![
        (observe(&["mqtt", "#"], TOM), "4.03"),
        (observe(&["mqtt", "+", "+", "t"], TOM), "4.03"),
        (observe(&["mqtt", "devices", "+", "t"], TOM), "4.03"),
        (observe(&["mqtt", "devices", "#"], TOM), "4.03"),
        (observe(&["mqtt", "devices/#"], TOM), "4.03"),
        (observe(&["mqtt", "devices", "dev2", "#"], TOM), "4.03"),
        (observe(&["mqtt", "broadcast", "#"], TOM), "4.03"),
        (observe(&["mqtt", "broadcast", "+", "x"], TOM), "4.03"),
        (observe(&["mqtt", "", "devices", "dev1", "#"], TOM), "4.03"),
        (observe(&["mqtt", "$SYS", "#"], TOM), "4.03"),
        (observe(&["mqtt", "$SYS", "#"], WIDE), "4.03"),
        (observe(&["mqtt", "$x", "y"], WIDE), "4.03"),
        (observe(&["mqtt", "$share", "g", "devices", "dev1", "#"], TOM), "4.03"),
        (observe(&["mqtt", "$share", "g", "#"], WIDE), "4.03"),
        (observe(&["ps", "devices", "dev2", "t"], TOM), "4.03"),
        (observe(&["ps", "devices", "+", "t"], TOM), "4.00"),
        (observe(&["ps", "#"], WIDE), "4.00"),
        (observe(&["mqtt", "devices", "dev1", "#", "x"], TOM), "4.00"),
        (observe(&["mqtt", "devices", "dev1", "a#"], TOM), "4.00"),
        (observe(&["mqtt", "devices", "dev1", "a\0"], TOM), "4.00"),
        (observe(&["mqtt", "devices", "+", "t"], "c=+&u=tom&p=secret"), "4.03"),
        (observe(&["mqtt", "devices", "#"], "c=#&u=tom&p=secret"), "4.03"),
        (observe(&["mqtt", "devices", "a", "b", "#"], "c=a/b&u=tom&p=secret"), "4.03"),
        (observe(&["mqtt", "devices", "dev2", "t"], "c=dev1&u=tom&p=Secret"), "4.01"),
        (observe(&["mqtt", "$SYS", "#"], "c=$SYS&u=self&p=selfpw"), "4.03"),
        (observe(&["mqtt", "+", "#"], "c=+&u=self&p=selfpw"), "4.03"),
        (observe(&["mqtt", "#"], "c=#&u=self&p=selfpw"), "4.03"),
    ];
    run_cases(&mut obs, refused, &mut published, "sub");
    assert_eq!(gw.gateway().observer_count(), 0, "a refused observe left an observer");
    // A GET without Observe is EMQX's keep-alive: 2.05, empty, whatever the topic.
    let keepalive = dev.send(&with(RequestType::Get, &["mqtt", "devices", "dev2", "t"], TOM));
    assert_eq!((keepalive.code.as_str(), keepalive.packet.payload.len()), ("2.05", 0));

    // Permitted observers, on other sockets: tom's own tree and broadcast/+; wide's `#`.
    let mut own = Device::new(gw.coap_addr);
    assert_eq!(own.send(&observe(&["mqtt", "devices", "dev1", "#"], TOM)).code, "2.05");
    let mut bcast = Device::new(gw.coap_addr);
    assert_eq!(bcast.send(&observe(&["mqtt", "broadcast", "+"], TOM)).code, "2.05");
    let mut all = Device::new(gw.coap_addr);
    assert_eq!(all.send(&observe(&["mqtt", "#"], WIDE)).code, "2.05");
    // The refused socket gets a permitted observer last: the canary of the notifications.
    assert_eq!(obs.send(&observe(&["mqtt", "devices", "dev1", "canary"], TOM)).code, "2.05");
    assert!(eventually(|| gw.gateway().observer_count() == 4).await);

    // Messages no refused filter may see (each carries its topic as payload), then the canaries.
    const LEAKS: [&str; 4] = ["devices/dev2/t", "broadcast/x/y", "other/t", "devices/dev1x/t"];
    for topic in LEAKS.into_iter().chain(["broadcast/news", "devices/dev1/canary"]) {
        mqtt_pub(broker.port, topic, topic, &["-q", "1"]);
    }
    assert_eq!(until(&obs, "devices/dev1/canary"), ["devices/dev1/canary"], "a refused observe was notified");
    assert_eq!(until(&own, "devices/dev1/canary"), ["devices/dev1/canary"], "devices/dev1/# saw another topic");
    assert_eq!(until(&bcast, "broadcast/news"), ["broadcast/news"], "broadcast/+ saw another topic");
    let mut everything: Vec<&str> = LEAKS.to_vec();
    everything.extend(["broadcast/news", "devices/dev1/canary"]);
    assert_eq!(until(&all, "devices/dev1/canary"), everything, "wide's # gets every topic but $ ones");

    // Publish side: exactly the permitted publishes reached the broker.
    let canary = dev.send(&Req {
        method: RequestType::Put,
        path: segs(&["mqtt", "devices", "dev1", "done"]),
        query: TOM.into(),
        observe: None,
        payload: b"end".to_vec(),
    });
    assert_eq!(canary.code, "2.04");
    let lines = watch.lines_until("devices/dev1/done end");
    let mut expected = published.clone();
    expected.extend(everything.iter().map(|t| format!("{t} {t}")));
    expected.push("devices/dev1/done end".into());
    let (mut got, mut want) = (lines.clone(), expected.clone());
    got.sort();
    want.sort();
    assert_eq!(got, want, "the broker saw something refused, or missed something permitted");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_holds_for_every_url_form_with_builtin_emqx() {
    acl_holds_for_every_url_form("builtin:emqx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_holds_for_every_url_form_with_emqx_wasm() {
    acl_holds_for_every_url_form(&emqx_wasm().display().to_string()).await;
}

/// POST /mqtt/connection; the token.
fn connect(dev: &mut Device, client_id: &str, user: &str, password: &str) -> String {
    let answer = dev.send(&with(
        RequestType::Post,
        &["mqtt", "connection"],
        &format!("clientid={client_id}&username={user}&password={password}"),
    ));
    assert_eq!(answer.code, "2.01", "{}", answer.text());
    answer.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_are_random_and_bound_to_their_client() {
    let broker = Mosquitto::start();
    let gw = start(&broker.url(), "builtin:emqx", ACL_USERS, "").await;
    let watch = Watch::start(broker.port);
    let mut dev = Device::new(gw.coap_addr);
    let mut published = Vec::new();

    // 64 tokens: 32 hex digits each, all different, and their bits balanced (8192 bits; a
    // counter or a timestamp would be far off; random bits are within 9 standard deviations).
    let tokens: Vec<String> = (0..64).map(|i| connect(&mut dev, &format!("s{i}"), "tom", "secret")).collect();
    for t in &tokens {
        assert!(t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()), "{t:?}");
    }
    let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), 64);
    let ones: u32 = tokens.iter().flat_map(|t| t.chars()).map(|c| c.to_digit(16).unwrap().count_ones()).sum();
    assert!((3700..=4500).contains(&ones), "{ones} of 8192 bits set");
    let prefixes: std::collections::HashSet<&str> = tokens.iter().map(|t| &t[..8]).collect();
    assert_eq!(prefixes.len(), 64, "tokens share prefixes");

    let (s0, s1) = (&tokens[0], &tokens[1]);
    let q = |client: &str, token: &str| format!("clientid={client}&token={token}");
    let mut flipped = s0.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    let cases = vec![
        // The token works for its client, within that client's ACL.
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", s0)), "2.04"),
        (put(&["mqtt", "devices", "s1", "t"], &q("s0", s0)), "4.03"),
        (observe(&["mqtt", "devices", "#"], &q("s0", s0)), "4.03"),
        (put(&["mqtt", "connection"], &q("s0", s0)), "2.04"),
        // Another client's token, a changed token, a prefix, a token with no client id.
        (put(&["mqtt", "devices", "s1", "t"], &q("s1", s0)), "4.01"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", s1)), "4.01"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", &flipped)), "4.01"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", &s0[..16])), "4.01"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", &s0.to_uppercase())), "4.01"),
        (put(&["mqtt", "devices", "s0", "t"], &format!("token={s0}")), "4.00"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s64", s0)), "4.01"),
        (put(&["mqtt", "connection"], &q("s1", s0)), "4.01"),
        (with(RequestType::Delete, &["mqtt", "connection"], &q("s1", s0)), "4.01"),
        // A username beside the token does not change whose session it is: still tom's.
        (put(&["mqtt", "ann", "t"], &format!("{}&username=ann&password=annpw", q("s0", s0))), "4.03"),
        (put(&["mqtt", "ann", "t"], &format!("{}&username=ann", q("s0", s0))), "4.03"),
        (put(&["mqtt", "devices", "s0", "u"], &format!("{}&username=ann", q("s0", s0))), "2.04"),
        // Short query names work the same way.
        (put(&["mqtt", "devices", "s1", "t"], &format!("c=s1&t={s0}")), "4.01"),
    ];
    run_cases(&mut dev, cases, &mut published, "tok");

    // ann's own session cannot be used as tom's client, nor tom's as ann's.
    let ann = connect(&mut dev, "a1", "ann", "annpw");
    let cases = vec![
        (put(&["mqtt", "ann", "t"], &q("a1", &ann)), "2.04"),
        (put(&["mqtt", "devices", "a1", "t"], &q("a1", &ann)), "4.03"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", &ann)), "4.01"),
        (put(&["mqtt", "ann", "t"], &q("a1", s0)), "4.01"),
        // Nor can ann log in with tom's client id while his session lives: his token stays.
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=s1&username=ann&password=annpw"), "4.03"),
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=s1"), "4.01"),
        (put(&["mqtt", "devices", "s1", "t"], &q("s1", s1)), "2.04"),
    ];
    run_cases(&mut dev, cases, &mut published, "ann");

    // Reconnecting replaces the token; closing ends it.
    let renewed = connect(&mut dev, "s0", "tom", "secret");
    assert_ne!(&renewed, s0);
    let cases = vec![
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", s0)), "4.01"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", &renewed)), "2.04"),
        (with(RequestType::Delete, &["mqtt", "connection"], &q("s0", s0)), "4.01"),
        (with(RequestType::Delete, &["mqtt", "connection"], &q("s0", &renewed)), "2.02"),
        (put(&["mqtt", "devices", "s0", "t"], &q("s0", &renewed)), "4.01"),
        (put(&["mqtt", "connection"], &q("s0", &renewed)), "4.01"),
        // Closed, the client id is free for another user.
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=s0&username=ann&password=annpw"), "2.01"),
        // A login with a wrong password gets no token.
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=s0&username=tom&password=x"), "4.01"),
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=s0&username=ann&password=secret"), "4.01"),
    ];
    run_cases(&mut dev, cases, &mut published, "end");
    // s1's session is untouched by all of the above.
    assert_eq!(dev.send(&put(&["mqtt", "devices", "s1", "t"], &q("s1", s1))).code, "2.04");
    published.push("devices/s1/t ".into());

    let done = dev.send(&Req { payload: b"end".to_vec(), ..put(&["mqtt", "devices", "s1", "done"], &q("s1", s1)) });
    assert_eq!(done.code, "2.04");
    let lines = watch.lines_until("devices/s1/done end");
    let topics = |v: &[String]| {
        let mut t: Vec<String> = v.iter().map(|l| l.split(' ').next().unwrap().to_string()).collect();
        t.sort();
        t
    };
    let mut want = published.clone();
    want.push("devices/s1/done end".into());
    assert_eq!(topics(&lines), topics(&want), "{lines:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_token_expires() {
    let gw = start("embedded", "builtin:emqx", ACL_USERS, "sessions:\n  timeout: 1s\n").await;
    let mut dev = Device::new(gw.coap_addr);
    let token = connect(&mut dev, "dev1", "tom", "secret");
    let q = format!("clientid=dev1&token={token}");
    assert_eq!(dev.send(&put(&["mqtt", "connection"], &q)).code, "2.04");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answer = dev.send(&put(&["mqtt", "devices", "dev1", "t"], &q));
    assert_eq!(answer.code, "4.01", "{}", answer.text());
    assert!(answer.text().contains("POST /mqtt/connection"), "{}", answer.text());
    gw.shutdown().await;
}

/// Before the reload: anonymous access on, users tom and ann.
const BEFORE_RELOAD: &str = "anonymous: true
anonymous_publish: [\"public/${clientid}/#\"]
users:
  - username: tom
    password: secret
    publish: [\"devices/${clientid}/#\"]
  - username: ann
    password: annpw
    publish: [\"ann/#\"]";

/// After it: tom removed, anonymous access off.
const AFTER_RELOAD: &str = "anonymous: false
anonymous_publish: [\"public/${clientid}/#\"]
users:
  - username: ann
    password: annpw
    publish: [\"ann/#\"]";

/// A reload that removes a user or turns anonymous access off ends what their open sessions
/// may do: the session principal is no longer one the rule lets in, and it gets nothing (not
/// the chain's allow-all default for principals the rule does not know).
async fn revoked_logins_get_nothing_after_a_reload(rule: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let before = config_text("embedded", rule, BEFORE_RELOAD, "");
    std::fs::write(&file, &before).unwrap();
    let config = sluice::config::Config::load(&file).unwrap_or_else(|p| panic!("{p}"));
    let _ = tracing_subscriber::fmt().with_env_filter("sluice=debug").with_test_writer().try_init();
    let gw = sluice::server::start_from(config, Some(&file)).await.unwrap();
    let mut dev = Device::new(gw.coap_addr);
    let tom = format!("clientid=dev1&token={}", connect(&mut dev, "dev1", "tom", "secret"));
    let anon = format!("clientid=a1&token={}", connect_anonymous(&mut dev, "a1"));
    let ann = format!("clientid=n1&token={}", connect(&mut dev, "n1", "ann", "annpw"));
    for (path, query, expected) in [
        (&["mqtt", "devices", "dev1", "t"][..], &tom, "2.04"),
        (&["mqtt", "other", "t"][..], &tom, "4.03"),
        (&["mqtt", "public", "a1", "t"][..], &anon, "2.04"),
        (&["mqtt", "ann", "t"][..], &ann, "2.04"),
    ] {
        assert_eq!(dev.send(&put(path, query)).code, expected, "before: {path:?}");
    }

    let after = before.replace(&indent(BEFORE_RELOAD), &indent(AFTER_RELOAD));
    assert_ne!(after, before);
    std::fs::write(&file, after).unwrap();
    let count = gw.rules_status().borrow().count;
    gw.reload_rules();
    let mut status = gw.rules_status();
    let done = tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.count > count)).await;
    assert!(done.is_ok_and(|r| r.is_ok()), "the reload did not finish");

    for (req, expected) in [
        (put(&["mqtt", "devices", "dev1", "t"], &tom), "4.03"),
        (put(&["mqtt", "other", "t"], &tom), "4.03"),
        (observe(&["mqtt", "#"], &tom), "4.03"),
        (put(&["mqtt", "public", "a1", "t"], &anon), "4.03"),
        (observe(&["mqtt", "#"], &anon), "4.03"),
        // ann is still a user: her session keeps her ACL.
        (put(&["mqtt", "ann", "t"], &ann), "2.04"),
        (put(&["mqtt", "other", "t"], &ann), "4.03"),
        // Neither tom nor an anonymous device can log in again.
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=dev1&username=tom&password=secret"), "4.01"),
        (with(RequestType::Post, &["mqtt", "connection"], "clientid=a1"), "4.01"),
    ] {
        let answer = dev.send(&req);
        assert_eq!(answer.code, expected, "after: {:?} {}: {}", req.path, req.query, answer.text());
    }
    gw.shutdown().await;
}

/// POST /mqtt/connection without credentials; the token.
fn connect_anonymous(dev: &mut Device, client_id: &str) -> String {
    let answer = dev.send(&with(RequestType::Post, &["mqtt", "connection"], &format!("clientid={client_id}")));
    assert_eq!(answer.code, "2.01", "{}", answer.text());
    answer.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_logins_get_nothing_after_a_reload_with_builtin_emqx() {
    revoked_logins_get_nothing_after_a_reload("builtin:emqx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_logins_get_nothing_after_a_reload_with_emqx_wasm() {
    revoked_logins_get_nothing_after_a_reload(&emqx_wasm().display().to_string()).await;
}

fn indent(yaml: &str) -> String {
    yaml.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
}

/// Over DTLS with `clientid_from_identity`, the PSK identity is the client id and username: the
/// device is held to that user's ACL, and credentials in the URL cannot make it someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dtls_identity_is_held_to_its_users_acl() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let psk_file = dir.path().join("psk.txt");
    std::fs::write(&psk_file, "sensor-1:key-one\n").unwrap();
    let rule = "clientid_from_identity: true
anonymous: false
users:
  - username: sensor-1
    password: unused
    publish: [\"sensors/${username}/#\"]
    subscribe: [\"sensors/${username}/#\"]
  - username: tom
    password: secret
    publish: [\"#\"]";
    let gw = gateway(dtls_config(&broker.url(), &format!("psk_file: {}", psk_file.display()), rule)).await;
    let watch = Watch::start(broker.port);
    let cases = [
        ("mqtt/sensors/sensor-1/t", "2.xx"),
        ("mqtt/sensors/sensor-2/t", "4.03"),
        ("mqtt/sensors/sensor-2/t?c=sensor-2&u=tom&p=secret", "4.03"),
        ("mqtt/other/t?u=tom&p=secret", "4.03"),
        ("ps/sensors/sensor-2/t", "4.03"),
        ("mqtt/%24SYS/x", "4.03"),
    ];
    for (path, expected) in cases {
        let out = coap_client_bin(
            "coap-client-openssl",
            &["-m", "put", "-e", path, "-u", "sensor-1", "-k", "key-one", &coaps_url(&gw, path)],
        )
        .await;
        assert_eq!(client_code(&out), expected, "{path}: {out:?}");
    }
    let out = coap_client_bin(
        "coap-client-openssl",
        &["-m", "get", "-s", "1", "-u", "sensor-1", "-k", "key-one", &coaps_url(&gw, "mqtt/%23")],
    )
    .await;
    assert_eq!(client_code(&out), "4.03", "{out:?}");
    let canary = coap_client_bin(
        "coap-client-openssl",
        &["-m", "put", "-e", "end", "-u", "sensor-1", "-k", "key-one", &coaps_url(&gw, "mqtt/sensors/sensor-1/done")],
    )
    .await;
    assert_eq!(client_code(&canary), "2.xx", "{canary:?}");
    let lines = watch.lines_until("sensors/sensor-1/done end");
    assert_eq!(lines, ["sensors/sensor-1/t mqtt/sensors/sensor-1/t", "sensors/sensor-1/done end"]);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Secrets: never in the log at trace level, /metrics or /rules.

const USER_PASSWORD: &str = "pw-Walrus-8317";
const WRONG_PASSWORD: &str = "pw-Guess-2209";
const BROKER_PASSWORD: &str = "mqtt-Otter-5521";
const PSK: &str = "psk-Heron-7734";
const WRONG_PSK: &str = "psk-Wrong-9090";

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP GET; the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// Every form a secret could take in a log line: as is, hex, base64, and as a byte list.
fn forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let hex_lower: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let list = format!("{:?}", bytes);
    let list = list.trim_start_matches('[').trim_end_matches(']').to_string();
    vec![secret.to_string(), hex_lower.clone(), hex_lower.to_uppercase(), base64(bytes), list]
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Fails listing every secret found (with the first line that shows it).
fn assert_no_secret(haystack: &str, secrets: &[&str], place: &str) {
    let mut found = Vec::new();
    for secret in secrets {
        for form in forms(secret) {
            if let Some(line) = haystack.lines().find(|l| l.contains(&form)) {
                let line: String = line.chars().take(300).collect();
                found.push(format!("{secret:?} (as {form:?}): {line}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets appear in {place}:\n{}", found.join("\n"));
}

/// The `sluice` binary, run as an operator would with `RUST_LOG=trace` and `log.level: trace`:
/// device passwords (right and wrong, in both query spellings), connection-mode tokens (live,
/// replaced and closed), a DTLS PSK (right and wrong), the broker password, over UDP and DTLS;
/// none of them appears on stdout/stderr, in /metrics or in /rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_trace_log_metrics_or_rules() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let psk_file = dir.path().join("psk.txt");
    std::fs::write(&psk_file, format!("dev1:{PSK}\n")).unwrap();
    let (coap, coaps, admin) = (free_udp_port(), free_udp_port(), free_tcp_port());
    let text = format!(
        "coap:\n  bind: 127.0.0.1:{coap}\n  ack_timeout: 1s\ndtls:\n  bind: 127.0.0.1:{coaps}\n  psk_file: {}\nadmin:\n  bind: 127.0.0.1:{admin}\nlog:\n  level: trace\nmqtt:\n  broker: {}\n  username: gateway\n  password: {BROKER_PASSWORD}\n  publish_timeout: 5s\nrules:\n  - rule: builtin:emqx\n    config:\n      anonymous: false\n      users:\n        - username: tom\n          password: {USER_PASSWORD}\n          publish: [\"devices/${{clientid}}/#\"]\n          subscribe: [\"devices/${{clientid}}/#\"]\n      clientid_from_identity: false\n",
        psk_file.display(),
        broker.url()
    );
    let config = dir.path().join("sluice.yaml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("sluice.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("Sluice is serving") {
        assert!(Instant::now() < deadline, "sluice did not start:\n{}", std::fs::read_to_string(&log).unwrap());
        assert!(child.try_wait().unwrap().is_none(), "sluice exited:\n{}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = format!("coap://127.0.0.1:{coap}/");
    let sub = Sub::start(broker.port, "devices/#", 3);

    // Passwords: right, wrong, unknown user, long names, in mqtt and ps mode.
    let ok = coap_client(&["-m", "put", "-e", "one", &format!("{base}mqtt/devices/d1/t?c=d1&u=tom&p={USER_PASSWORD}")])
        .await;
    assert_eq!(client_code(&ok), "2.xx", "{ok:?}");
    for query in [
        format!("c=d1&u=tom&p={WRONG_PASSWORD}"),
        format!("clientid=d1&username=tom&password={WRONG_PASSWORD}"),
        format!("c=d1&u=nobody&p={WRONG_PASSWORD}"),
    ] {
        let out = coap_client(&["-m", "put", "-e", "x", &format!("{base}mqtt/devices/d1/t?{query}")]).await;
        assert_eq!(client_code(&out), "4.01", "{out:?}");
        let out = coap_client(&["-m", "get", &format!("{base}ps/devices/d1/t?{query}")]).await;
        assert_eq!(client_code(&out), "4.01", "{out:?}");
    }
    // Tokens: one replaced, one closed, one live, each used; and a made-up one.
    let login = format!("{base}mqtt/connection?clientid=d2&username=tom&password={USER_PASSWORD}");
    let replaced = coap_client(&["-m", "post", &login]).await.stdout.trim().to_string();
    let live = coap_client(&["-m", "post", &login]).await.stdout.trim().to_string();
    assert!(replaced.len() == 32 && live.len() == 32 && replaced != live, "{replaced:?} {live:?}");
    for token in [&replaced, &live] {
        coap_client(&["-m", "put", "-e", "two", &format!("{base}mqtt/devices/d2/t?clientid=d2&token={token}")]).await;
    }
    let login3 = format!("{base}mqtt/connection?clientid=d3&username=tom&password={USER_PASSWORD}");
    let closed = coap_client(&["-m", "post", &login3]).await.stdout.trim().to_string();
    assert_eq!(closed.len(), 32);
    coap_client(&["-m", "delete", &format!("{base}mqtt/connection?clientid=d3&token={closed}")]).await;
    let out =
        coap_client(&["-m", "put", "-e", "x", &format!("{base}mqtt/devices/d3/t?clientid=d3&token={closed}")]).await;
    assert_eq!(client_code(&out), "4.01", "{out:?}");
    let made_up = "0123456789abcdef0123456789abcdef";
    let out =
        coap_client(&["-m", "put", "-e", "x", &format!("{base}mqtt/devices/d2/t?clientid=d2&token={made_up}")]).await;
    assert_eq!(client_code(&out), "4.01", "{out:?}");
    // DTLS: the right PSK publishes (with c/u/p in the URL), a wrong one is refused.
    let coaps_url = format!("coaps://127.0.0.1:{coaps}/mqtt/devices/d4/t?c=d4&u=tom&p={USER_PASSWORD}");
    let good =
        coap_client_bin("coap-client-openssl", &["-m", "put", "-e", "three", "-u", "dev1", "-k", PSK, &coaps_url])
            .await;
    assert_eq!(client_code(&good), "2.xx", "{good:?}");
    let bad =
        coap_client_bin("coap-client-openssl", &["-m", "put", "-e", "x", "-u", "dev1", "-k", WRONG_PSK, &coaps_url])
            .await;
    assert!(!bad.all().is_empty(), "{bad:?}");
    let mut lines = sub.lines();
    lines.sort();
    assert_eq!(lines, ["devices/d1/t one", "devices/d2/t two", "devices/d4/t three"], "the permitted publishes arrive");

    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let metrics = http_get(admin_addr, "/metrics").await;
    assert!(metrics.contains("sluice_coap_requests_total"), "{metrics}");
    let rules = http_get(admin_addr, "/rules").await;
    assert!(rules.contains("builtin:emqx"), "{rules}");

    // Stop the gateway (SIGTERM: the shutdown path logs too) and read everything it wrote.
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    // The log is as verbose as it gets: it shows the exchanges it must keep secrets out of.
    assert!(output.contains("TRACE"), "not a trace log");
    assert!(output.contains("Request received.") && output.contains("Request refused."), "requests not logged");
    let mut targets: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for line in output.lines() {
        if let Some(target) = line.split_whitespace().nth(2).and_then(|t| t.split("::").next()) {
            *targets.entry(target.trim_end_matches(':')).or_default() += 1;
        }
    }
    println!("{} log lines at trace, by crate: {targets:?}", output.lines().count());
    let secrets = [USER_PASSWORD, WRONG_PASSWORD, BROKER_PASSWORD, PSK, WRONG_PSK, &replaced, &live, &closed, made_up];
    assert_no_secret(&output, &secrets, "the log");
    assert_no_secret(&metrics, &secrets, "/metrics");
    assert_no_secret(&rules, &secrets, "/rules");
}

#[test]
fn base64_of_the_secret_forms_is_right() {
    assert_eq!(base64(b"Man"), "TWFu");
    assert_eq!(base64(b"Ma"), "TWE");
    assert_eq!(base64(b"M"), "TQ");
}
