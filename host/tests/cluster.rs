//! A scaled-out deployment, run as a user runs it (`scripts/cluster.sh`): a 3-node NATS
//! cluster (JetStream, MQTT), 3 gateways each on its own node, nginx balancing UDP in front;
//! and the same with one mosquitto. 1,000 simulated devices send CON PUTs through the
//! balancer while one gateway (and, on NATS, one broker node) is killed with SIGKILL: no
//! acknowledged message may be lost, and every device must be served again. Also: a `/ps`
//! value set through one gateway is read through another, and an observer on one gateway gets
//! a message published through another. The figures go to stdout (RELIABILITY.md §9).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, Packet, RequestType};
use common::*;
use sluice::mqtt::{ClientConfig, Message, try_connect};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const DEVICES: usize = 1000;
/// Each device sends one PUT, waits for its 2.04, then pauses this long: 1,000 PUTs a second
/// in all on mosquitto; on NATS, whose QoS 1 publishes are stored in a replicated JetStream
/// stream before their PUBACK, a few hundred a second is what this 2-core machine carries
/// beside three gateways.
const PAUSE_MOSQUITTO: Duration = Duration::from_millis(1000);
const PAUSE_NATS: Duration = Duration::from_millis(4000);

/// When what fails is killed, and how long the devices go on after it: at least `after`, and
/// until every device has been served again (or, without `served_again`, answered again)
/// plus a few seconds, for `cap` at most.
#[derive(Clone, Copy)]
struct Schedule {
    kill_at: Duration,
    after: Duration,
    cap: Duration,
    /// Every device must get a 2.04 again after the kill; else an answer (2.04 or 5.03 with
    /// Max-Age) is what the gateways owe it, and the served-again figures are reported.
    served_again: bool,
}

/// A gateway killed: nginx moves its devices at their next retransmission.
const GATEWAY_KILLED: Schedule = Schedule {
    kill_at: Duration::from_secs(6),
    after: Duration::from_secs(18),
    cap: Duration::from_secs(60),
    served_again: true,
};
/// A gateway and a NATS node killed. NATS 2.9 elects new JetStream leaders within seconds, but
/// in about 4 runs of 10 here its MQTT stores then stay slow for minutes (a read of a
/// connection's publishes taking 2–4 s, RELIABILITY.md §9): the gateways queue and answer
/// 5.03 with Max-Age, as they must, and lose nothing; how many devices were served again, and
/// how soon, is measured rather than asserted.
const NODE_KILLED: Schedule = Schedule {
    kill_at: Duration::from_secs(8),
    after: Duration::from_secs(20),
    cap: Duration::from_secs(60),
    served_again: false,
};

/// One deployment at a time: two on two cores would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A deployment started by `scripts/cluster.sh up`, taken down on drop.
struct Deployment {
    dir: tempfile::TempDir,
    broker: &'static str,
    base: u16,
    port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

impl Deployment {
    fn up(broker: &'static str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let (base, port) = free_layout();
        let out = self::cluster(
            dir.path(),
            &["up", "--broker", broker, "--base", &base.to_string(), "--port", &port.to_string()],
        );
        assert!(out.status.success(), "cluster.sh up failed:\n{}", text(&out));
        Deployment { dir, broker, base, port }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = cluster(self.dir.path(), args);
        assert!(out.status.success(), "cluster.sh {args:?}:\n{}", text(&out));
        text(&out)
    }

    fn balancer(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn gateway(&self, n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 10 * n + 4))
    }

    /// The MQTT URL of NATS node `n` (of the one mosquitto, whatever `n`).
    fn mqtt(&self, n: u16) -> String {
        let port = if self.broker == "mosquitto" { self.base + 3 } else { self.base + 10 * n + 3 };
        format!("mqtt://127.0.0.1:{port}")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = cluster(self.dir.path(), &["down"]);
        if std::thread::panicking() {
            // Keep the configs and logs of a failed run for a look.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("the deployment's files: {}", kept.display());
        }
    }
}

fn cluster(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash").arg(script()).args(args).env("SLUICE", SLUICE).env("SLUICE_CLUSTER_DIR", dir).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A base whose 40 ports (and a balancer port) are free, below the ephemeral range.
fn free_layout() -> (u16, u16) {
    for _ in 0..100 {
        let base = 20_000 + 50 * rand::random_range(0..200u16);
        let ports: Vec<u16> = (base..base + 41).collect();
        let free = ports.iter().all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", *p)).is_ok()
        });
        if free {
            return (base, base + 40);
        }
    }
    panic!("no free block of ports");
}

/// What the devices saw: every acknowledged (device, seq), and when each device's acks came.
#[derive(Default)]
struct Seen {
    acked: HashSet<(usize, u32)>,
    ack_times: HashMap<usize, Vec<Instant>>,
    /// When each device last got any answer (2.04, or 5.03 with when to retry).
    answered: HashMap<usize, Instant>,
}

/// One device: CON PUTs `load/{dev}` with its sequence number, each retransmitted every
/// second (same message id) until answered 2.04, until told to stop.
async fn device(dev: usize, target: SocketAddr, pause: Duration, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 1500];
    let mut seq = 0u32;
    // Spread the devices' first requests over the first pause.
    tokio::time::sleep(pause.mul_f64(dev as f64 / DEVICES as f64)).await;
    let mut mid = (dev as u16).wrapping_mul(61);
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let path = format!("mqtt/load/{dev}?c=dev{dev}");
        let acked = 'request: loop {
            // A new request (a new Message-ID), retransmitted every second until answered.
            mid = mid.wrapping_add(1);
            let mut req = request(RequestType::Put, true, mid, &seq.to_be_bytes(), &path);
            req.payload = seq.to_string().into_bytes();
            let bytes = req.to_bytes().unwrap();
            loop {
                if stop.load(Ordering::SeqCst) {
                    break 'request false;
                }
                socket.send_to(&bytes, target).await.unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await;
                // No answer: its gateway is gone (or the datagram was refused); retransmit.
                let Ok(Ok(n)) = answer else { continue };
                match Packet::from_bytes(&buf[..n]) {
                    Ok(p) if p.header.message_id == mid && code(&p) == "2.04" => break 'request true,
                    // 5.03 (its broker is away or slow): the same PUT again, as a new
                    // request, after the Max-Age the gateway asks for (as a device should: a
                    // fleet retrying at once would bury a broker that is recovering).
                    Ok(p) if p.header.message_id == mid => {
                        seen.lock().unwrap().answered.insert(dev, Instant::now());
                        let wait = uint_option(&p, CoapOption::MaxAge).unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait.into())).await;
                        continue 'request;
                    }
                    _ => {} // a stray answer
                }
            }
        };
        if acked {
            let mut seen = seen.lock().unwrap();
            seen.acked.insert((dev, seq));
            seen.ack_times.entry(dev).or_default().push(Instant::now());
            seen.answered.insert(dev, Instant::now());
        }
        tokio::time::sleep(pause).await;
    }
}

/// A QoS 1 subscriber to `load/#` with a persistent session (`mosquitto_sub -c`): when a broker
/// node's failure resets its connection too, the broker keeps what arrives meanwhile for it.
struct Subscriber {
    child: std::process::Child,
    received: Arc<Mutex<HashSet<(usize, u32)>>>,
}

impl Subscriber {
    async fn start(url: &str) -> Subscriber {
        let port = url.rsplit(':').next().unwrap();
        let id = format!("cluster-test-{}", rand::random::<u32>());
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", port, "-i", &id, "-c", "-q", "1", "-v", "-t", "load/#"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        let received = Arc::new(Mutex::new(HashSet::new()));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stdout = child.stdout.take().unwrap();
        {
            let (received, ready) = (received.clone(), ready.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Some((topic, payload)) = line.split_once(' ') else { continue };
                    if topic == "load/ready" {
                        ready.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    let dev = topic.strip_prefix("load/").and_then(|d| d.parse().ok());
                    if let (Some(dev), Ok(seq)) = (dev, payload.parse()) {
                        received.lock().unwrap().insert((dev, seq));
                    }
                }
            });
        }
        // Subscribed once a message published after it arrives.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the subscriber on {url} did not get load/ready");
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "load/ready", "-m", "up"])
                .output();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Subscriber { child, received }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load through the balancer, killing what `kill` says at `schedule.kill_at`; returns
/// the figures line. Asserts nothing acknowledged was lost and every device was served again.
async fn load_with_failures(
    deployment: &Deployment,
    subscriber_url: String,
    pause: Duration,
    schedule: Schedule,
    kill: &[&[&str]],
) -> String {
    let subscriber = Subscriber::start(&subscriber_url).await;
    let received = subscriber.received.clone();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let devices: Vec<_> = (0..DEVICES)
        .map(|dev| tokio::spawn(device(dev, deployment.balancer(), pause, stop.clone(), seen.clone())))
        .collect();
    tokio::time::sleep(schedule.kill_at).await;
    let killed_at = Instant::now();
    for args in kill {
        deployment.run(args);
    }
    tokio::time::sleep(schedule.after).await;
    let served_again = |seen: &Seen| {
        (0..DEVICES).all(|dev| seen.ack_times.get(&dev).is_some_and(|t| t.last().is_some_and(|t| *t > killed_at)))
    };
    let answered_again = |seen: &Seen| (0..DEVICES).all(|dev| seen.answered.get(&dev).is_some_and(|t| *t > killed_at));
    let done = |seen: &Seen| if schedule.served_again { served_again(seen) } else { answered_again(seen) };
    while !done(&seen.lock().unwrap()) && killed_at.elapsed() < schedule.cap {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A few seconds more of load on the recovered deployment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let load = start.elapsed();
    for d in devices {
        d.await.unwrap();
    }
    // Let the subscriber drain what is on its way.
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    // (A reset persistent session gets what the broker kept for it after it reconnects.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let lost: Vec<_> = seen.acked.difference(&received.lock().unwrap()).copied().collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(subscriber);

    // Per device: the longest time without an acknowledgement after the kill (from the kill, or
    // from its last ack before it), and whether it was served again at all.
    let mut worst = Duration::ZERO;
    let mut unserved = Vec::new();
    for dev in 0..DEVICES {
        let times = seen.ack_times.get(&dev).cloned().unwrap_or_default();
        let after: Vec<Instant> = times.iter().copied().filter(|t| *t > killed_at).collect();
        if after.is_empty() {
            unserved.push(dev);
            continue;
        }
        let mut last = killed_at;
        for t in after {
            worst = worst.max(t - last);
            last = t;
        }
    }
    let unanswered: Vec<usize> =
        (0..DEVICES).filter(|dev| seen.answered.get(dev).is_none_or(|t| *t <= killed_at)).collect();
    let figures = format!(
        "load {:.0} s, acknowledged {}, received {}, acknowledged-and-lost {}, devices answered again {}/{DEVICES}, served again {}/{DEVICES}, longest gap after the kill {:.1} s",
        load.as_secs_f64(),
        seen.acked.len(),
        received.lock().unwrap().len(),
        lost.len(),
        DEVICES - unanswered.len(),
        DEVICES - unserved.len(),
        worst.as_secs_f64()
    );
    println!("cluster figures: {figures}");
    // What each gateway counted, kept with the deployment's files for a failed run; every
    // gateway still running is connected to a broker (node) still running.
    for n in 1..=3u16 {
        let admin = SocketAddr::from(([127, 0, 0, 1], deployment.base + 10 * n + 5));
        if std::net::TcpStream::connect(admin).is_ok() {
            let metrics = metrics_answer(admin).await;
            std::fs::write(deployment.dir.path().join(format!("gateway{n}.metrics")), &metrics).unwrap();
            assert!(metrics.contains("\nsluice_mqtt_connected 1"), "gateway {n} has no broker ({figures})");
        }
    }
    assert!(lost.is_empty(), "acknowledged but never delivered: {:?} ({figures})", &lost[..lost.len().min(20)]);
    assert!(unanswered.is_empty(), "devices never answered after the kill: {unanswered:?} ({figures})");
    if schedule.served_again {
        assert!(unserved.is_empty(), "devices never served after the kill: {unserved:?} ({figures})");
    }
    let before = seen.ack_times.values().flatten().filter(|t| **t <= killed_at).count();
    let expected = DEVICES as f64 * schedule.kill_at.as_secs_f64() / pause.as_secs_f64();
    assert!(before as f64 > expected / 4.0, "too little load went through before the kill: {figures}");
    figures
}

/// `/ps` through one gateway, read through another; an observer on gateway 1 gets what is
/// published through gateway 3.
async fn values_and_observers_cross_gateways(deployment: &Deployment) {
    let on = |n: u16, path: &str| format!("coap://{}/{path}", deployment.gateway(n));
    let out = coap_client(&["-m", "put", "-e", "on", &on(1, "ps/lamp/l1?c=l1")]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let mut read = String::new();
    for _ in 0..20 {
        read = coap_client(&["-m", "get", &on(2, "ps/lamp/l1?c=l2")]).await.all();
        if read.contains("on") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(read.contains("on"), "a value set through gateway 1 was not read through gateway 2: {read}");

    // A connection-mode token from gateway 1 works on gateway 2 (the deployment's secret).
    let out = coap_client(&["-m", "post", &on(1, "mqtt/connection?clientid=t1")]).await;
    let token = out.stdout.trim().to_string();
    assert!(!token.is_empty() && !out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
    let out = coap_client(&["-m", "put", "-e", "1", &on(2, &format!("mqtt/t/t1?clientid=t1&token={token}"))]).await;
    assert!(!out.all().contains("4.") && !out.all().contains("5."), "gateway 2 refused gateway 1's token: {out:?}");

    let observer = coap_client_spawn(&["-m", "get", "-s", "8", "-B", "10", "-o", "-", &on(1, "mqtt/cmd/o1?c=o1")]);
    // The registration reaches the broker's other nodes a little later: publish a few times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 1..=4 {
        let out = coap_client(&["-m", "put", "-e", &format!("from-gateway-3-{n}"), &on(3, "mqtt/cmd/o1?c=p3")]).await;
        assert!(!out.all().contains("4.") && !out.all().contains("5."), "{out:?}");
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    // coap-client writes the notifications' payloads at its exit (-s 8).
    let out = tokio::time::timeout(Duration::from_secs(20), observer.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("from-gateway-3-4"),
        "the observer on gateway 1 missed what gateway 3 published: {stdout:?}"
    );
}

/// The observers each gateway serves, from its `/metrics` (None once it is gone).
async fn observers(deployment: &Deployment, n: u16) -> Option<u64> {
    let admin = SocketAddr::from(([127, 0, 0, 1], deployment.base + 10 * n + 5));
    std::net::TcpStream::connect(admin).ok()?;
    let metrics = metrics_answer(admin).await;
    metrics.lines().find_map(|l| l.strip_prefix("sluice_observers ")).and_then(|v| v.parse().ok())
}

/// An RFC 7641 observer through the balancer, as a device does it: registers (repeating the
/// request with the gateway's Echo when challenged, taking a separate CON answer after an empty
/// ACK as an unverified address gets it), acknowledges Confirmable notifications,
/// and registers again once the last notification's Max-Age has passed without a new one.
struct MovingObserver {
    socket: tokio::net::UdpSocket,
    target: SocketAddr,
    mid: u16,
    /// Arrival times of the notifications.
    notified: Vec<Instant>,
    /// When the representation of the last notification goes stale.
    stale_at: Instant,
}

impl MovingObserver {
    const PATH: &str = "mqtt/cmd/mover?c=mover";
    const TOKEN: &[u8] = b"mv";

    async fn new(target: SocketAddr) -> MovingObserver {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut observer =
            MovingObserver { socket, target, mid: 0x4000, notified: Vec::new(), stale_at: Instant::now() };
        observer.register().await;
        observer
    }

    /// Registers (again), retransmitting every second; true once answered 2.05.
    async fn register(&mut self) {
        let mut echo: Option<Vec<u8>> = None;
        let mut buf = [0u8; 1500];
        loop {
            self.mid = self.mid.wrapping_add(1);
            let mut get = request(RequestType::Get, true, self.mid, Self::TOKEN, Self::PATH);
            get.add_option(CoapOption::Observe, vec![]);
            if let Some(echo) = &echo {
                get.add_option(CoapOption::Unknown(252), echo.clone());
            }
            let bytes = get.to_bytes().unwrap();
            let mut awaiting_separate = false;
            'retransmit: for _ in 0..60 {
                self.socket.send_to(&bytes, self.target).await.unwrap();
                let until = Instant::now() + Duration::from_secs(1);
                while let Ok(Ok(n)) = tokio::time::timeout_at(until.into(), self.socket.recv(&mut buf)).await {
                    let Ok(p) = Packet::from_bytes(&buf[..n]) else { continue };
                    if p.header.message_id != self.mid {
                        self.notification(&p).await;
                        if p.get_token() == Self::TOKEN && code(&p) == "2.05" && awaiting_separate {
                            // The registration's answer, sent CON after an empty ACK to an
                            // address not verified yet (acknowledged above).
                            self.stale_at = Instant::now() + Duration::from_secs(60);
                            return;
                        }
                        continue;
                    }
                    match code(&p).as_str() {
                        "0.00" => awaiting_separate = true,
                        "2.05" => {
                            self.stale_at = Instant::now() + Duration::from_secs(60);
                            return;
                        }
                        "4.01" => {
                            echo = p.get_option(CoapOption::Unknown(252)).and_then(|v| v.front()).cloned();
                            break 'retransmit;
                        }
                        other => panic!("the observer's registration was answered {other}"),
                    }
                }
            }
        }
    }

    /// Handles a datagram that is not the answer to a registration.
    async fn notification(&mut self, p: &Packet) {
        if p.header.get_type() == coap_lite::MessageType::Confirmable {
            let mut ack = Packet::new();
            ack.header.set_type(coap_lite::MessageType::Acknowledgement);
            ack.header.message_id = p.header.message_id;
            self.socket.send_to(&ack.to_bytes().unwrap(), self.target).await.unwrap();
        }
        if p.get_token() == Self::TOKEN && code(p) == "2.05" && !p.payload.is_empty() {
            let now = Instant::now();
            self.notified.push(now);
            let max_age = uint_option(p, CoapOption::MaxAge).unwrap_or(60);
            self.stale_at = now + Duration::from_secs(max_age.into());
        }
    }

    /// Listens until `end`, registering again whenever the last notification went stale.
    async fn run_until(&mut self, end: Instant) {
        let mut buf = [0u8; 1500];
        while Instant::now() < end {
            if Instant::now() >= self.stale_at {
                self.register().await;
                continue;
            }
            let until = end.min(self.stale_at);
            if let Ok(Ok(n)) = tokio::time::timeout_at(until.into(), self.socket.recv(&mut buf)).await
                && let Ok(p) = Packet::from_bytes(&buf[..n])
            {
                self.notification(&p).await;
            }
        }
    }
}

/// The observer's gateway dies: the device re-registers when the last notification's Max-Age
/// passes and another gateway serves it. Messages carry a Message Expiry of 3 s (MQTT 5), which
/// becomes the notifications' Max-Age. Returns the figures line.
async fn observer_moves_when_its_gateway_dies(deployment: &Deployment) -> String {
    let mut before = Vec::new();
    for n in 1..=3u16 {
        before.push(observers(deployment, n).await.unwrap_or(0));
    }
    let mut observer = MovingObserver::new(deployment.balancer()).await;
    let mut serving = None;
    for n in 1..=3u16 {
        if observers(deployment, n).await.unwrap_or(0) > before[usize::from(n - 1)] {
            serving = Some(n);
        }
    }
    let serving = serving.expect("no gateway counts the new observer");
    let config =
        ClientConfig { url: deployment.mqtt(1), client_id: "cluster-commands".into(), ..ClientConfig::default() };
    let (commands, _incoming) = try_connect(config).unwrap();
    assert!(commands.wait_connected(Duration::from_secs(10)).await);
    let publisher = tokio::spawn(async move {
        for seq in 0u32.. {
            let message = Message { expiry: Some(3), ..Message::new("cmd/mover", seq.to_string()) };
            // (A receipt dropped unawaited withdraws its publish.)
            if let Ok(receipt) = commands.publish(message) {
                let _ = receipt.await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    observer.run_until(Instant::now() + Duration::from_secs(3)).await;
    assert!(!observer.notified.is_empty(), "the observer got no notification through gateway {serving}");
    deployment.run(&["kill-gateway", &serving.to_string()]);
    let killed_at = Instant::now();
    observer.run_until(killed_at + Duration::from_secs(15)).await;
    publisher.abort();
    let after: Vec<Instant> = observer.notified.iter().copied().filter(|t| *t > killed_at).collect();
    let first = after.first().unwrap_or_else(|| panic!("no notification within 15 s of killing gateway {serving}"));
    let mut now_serving = Vec::new();
    for n in (1..=3u16).filter(|n| *n != serving) {
        if observers(deployment, n).await.unwrap_or(0) > before[usize::from(n - 1)] {
            now_serving.push(n);
        }
    }
    assert_eq!(now_serving.len(), 1, "the re-registered observer is not on exactly one other gateway");
    let figures = format!(
        "observer on gateway {serving} (killed) served again by gateway {} after {:.1} s (notification Max-Age 3 s), {} notifications after",
        now_serving[0],
        (*first - killed_at).as_secs_f64(),
        after.len()
    );
    println!("cluster figures: {figures}");
    figures
}

/// The README's "Try a whole deployment on one machine" commands, run as one bash script. Only
/// the ports move (the balancer's 5683 and the deployment's base, which other services here
/// may hold), through the script's `SLUICE_CLUSTER_PORT` / `SLUICE_CLUSTER_BASE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_scaling_out_commands_work_as_written() {
    let _serial = SERIAL.lock().await;
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let from = readme.find("**Try a whole deployment on one machine**").expect("the README's deployment section");
    let block = &readme[from..];
    let start = block.find("```sh\n").unwrap() + "```sh\n".len();
    let commands = &block[start..start + block[start..].find("```").unwrap()];
    assert!(commands.contains("bash scripts/cluster.sh up") && commands.contains("mosquitto_sub -p 25723"));
    let (base, port) = free_layout();
    let script = commands.replace("5683", &port.to_string()).replace("25723", &(base + 23).to_string());
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env("SLUICE", SLUICE)
        .env("SLUICE_CLUSTER_DIR", dir.path())
        .env("SLUICE_CLUSTER_PORT", port.to_string())
        .env("SLUICE_CLUSTER_BASE", base.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the README's commands hung").unwrap();
    let text = text(&out);
    // Whatever happened, leave nothing running.
    let _ = cluster(dir.path(), &["down"]);
    assert!(out.status.success(), "the README's commands failed:\n{text}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.contains(&"meters/m1 21.5"), "mosquitto_sub did not print the meter:\n{text}");
    assert!(lines.contains(&"on"), "the value set through one gateway was not read:\n{text}");
    let status = |what: &str| lines.iter().rev().find(|l| l.starts_with(what)).copied().unwrap_or_default();
    assert!(status("gateway 1:").ends_with("down") && status("NATS node 3:").ends_with("down"), "{text}");
    assert!(status("gateway 2:").ends_with("healthy") && status("NATS node 1:").ends_with("up"), "{text}");
    assert!(text.contains("Stopped the deployment"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_a_nats_cluster_lose_nothing_when_a_gateway_and_a_node_die() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::up("nats");
    values_and_observers_cross_gateways(&deployment).await;
    // The subscriber is on node 2; gateway 1 and node 3 (gateway 3's own) die together.
    let kill: &[&[&str]] = &[&["kill-gateway", "1"], &["kill-node", "3"]];
    let figures = load_with_failures(&deployment, deployment.mqtt(2), PAUSE_NATS, NODE_KILLED, kill).await;
    println!("NATS cluster, gateway 1 and node 3 killed: {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_one_mosquitto_lose_nothing_when_a_gateway_dies() {
    let _serial = SERIAL.lock().await;
    let deployment = Deployment::up("mosquitto");
    values_and_observers_cross_gateways(&deployment).await;
    let kill: &[&[&str]] = &[&["kill-gateway", "1"]];
    let figures = load_with_failures(&deployment, deployment.mqtt(1), PAUSE_MOSQUITTO, GATEWAY_KILLED, kill).await;
    println!("mosquitto, gateway 1 killed: {figures}");
    let figures = observer_moves_when_its_gateway_dies(&deployment).await;
    println!("mosquitto, an observer's gateway killed: {figures}");
}
