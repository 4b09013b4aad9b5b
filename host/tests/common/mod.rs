//! Test harness: real peers on ephemeral ports — the gateway in-process, Debian's mosquitto
//! and its clients, libcoap's `coap-client-notls`, and a raw UDP socket for byte-level cases.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use sluice::config::Config;
use sluice::server::Server;

pub mod cli;
pub mod faults;
pub mod process;

/// A loopback TCP port where nothing listens, held so that nothing else can take it: the
/// socket is bound but never listens, so a connection is refused for as long as this lives.
/// (A port from `free_tcp_port` alone can be taken meanwhile by a broker of a parallel test.)
pub struct DeadPort {
    _socket: socket2::Socket,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        DeadPort { _socket: socket, port }
    }
}

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn find(bin: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{bin} not found: run scripts/test.sh, which installs libcoap3-bin, mosquitto, mosquitto-clients and nats-server"
    );
}

/// A broker process (`bin -c CONF`) whose MQTT port is `port`, killed on drop.
struct BrokerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Writes `conf` to a temporary folder, starts `bin -c` on it and waits (up to `wait`) until
    /// `port` accepts TCP connections.
    fn start(bin: &str, dir: tempfile::TempDir, conf: &str, port: u16, wait: Duration) -> BrokerProcess {
        let file = dir.path().join("broker.conf");
        std::fs::write(&file, conf).unwrap();
        let child =
            Command::new(find(bin)).arg("-c").arg(&file).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + wait;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{bin} did not open its MQTT port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        BrokerProcess { child, _dir: dir }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mosquitto broker on an ephemeral port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    _process: BrokerProcess,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_on(free_tcp_port())
    }

    pub fn start_on(port: u16) -> Mosquitto {
        Self::start_with(port, "")
    }

    /// On `port`, with `extra` lines in its config (say `max_qos 0\n`).
    pub fn start_with(port: u16, extra: &str) -> Mosquitto {
        let conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}");
        let process =
            BrokerProcess::start("mosquitto", tempfile::tempdir().unwrap(), &conf, port, Duration::from_secs(5));
        Mosquitto { port, _process: process }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// A NATS server with JetStream and its MQTT interface (which speaks MQTT 3.1.1 only) on
/// ephemeral ports, killed on drop.
pub struct Nats {
    /// The MQTT port.
    pub port: u16,
    _process: BrokerProcess,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let conf = format!(
            "server_name: test\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\nmqtt {{ listen: 127.0.0.1:{port} }}\n",
            free_tcp_port(),
            dir.path().join("js")
        );
        let process = BrokerProcess::start("nats-server", dir, &conf, port, Duration::from_secs(15));
        Nats { port, _process: process }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The admin API's `/metrics` text (the whole HTTP answer).
pub async fn metrics_answer(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    String::from_utf8(raw).unwrap()
}

/// Waits (10 s at most) until the gateway's `/metrics` says it is connected to its broker.
pub async fn wait_broker_connected(gw: &Server) {
    let admin = gw.admin_addr.expect("the test config binds the admin API");
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics_answer(admin).await;
        if text.contains("sluice_mqtt_connected 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not connect to its broker:\n{text}");
}

/// `mosquitto_sub -C count -v` collecting `topic payload` lines; waits until it is subscribed.
pub struct Sub {
    child: Child,
}

impl Sub {
    pub fn start(port: u16, topic: &str, count: usize) -> Sub {
        let child = Command::new(find("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-v", "-C", &count.to_string()])
            .args(["-W", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // mosquitto_sub has no "subscribed" signal; give it time to connect and subscribe.
        std::thread::sleep(Duration::from_millis(400));
        Sub { child }
    }

    /// Waits for it to exit (after `count` messages, or 20 s) and returns its lines.
    pub fn lines(self) -> Vec<String> {
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

/// `mosquitto_pub` once.
pub fn mqtt_pub(port: u16, topic: &str, message: &str, extra: &[&str]) {
    let status = Command::new(find("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-m", message])
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The output of a `coap-client-notls` run.
#[derive(Debug)]
pub struct ClientOutput {
    pub stdout: String,
    pub stderr: String,
}

impl ClientOutput {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `coap-client-notls ARGS` (with a 10 s cap) without blocking the runtime.
pub async fn coap_client(args: &[&str]) -> ClientOutput {
    let bin = find("coap-client-notls");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin).args(["-B", "10"]).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("coap-client-notls hung")
    .unwrap();
    ClientOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `coap-client-notls ARGS` in the background (for Observe).
pub fn coap_client_spawn(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(find("coap-client-notls"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A gateway configuration on ephemeral ports (the admin API's too) with the given broker and rule config (YAML).
pub fn config(broker: &str, rule_yaml: &str) -> Config {
    let embedded_port = free_tcp_port();
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\n  ack_timeout: 1s\nadmin:\n  bind: 127.0.0.1:0\nmqtt:\n  broker: {broker}\n  embedded_bind: 127.0.0.1:{embedded_port}\n  publish_timeout: 3s\n  retry_after: 2\nrules:\n  - rule: builtin:emqx\n    config:\n{}\n",
        rule_yaml.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
    );
    Config::parse(&text, "test.yaml").unwrap_or_else(|p| panic!("{p}\n{text}"))
}

/// Starts a gateway.
pub async fn gateway(config: Config) -> Server {
    let _ = tracing_subscriber::fmt().with_env_filter("sluice=debug").with_test_writer().try_init();
    sluice::server::start(config).await.unwrap()
}

/// `coap://127.0.0.1:PORT/PATH_AND_QUERY`
pub fn url(server: &Server, path: &str) -> String {
    format!("coap://127.0.0.1:{}/{}", server.coap_addr.port(), path)
}

/// A raw CoAP peer for byte-level tests.
pub struct Raw {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Raw {
    pub fn new(server: SocketAddr) -> Raw {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Raw { socket, server }
    }

    pub fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).unwrap();
    }

    /// The next datagram, or None after the read timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    pub fn recv_packet(&self) -> Option<Packet> {
        self.recv().map(|b| Packet::from_bytes(&b).unwrap())
    }

    /// A raw peer that has shown the gateway that it receives at its address, so that it is
    /// sent full answers whatever the amplification budget. Under the default budget, an
    /// Observe registration from an unverified address is answered with an empty ACK and a
    /// CON 2.05, whose ACK verifies the address (the relation is then ended with Observe=1);
    /// under strict RFC 9175 (`coap.amplification_budget: 0`) it is answered 4.01 with an
    /// Echo value, and repeating the request with it verifies the address, as libcoap does.
    pub fn verified(server: SocketAddr) -> Raw {
        let raw = Raw::new(server);
        let path = "mqtt/sluice-verify?c=raw-verify";
        let mut get = request(RequestType::Get, true, 0xfff0, b"vfy", path);
        get.add_option(CoapOption::Observe, vec![]);
        raw.send(&get.to_bytes().unwrap());
        let mut first = raw.recv_packet().expect("an answer to the Observe registration");
        if let Some(echo) = first.get_option(CoapOption::Unknown(252)).and_then(|v| v.front()).cloned() {
            assert_eq!(code(&first), "4.01", "an Echo value comes with a 4.01 challenge");
            let mut again = request(RequestType::Get, true, 0xfff1, b"vfy", path);
            again.add_option(CoapOption::Unknown(252), echo);
            raw.send(&again.to_bytes().unwrap());
            first = raw.recv_packet().expect("an answer to the repeated request");
            assert_eq!(code(&first), "2.05", "{first:?}");
        } else {
            assert_eq!(first.header.get_type(), MessageType::Acknowledgement);
            if code(&first) == "4.01" {
                // A gateway that wants credentials: unverified, the peer is still served
                // ordinary answers within the amplification budget.
                return raw;
            }
            if code(&first) == "0.00" {
                first = raw.recv_packet().expect("the registration's answer after the empty ACK");
            }
            assert_eq!(code(&first), "2.05", "{first:?}");
            if first.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = first.header.message_id;
                raw.send(&ack.to_bytes().unwrap());
            }
        }
        let mut end = request(RequestType::Get, true, 0xfff2, b"vfy", path);
        end.add_option(CoapOption::Observe, vec![1]);
        raw.send(&end.to_bytes().unwrap());
        let ended = raw.recv_packet().expect("an answer to the deregistration");
        assert_eq!(code(&ended), "2.05", "{ended:?}");
        raw
    }
}

/// A request packet: `path_and_query` like `mqtt/a/b?c=x`.
pub fn request(method: RequestType, confirmable: bool, mid: u16, token: &[u8], path_and_query: &str) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(if confirmable { MessageType::Confirmable } else { MessageType::NonConfirmable });
    p.header.code = MessageClass::Request(method);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in query.split('&').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p
}

/// The response code of a packet as `"2.04"`.
pub fn code(p: &Packet) -> String {
    let byte: u8 = p.header.code.into();
    format!("{}.{:02}", byte >> 5, byte & 0x1f)
}

/// Polls `f` until it is true or 5 s pass.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A CoAP uint option (Max-Age, Size1, …) of a packet.
pub fn uint_option(p: &Packet, option: CoapOption) -> Option<u32> {
    let value = p.get_option(option)?.front()?;
    Some(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// libcoap's DTLS clients: the OpenSSL and the GnuTLS build.
pub const DTLS_CLIENTS: [&str; 2] = ["coap-client-openssl", "coap-client-gnutls"];

/// Runs a libcoap client binary (`coap-client-openssl`, `coap-client-gnutls`, …) with ARGS
/// (and `-B 5`), with a 30 s cap, without blocking the runtime.
pub async fn coap_client_bin(bin: &str, args: &[&str]) -> ClientOutput {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(find(bin)).args(["-B", "5"]).args(args).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{bin} hung"))
    .unwrap();
    ClientOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a libcoap client binary in the background (for Observe).
pub fn coap_client_bin_spawn(bin: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(find(bin))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A gateway configuration like [`config`] with a `dtls:` section (YAML lines, bound to an
/// ephemeral port unless they say otherwise).
pub fn dtls_config(broker: &str, dtls_yaml: &str, rule_yaml: &str) -> Config {
    let embedded_port = free_tcp_port();
    let dtls = dtls_yaml.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n");
    let text = format!(
        "coap:\n  bind: 127.0.0.1:0\n  ack_timeout: 1s\nadmin:\n  bind: 127.0.0.1:0\ndtls:\n  bind: 127.0.0.1:0\n{dtls}\nmqtt:\n  broker: {broker}\n  embedded_bind: 127.0.0.1:{embedded_port}\n  publish_timeout: 3s\n  retry_after: 2\nrules:\n  - rule: builtin:emqx\n    config:\n{}\n",
        rule_yaml.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
    );
    Config::parse(&text, "test.yaml").unwrap_or_else(|p| panic!("{p}\n{text}"))
}

/// `coaps://127.0.0.1:PORT/PATH_AND_QUERY`
pub fn coaps_url(server: &Server, path: &str) -> String {
    format!("coaps://127.0.0.1:{}/{}", server.coaps_addr.expect("DTLS is not on").port(), path)
}

/// A rule in WAT whose route publishes every request to `topic`.
pub fn wat_rule(topic: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "sluice1" "set" (func $set (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{topic}")
          (func (export "sluice_abi_v1"))
          (func (export "sluice_init") (result i32) (i32.const 0))
          (func (export "sluice_route") (result i32)
            (drop (call $set (i32.const 104) (i32.const 16) (i32.const {len})))
            (i32.const 1)))"#,
        len = topic.len()
    ))
    .unwrap()
}
