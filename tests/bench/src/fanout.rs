//! The `fanout` scenario: N devices observe one topic, one MQTT client publishes M messages to
//! it, and the notifications are counted per message, with their latency from the publish.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice::mqtt::{self, ClientConfig, Message};

use crate::observe::Observers;
use crate::procfs::{CpuTimes, Process};
use crate::put::{cpu_usage, gateway_usage, machine_usage};
use crate::report::{Report, percentiles, round2};
use crate::stop::Stop;

/// What `fanout` does.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// The gateway's CoAP address.
    pub target: SocketAddr,
    /// The broker the gateway subscribes to.
    pub mqtt: String,
    /// Observers.
    pub observers: u64,
    /// Messages published.
    pub messages: usize,
    /// Topic observed and published to.
    pub topic: String,
    /// Observe URL; `{device}` is the observer number, `{topic}` the topic.
    pub path_template: String,
    /// Sockets, one per observer at least (None: one each).
    pub sockets: Option<usize>,
    /// Registrations in flight at once.
    pub concurrency: usize,
    /// Pause between publishes.
    pub interval: Duration,
    /// QoS of the publishes.
    pub qos: u8,
    /// Longest wait for the notifications after the last publish.
    pub drain: Duration,
    /// The gateway process, for CPU time and RSS.
    pub gateway: Option<Process>,
    /// The MQTT broker's process, for its CPU time (None: not measured).
    pub broker: Option<Process>,
}

impl FanoutConfig {
    /// Defaults: 100 observers, 10 messages on `bench/fanout`, 256 registrations in flight.
    pub fn new(target: SocketAddr, mqtt: String) -> FanoutConfig {
        FanoutConfig {
            target,
            mqtt,
            observers: 100,
            messages: 10,
            topic: "bench/fanout".into(),
            path_template: "/mqtt/{topic}?c=o{device}".into(),
            sockets: None,
            concurrency: 256,
            interval: Duration::ZERO,
            qos: 0,
            drain: Duration::from_secs(10),
            gateway: None,
            broker: None,
        }
    }
}

/// Runs `fanout` and reports it.
pub async fn run(cfg: &FanoutConfig, stop: &Stop) -> anyhow::Result<Report> {
    if cfg.messages == 0 || cfg.messages > 100_000 {
        bail!("--messages must be 1 … 100 000");
    }
    // A CoAP server keeps one observation per endpoint and resource path (RFC 7641 §4.1), so
    // observers of one topic need a source port each.
    let sockets = cfg.sockets.unwrap_or(cfg.observers as usize);
    if (sockets as u64) < cfg.observers {
        bail!(
            "{} observers of one topic need {} sockets (one source port each: the gateway keeps one observation per endpoint and path), not {sockets}",
            cfg.observers,
            cfg.observers
        );
    }
    let budget = crate::pool::socket_budget();
    if sockets > budget {
        bail!(
            "{sockets} observers need {sockets} sockets but only {budget} file descriptors are left: raise `ulimit -n` (it is {}) or use fewer --observers",
            crate::procfs::fd_limit()
        );
    }
    let path = cfg.path_template.replace("{topic}", &cfg.topic);
    let mut obs =
        Observers::new(cfg.target, &path, cfg.observers, Some(sockets), cfg.concurrency, cfg.messages).await?;
    let (publisher, _incoming) = mqtt::try_connect(ClientConfig {
        url: cfg.mqtt.clone(),
        client_id: format!("sluice-bench-pub-{:08x}", rand::random::<u32>()),
        ..ClientConfig::default()
    })
    .with_context(|| format!("--mqtt {}", cfg.mqtt))?;
    if !publisher.wait_connected(Duration::from_secs(5)).await {
        publisher.close().await;
        bail!(
            "no MQTT broker answers at {} within 5 s: pass the gateway's broker with --mqtt (mosquitto -c tests/bench/mosquitto.conf)",
            cfg.mqtt
        );
    }
    let max_register = Duration::from_secs(30 + cfg.observers / 1000);
    let reg = obs.register(Duration::from_secs(2), max_register, stop).await;
    let st = obs.state().clone();
    // Give the gateway's broker subscription a moment to settle before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let gw_before = cfg.gateway.and_then(|g| g.sample().ok());
    let broker_before = cfg.broker.and_then(|b| b.sample().ok());
    let machine_before = CpuTimes::now();
    let rcvbuf_before = crate::procfs::udp_rcvbuf_errors();
    let target_drops_before = crate::procfs::udp_port_drops(cfg.target.port());
    let first_publish = st.now_ns();
    let mut publish_errors = 0u64;
    for k in 0..cfg.messages {
        if stop.raised() {
            break;
        }
        st.published_ns[k].store(st.now_ns().max(1), Ordering::Release);
        let mut m = Message::new(cfg.topic.clone(), format!("fanout:{k}"));
        m.qos = cfg.qos;
        match publisher.publish(m) {
            Ok(receipt) if cfg.qos > 0 => {
                if receipt.await.is_err() {
                    publish_errors += 1;
                }
            }
            Ok(receipt) => receipt.detach(),
            Err(_) => publish_errors += 1,
        }
        if !cfg.interval.is_zero() {
            tokio::time::sleep(cfg.interval).await;
        }
    }
    let published = st.published_ns.iter().filter(|p| p.load(Ordering::Relaxed) > 0).count() as u64;
    let expected = published * reg.done;
    let drain_start = Instant::now();
    let mut last = 0;
    let mut last_change = Instant::now();
    while !stop.raised() && drain_start.elapsed() < cfg.drain {
        let n = st.notifications.load(Ordering::Relaxed);
        if n >= expected || last_change.elapsed() > Duration::from_secs(4) {
            break;
        }
        if n != last {
            last = n;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gw_after = cfg.gateway.and_then(|g| g.sample().ok());
    let broker_after = cfg.broker.and_then(|b| b.sample().ok());
    let machine_after = CpuTimes::now();
    let rcvbuf_drops = crate::put::udp_drops(rcvbuf_before);
    let target_drops = crate::put::target_drops(cfg.target.port(), target_drops_before);
    let notifications = st.notifications.load(Ordering::Relaxed);
    let span = (st.last_ns.load(Ordering::Relaxed).saturating_sub(first_publish)) as f64 / 1e9;
    let complete =
        st.per_message.iter().filter(|c| c.load(Ordering::Relaxed) >= reg.done && reg.done > 0).count() as u64;
    // Clean-up runs even after Ctrl-C (bounded; a second Ctrl-C quits).
    let dereg = obs.deregister(Duration::from_secs(2), Duration::from_secs(30), &Stop::new()).await;
    publisher.close().await;

    let mut r = Report::new("fanout");
    r.set("target", cfg.target.to_string());
    r.set("observers", cfg.observers);
    r.set("sockets", obs.sockets() as u64);
    r.set("registered", reg.done);
    r.set("register_refused", reg.refused);
    r.set("register_timeouts", reg.timeouts);
    r.set("retransmissions", obs.state().retransmissions.load(std::sync::atomic::Ordering::Relaxed));
    r.set("echo_challenges", obs.state().echo_challenges.load(std::sync::atomic::Ordering::Relaxed));
    r.set("register_per_s", round2(reg.done as f64 / reg.elapsed.as_secs_f64().max(1e-9)));
    r.set("messages", cfg.messages as u64);
    r.set("published", published);
    r.set("publish_errors", publish_errors);
    r.set("notifications_expected", expected);
    r.set("notifications", notifications);
    r.set("notifications_missing", expected.saturating_sub(notifications));
    r.set("notifications_confirmable", st.confirmable.load(Ordering::Relaxed));
    r.set("ack_errors", st.ack_errors.load(Ordering::Relaxed));
    r.set("udp_rcvbuf_errors", rcvbuf_drops);
    r.set("target_socket_drops", target_drops);
    r.set("notification_duplicates", st.duplicates.load(Ordering::Relaxed));
    r.set("notifications_other", st.other_notifications.load(Ordering::Relaxed));
    r.set("notifications_other_kinds", serde_json::json!(st.other_kinds.lock().map(|k| k.clone()).unwrap_or_default()));
    r.set("messages_complete", complete);
    r.set("notify_span_s", round2(span));
    r.set("notifications_per_s", if span > 0.0 { round2(notifications as f64 / span) } else { 0.0 });
    r.set("latency", st.latency.lock().map(|h| percentiles(&h)).unwrap_or_default());
    r.set("deregistered", dereg.done);
    gateway_usage(&mut r, cfg.gateway, gw_before, gw_after, notifications);
    cpu_usage(&mut r, "broker", cfg.broker, broker_before, broker_after, notifications);
    for who in ["gateway", "broker"] {
        let key = format!("{who}_cpu_us_per_msg");
        if let Some(v) = r.get(&key).cloned() {
            // Per notification, not per published message.
            r.set(&format!("{who}_cpu_us_per_notification"), v);
            r.set(&key, serde_json::Value::Null);
        }
    }
    machine_usage(&mut r, machine_before, machine_after);
    r.set("interrupted", stop.raised());
    Ok(r)
}
