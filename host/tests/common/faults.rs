//! Fault-injection harness: a mosquitto that can be stopped, killed, frozen and restarted on
//! the same port with its persistence file, a persistent QoS 1 `mosquitto_sub` that reconnects
//! by itself, the `sluice` binary as a process that can be crashed and restarted on the same
//! port, and a raw CoAP client that drives a CON load and records the answer to every request.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};

use super::{code, find, free_tcp_port, request, uint_option};

/// The `sluice` binary built for these tests.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`, `USR1`) to a process we started.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits for a child to exit, for at most `timeout`; kills it if it did not.
fn reap(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A Debian mosquitto with `persistence true` in its own folder, on a fixed ephemeral port, so
/// that it can be stopped (SIGTERM: it saves its sessions and queued messages), killed
/// (SIGKILL: it saves nothing), frozen (SIGSTOP) and started again on the same port.
pub struct Broker {
    /// The TCP port, the same across restarts.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts it; returns once it accepts connections.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // Started as root, mosquitto drops to the `mosquitto` user, which must be able to write
        // its persistence file here.
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let port = free_tcp_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             autosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 100\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = Broker { port, dir, child: None };
        broker.restart();
        broker
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker is not running").id()
    }

    /// Its log (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn saves(&self) -> usize {
        self.log().matches("Saving in-memory database").count()
    }

    /// Starts it (again) on the same port with the same persistence file; returns once it
    /// accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let log = OpenOptions::new().create(true).append(true).open(self.dir.path().join("mosquitto.log")).unwrap();
        let mut child = Command::new(find("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("mosquitto exited ({status}) instead of listening on {}:\n{}", self.port, self.log());
            }
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}:\n{}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGTERM, and waits until it exited: it writes its persistence file on the way out.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the broker is not running");
        signal(child.id(), "TERM");
        assert!(reap(&mut child, Duration::from_secs(10)), "mosquitto did not stop on SIGTERM:\n{}", self.log());
    }

    /// SIGKILL, and waits until it is gone: whatever it did not save is lost.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the broker is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Writes the persistence file now (SIGUSR1) and waits until it is written.
    pub fn save(&self) {
        let before = self.saves();
        signal(self.pid(), "USR1");
        assert!(wait_until(Duration::from_secs(10), || self.saves() > before), "no save on SIGUSR1:\n{}", self.log());
    }

    /// SIGSTOP: connections stay open, nothing is read or answered.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`Broker::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_quiet(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal_quiet(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).stderr(Stdio::null()).status()
}

/// `mosquitto_sub -c -i ID -q 1 -v`: a persistent QoS 1 session that reconnects by itself
/// (about once a second while the broker is down) and collects every `topic payload` line.
pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    port: u16,
    filter: String,
}

impl Subscriber {
    /// Starts it on `filter` with a client id unique to this process and `name`, and waits
    /// until a QoS 1 probe published to `probe_topic` (which `filter` must match) arrives.
    pub fn start(port: u16, name: &str, filter: &str, probe_topic: &str) -> Subscriber {
        let id = format!("sub-{name}-{}", std::process::id());
        let mut child = Command::new(find("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "-i", &id, "-q", "1", "-v", "-t", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let sub = Subscriber { child, lines, reader: Some(reader), port, filter: filter.to_owned() };
        sub.probe(probe_topic);
        sub
    }

    /// Publishes QoS 1 probes to `topic` until one arrives (the subscription is in place).
    pub fn probe(&self, topic: &str) {
        for attempt in 0..100 {
            let payload = format!("probe-{attempt}");
            super::mqtt_pub(self.port, topic, &payload, &["-q", "1"]);
            let expected = format!("{topic} {payload}");
            if wait_until(Duration::from_millis(300), || self.lines().contains(&expected)) {
                return;
            }
        }
        panic!("mosquitto_sub on {} never received a probe on {topic}", self.filter);
    }

    /// SIGSTOP: it reads nothing, so the broker queues its messages.
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    /// SIGCONT after [`Subscriber::freeze`].
    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The payloads received on `topic`, probes excluded, in order.
    pub fn payloads(&self, topic: &str) -> Vec<String> {
        let prefix = format!("{topic} ");
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|p| !p.starts_with("probe-"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = signal_quiet(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The gateway settings the fault tests vary.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// `mqtt.publish_qos`.
    pub publish_qos: &'static str,
    /// `mqtt.publish_timeout`.
    pub publish_timeout: &'static str,
    /// `mqtt.retry_after` (the Max-Age of a 5.03).
    pub retry_after: u32,
    /// `coap.separate_response_after`.
    pub separate_response_after: &'static str,
    /// `mqtt.client_id`; another client connecting with it takes the gateway's session over
    /// (the broker disconnects the gateway, which reconnects): a short outage with the broker up.
    pub client_id: String,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let client_id = format!("sluice-faults-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Self { publish_qos: "coap", publish_timeout: "10s", retry_after: 2, separate_response_after: "1s", client_id }
    }
}

/// `sluice run` as a separate process on fixed ephemeral CoAP and admin ports, with its log in
/// a file, so that it can be crashed (SIGKILL), stopped (SIGTERM) and started again on the
/// same ports.
pub struct Sluice {
    /// The CoAP address, the same across restarts.
    pub coap: SocketAddr,
    /// The admin API address.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: usize,
}

impl Sluice {
    /// Writes a config for `broker` (builtin:emqx, anonymous) and starts the binary.
    pub fn start(broker: &str, options: &GatewayOptions) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let coap_port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let coap: SocketAddr = format!("127.0.0.1:{coap_port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let GatewayOptions { publish_qos, publish_timeout, retry_after, separate_response_after, client_id } = options;
        let config = format!(
            "coap:\n  bind: {coap}\n  ack_timeout: 1s\n  separate_response_after: {separate_response_after}\n\
             admin:\n  bind: {admin}\n\
             mqtt:\n  broker: {broker}\n  client_id: {client_id}\n  embedded_bind: 127.0.0.1:{embedded}\n  publish_qos: {publish_qos}\n  \
             publish_timeout: {publish_timeout}\n  retry_after: {retry_after}\n\
             rules:\n  - rule: builtin:emqx\n    config:\n      anonymous: true\n",
            embedded = free_tcp_port(),
        );
        std::fs::write(dir.path().join("sluice.yaml"), config).unwrap();
        let mut sluice = Sluice { coap, admin, dir, child: None, starts: 0 };
        sluice.restart();
        sluice
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sluice.log")
    }

    /// Its log (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts it (again) with the same config; returns once it serves CoAP.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the gateway is already running");
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut child = Command::new(SLUICE)
            .args(["run", "--config", self.dir.path().join("sluice.yaml").to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches("Sluice is serving.").count() < self.starts {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("sluice exited ({status}) before serving:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "sluice did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGKILL: a crash; nothing is flushed, nothing is answered.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the gateway is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, and waits until it exited (the graceful shutdown path).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the gateway is not running");
        signal(child.id(), "TERM");
        assert!(reap(&mut child, Duration::from_secs(15)), "sluice did not stop on SIGTERM:\n{}", self.log());
    }

    /// SIGTERM without waiting: the gateway drains while the test goes on sending.
    pub fn terminate(&self) {
        signal(self.child.as_ref().expect("the gateway is not running").id(), "TERM");
    }

    /// Waits until it exited (after [`Self::terminate`]); whether it exited with success.
    pub fn wait_stopped(&mut self) -> bool {
        let mut child = self.child.take().expect("the gateway is not running");
        assert!(
            reap(&mut child, Duration::from_secs(20)),
            "sluice did not stop on SIGTERM:
{}",
            self.log()
        );
        child.wait().is_ok_and(|status| status.success())
    }

    /// One admin GET; the body of a 200 answer, else None.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(self.admin).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    }

    /// The value of one series of `/metrics`, named with its labels exactly as rendered
    /// (`sluice_observers`, `sluice_coap_requests_total{transport="udp",method="PUT"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let body = self.admin_get("/metrics")?;
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What became of one request of a [`ConLoad`].
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The response code (`"2.04"`), None while unanswered (or given up on).
    pub code: Option<String>,
    /// The response's Max-Age option.
    pub max_age: Option<u32>,
    /// Retransmissions the client sent.
    pub retransmissions: u32,
}

/// Counters the load thread updates while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests whose first transmission is about to go out or went out: request number `n`
    /// was sent after any moment at which this read `<= n`.
    pub claimed: AtomicUsize,
    /// Requests that got their answer.
    pub answered: AtomicUsize,
    /// Set to stop sending new requests; the load then waits for the outstanding ones.
    pub stop: AtomicBool,
    /// Every request's outcome, by number.
    pub outcomes: Mutex<Vec<Outcome>>,
}

impl Progress {
    /// Requests numbered `from..` answered with `code` so far.
    pub fn count_from(&self, from: usize, code: &str) -> usize {
        let outcomes = self.outcomes.lock().unwrap();
        outcomes.iter().skip(from).filter(|o| o.code.as_deref() == Some(code)).count()
    }
}

/// Retransmission schedule of the load's CONs: 1 s, doubling, 3 retransmissions (RFC 7252's
/// shape, shorter so that a test stays bounded).
const LOAD_ACK_TIMEOUT: Duration = Duration::from_secs(1);
const LOAD_MAX_RETRANSMIT: u32 = 3;
/// How long a request acknowledged by an empty ACK waits for its separate response.
const LOAD_SEPARATE_WAIT: Duration = Duration::from_secs(15);

struct Pending {
    seq: usize,
    bytes: Vec<u8>,
    acked: bool,
    deadline: Instant,
    timeout: Duration,
    retransmissions: u32,
}

/// A raw CoAP client that keeps `window` CON PUTs outstanding: request `n` goes to
/// `path(n)` with payload `n`, Message-ID `n` and token `n` (4 bytes). It acknowledges
/// separate responses, retransmits unacknowledged requests, and records every answer.
pub struct ConLoad {
    /// Shared with the load thread.
    pub progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
}

impl ConLoad {
    /// Starts the load thread.
    pub fn start(gateway: SocketAddr, window: usize, path: impl Fn(usize) -> String + Send + 'static) -> ConLoad {
        let progress = Arc::new(Progress::default());
        let shared = progress.clone();
        let thread = std::thread::spawn(move || run_load(gateway, window, &path, &shared));
        ConLoad { progress, thread: Some(thread) }
    }

    /// Stops sending, waits for the outstanding requests, and returns every outcome.
    pub fn finish(mut self) -> Vec<Outcome> {
        self.progress.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.progress.outcomes.lock().unwrap().clone()
    }
}

impl Drop for ConLoad {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Release);
    }
}

fn run_load(gateway: SocketAddr, window: usize, path: &dyn Fn(usize) -> String, progress: &Progress) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut pending: HashMap<u16, Pending> = HashMap::new();
    let mut next = 0usize;
    let mut buf = [0u8; 2048];
    loop {
        let stopping = progress.stop.load(Ordering::Acquire);
        if stopping && pending.is_empty() {
            return;
        }
        while !stopping && pending.len() < window && next < usize::from(u16::MAX) {
            let seq = next;
            next += 1;
            let mut req = request(RequestType::Put, true, seq as u16, &(seq as u32).to_be_bytes(), &path(seq));
            req.payload = seq.to_string().into_bytes();
            let bytes = req.to_bytes().unwrap();
            progress.outcomes.lock().unwrap().push(Outcome::default());
            progress.claimed.store(seq + 1, Ordering::Release);
            socket.send_to(&bytes, gateway).unwrap();
            let deadline = Instant::now() + LOAD_ACK_TIMEOUT;
            let p = Pending { seq, bytes, acked: false, deadline, timeout: LOAD_ACK_TIMEOUT, retransmissions: 0 };
            pending.insert(seq as u16, p);
        }
        // Read what arrived.
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(packet) = Packet::from_bytes(&buf[..n]) else { continue };
            let mid = packet.header.message_id;
            match packet.header.get_type() {
                MessageType::Acknowledgement if packet.header.code == MessageClass::Empty => {
                    if let Some(p) = pending.get_mut(&mid) {
                        p.acked = true;
                        p.deadline = Instant::now() + LOAD_SEPARATE_WAIT;
                    }
                }
                MessageType::Acknowledgement => {
                    if let Some(p) = pending.remove(&mid) {
                        record(progress, &p, &packet);
                    }
                }
                MessageType::Confirmable | MessageType::NonConfirmable => {
                    if packet.header.get_type() == MessageType::Confirmable {
                        let mut ack = Packet::new();
                        ack.header.set_type(MessageType::Acknowledgement);
                        ack.header.code = MessageClass::Empty;
                        ack.header.message_id = mid;
                        socket.send_to(&ack.to_bytes().unwrap(), from).unwrap();
                    }
                    let token: [u8; 4] = packet.get_token().try_into().unwrap_or_default();
                    let key = u32::from_be_bytes(token) as u16;
                    let seq = u32::from_be_bytes(token) as usize;
                    if pending.get(&key).is_some_and(|p| p.seq == seq)
                        && let Some(p) = pending.remove(&key)
                    {
                        record(progress, &p, &packet);
                    }
                }
                MessageType::Reset => {
                    if let Some(p) = pending.remove(&mid) {
                        let mut outcomes = progress.outcomes.lock().unwrap();
                        outcomes[p.seq].code = Some("RST".into());
                        progress.answered.fetch_add(1, Ordering::AcqRel);
                    }
                }
            }
        }
        // Retransmit or give up.
        let now = Instant::now();
        let mut gone = Vec::new();
        for (mid, p) in &mut pending {
            if now < p.deadline {
                continue;
            }
            if p.acked || p.retransmissions == LOAD_MAX_RETRANSMIT {
                gone.push(*mid);
                continue;
            }
            socket.send_to(&p.bytes, gateway).unwrap();
            p.retransmissions += 1;
            p.timeout *= 2;
            p.deadline = now + p.timeout;
            progress.outcomes.lock().unwrap()[p.seq].retransmissions = p.retransmissions;
        }
        for mid in gone {
            pending.remove(&mid);
        }
    }
}

fn record(progress: &Progress, p: &Pending, response: &Packet) {
    let mut outcomes = progress.outcomes.lock().unwrap();
    let outcome = &mut outcomes[p.seq];
    outcome.code = Some(code(response));
    outcome.max_age = uint_option(response, CoapOption::MaxAge);
    progress.answered.fetch_add(1, Ordering::AcqRel);
}
