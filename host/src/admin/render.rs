//! Renders the admin API's answers: `/metrics` in the Prometheus text exposition format 0.0.4,
//! `/rules` as JSON.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use super::{Admin, Snapshot};
use crate::rules::{Chain, Change, ReloadStatus, RuleInfo};
use crate::telemetry::{
    Action, BUCKETS, CODES, DROPS, HANDSHAKES, METHODS, Metrics, PUBLISH_RESULTS, ReloadOutcome, Transport, code_label,
};

/// Metric names, in the order they are rendered.
pub mod names {
    /// Requests that reached the gateway.
    pub const REQUESTS: &str = "sluice_coap_requests_total";
    /// Responses the gateway gave.
    pub const RESPONSES: &str = "sluice_coap_responses_total";
    /// Requests the CoAP endpoint answered itself.
    pub const ANSWERED_LOCALLY: &str = "sluice_coap_answered_locally_total";
    /// Datagrams received.
    pub const DATAGRAMS: &str = "sluice_coap_datagrams_total";
    /// CON retransmissions.
    pub const RETRANSMISSIONS: &str = "sluice_coap_retransmissions_total";
    /// Request durations.
    pub const DURATION: &str = "sluice_request_duration_seconds";
    /// MQTT publishes.
    pub const PUBLISHES: &str = "sluice_publishes_total";
    /// Notifications.
    pub const NOTIFICATIONS: &str = "sluice_notifications_total";
    /// Drops.
    pub const DROPS: &str = "sluice_drops_total";
    /// MQTT queue depth.
    pub const QUEUE_DEPTH: &str = "sluice_mqtt_queue_depth";
    /// MQTT reconnects.
    pub const RECONNECTS: &str = "sluice_mqtt_reconnects_total";
    /// MQTT connected.
    pub const CONNECTED: &str = "sluice_mqtt_connected";
    /// The MQTT version in use.
    pub const PROTOCOL: &str = "sluice_mqtt_protocol";
    /// DTLS handshakes.
    pub const HANDSHAKES: &str = "sluice_dtls_handshakes_total";
    /// DTLS sessions.
    pub const SESSIONS: &str = "sluice_dtls_sessions";
    /// Observers.
    pub const OBSERVERS: &str = "sluice_observers";
    /// Echo challenges (RFC 9175 return-routability checks).
    pub const ECHO_CHALLENGES: &str = "sluice_coap_echo_challenges_total";
    /// Peers verified by Echo.
    pub const PEERS_VERIFIED: &str = "sluice_coap_peers_verified_total";
    /// Bytes paid from the amplification budget.
    pub const BUDGET_BYTES: &str = "sluice_coap_amplification_budget_bytes_total";
    /// Rule calls.
    pub const RULE_CALLS: &str = "sluice_rule_calls_total";
    /// Rule traps.
    pub const RULE_TRAPS: &str = "sluice_rule_traps_total";
    /// Rule timeouts.
    pub const RULE_TIMEOUTS: &str = "sluice_rule_timeouts_total";
    /// Rule failures.
    pub const RULE_FAILURES: &str = "sluice_rule_failures_total";
    /// Rule reloads.
    pub const RELOADS: &str = "sluice_rule_reloads_total";
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` are (name, raw value) pairs, escaped here.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The statistics of the transports that run, by transport.
type Transports<'a> = [(Transport, Option<&'a crate::coap::Stats>)];

/// The whole `/metrics` page, one family group after the other.
pub(crate) fn metrics(admin: &Admin, snapshot: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    let transports: Vec<(Transport, Option<&crate::coap::Stats>)> = vec![
        (Transport::Udp, snapshot.udp.as_ref()),
        (Transport::Dtls, snapshot.dtls.as_ref().filter(|_| admin.coaps.is_some())),
    ];
    exchanges(&mut o, admin);
    endpoint_counters(&mut o, &transports);
    durations(&mut o, &admin.metrics);
    deliveries(&mut o, &admin.metrics);
    drops(&mut o, admin, &transports);
    broker(&mut o, admin);
    dtls(&mut o, admin);
    rule_families(&mut o, admin);
    o.0
}

/// Requests and responses, by transport (and method, code, action).
fn exchanges(o: &mut Out, admin: &Admin) {
    let m = &admin.metrics;
    let running = |t: Transport| t == Transport::Udp || admin.coaps.is_some();
    o.header(names::REQUESTS, "counter", "CoAP requests that reached the gateway, by transport and method.");
    for t in Transport::ALL.into_iter().filter(|t| running(*t)) {
        for (i, method) in METHODS.iter().enumerate() {
            let n = m.requests.get(t as usize).and_then(|r| r.get(i)).map_or(0, get);
            o.sample(names::REQUESTS, &[("transport", t.label()), ("method", method)], n);
        }
    }

    o.header(names::RESPONSES, "counter", "CoAP responses the gateway gave, by transport, code and action.");
    for t in Transport::ALL.into_iter().filter(|t| running(*t)) {
        for (ci, code) in CODES.iter().enumerate() {
            for action in Action::ALL {
                let n = m.responses.get(t as usize).and_then(|r| r.get(ci)).and_then(|r| r.get(action as usize));
                let n = n.map_or(0, get);
                if n > 0 {
                    let code = code_label(*code);
                    o.sample(
                        names::RESPONSES,
                        &[("transport", t.label()), ("code", &code), ("action", action.label())],
                        n,
                    );
                }
            }
        }
    }
}

/// What each transport's message layer counted itself.
fn endpoint_counters(o: &mut Out, transports: &Transports<'_>) {
    o.header(
        names::ANSWERED_LOCALLY,
        "counter",
        "CoAP requests the message layer answered itself (4.02, 4.05, 2.31, 5.03 when busy, ...), by transport.",
    );
    for (t, stats) in transports {
        if let Some(s) = stats {
            o.sample(names::ANSWERED_LOCALLY, &[("transport", t.label())], s.answered_locally);
        }
    }
    o.header(names::DATAGRAMS, "counter", "CoAP datagrams received, by transport.");
    for (t, stats) in transports {
        if let Some(s) = stats {
            o.sample(names::DATAGRAMS, &[("transport", t.label())], s.received);
        }
    }
    o.header(names::RETRANSMISSIONS, "counter", "CoAP CON retransmissions, by transport.");
    for (t, stats) in transports {
        if let Some(s) = stats {
            o.sample(names::RETRANSMISSIONS, &[("transport", t.label())], s.retransmissions);
        }
    }
}

/// The request-to-answer histogram, by action.
fn durations(o: &mut Out, m: &Metrics) {
    o.header(names::DURATION, "histogram", "Time from a complete request to its answer, by action.");
    for action in Action::ALL {
        let Some(h) = m.durations.get(action as usize) else { continue };
        let count = get(&h.count);
        if count == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets.get(i).map_or(0, get);
            let le = bound.to_string();
            o.sample(&format!("{}_bucket", names::DURATION), &[("action", action.label()), ("le", &le)], cumulative);
        }
        o.sample(&format!("{}_bucket", names::DURATION), &[("action", action.label()), ("le", "+Inf")], count);
        let sum = get(&h.sum_micros) as f64 / 1e6;
        o.sample(&format!("{}_sum", names::DURATION), &[("action", action.label())], sum);
        o.sample(&format!("{}_count", names::DURATION), &[("action", action.label())], count);
    }
}

/// MQTT publishes and Observe notifications.
fn deliveries(o: &mut Out, m: &Metrics) {
    o.header(names::PUBLISHES, "counter", "MQTT publishes, by QoS and result.");
    for (qos, results) in m.publishes.iter().enumerate() {
        let qos = qos.to_string();
        for (r, result) in PUBLISH_RESULTS.iter().enumerate() {
            o.sample(names::PUBLISHES, &[("qos", &qos), ("result", result)], results.get(r).map_or(0, get));
        }
    }

    o.header(names::NOTIFICATIONS, "counter", "Observe notifications sent, by message type.");
    for (i, kind) in ["non", "con"].iter().enumerate() {
        o.sample(names::NOTIFICATIONS, &[("type", kind)], m.notifications.get(i).map_or(0, get));
    }
}

/// Everything dropped or refused on the way, by reason, and the Echo verification counters.
fn drops(o: &mut Out, admin: &Admin, transports: &Transports<'_>) {
    let m = &admin.metrics;
    o.header(names::DROPS, "counter", "Messages dropped or refused before their destination, by reason.");
    for (i, reason) in DROPS.iter().enumerate() {
        if reason.starts_with("dtls_") && admin.coaps.is_none() {
            continue;
        }
        o.sample(names::DROPS, &[("reason", reason)], m.drops.get(i).map_or(0, get));
    }
    let endpoint = |f: fn(&crate::coap::Stats) -> u64| transports.iter().filter_map(|(_, s)| s.map(f)).sum::<u64>();
    for (reason, n) in [
        ("malformed", endpoint(|s| s.malformed)),
        ("duplicate", endpoint(|s| s.duplicates)),
        ("request_queue_full", endpoint(|s| s.busy_rejections)),
        ("notification_queue_full", endpoint(|s| s.notifications_dropped)),
        ("con_timeout", endpoint(|s| s.transmit_timeouts)),
        ("dedup_eviction", endpoint(|s| s.dedup_evictions)),
        ("block_eviction", endpoint(|s| s.block_evictions)),
        ("send_error", endpoint(|s| s.send_errors)),
        ("rate_limit", endpoint(|s| s.rate_limited)),
        ("observer_limit", endpoint(|s| s.observer_limit)),
        ("amplification_budget", endpoint(|s| s.retransmissions_skipped)),
    ] {
        o.sample(names::DROPS, &[("reason", reason)], n);
    }

    o.header(names::ECHO_CHALLENGES, "counter", "Requests answered 4.01 with an Echo value (peer not verified yet).");
    o.sample(names::ECHO_CHALLENGES, &[], endpoint(|s| s.echo_challenges));
    o.header(names::PEERS_VERIFIED, "counter", "Devices verified by returning an Echo value or acknowledging a CON.");
    o.sample(names::PEERS_VERIFIED, &[], endpoint(|s| s.peers_verified));
    o.header(
        names::BUDGET_BYTES,
        "counter",
        "Bytes sent to unverified addresses beyond amplification_factor times their requests (coap.amplification_budget).",
    );
    o.sample(names::BUDGET_BYTES, &[], endpoint(|s| s.budget_bytes));
}

/// The broker connection.
fn broker(o: &mut Out, admin: &Admin) {
    o.header(names::QUEUE_DEPTH, "gauge", "MQTT publishes queued or in flight.");
    o.sample(names::QUEUE_DEPTH, &[], admin.mqtt.queue_len());
    o.header(names::RECONNECTS, "counter", "Successful MQTT connections after the first.");
    o.sample(names::RECONNECTS, &[], admin.mqtt.reconnects());
    o.header(names::CONNECTED, "gauge", "1 while the MQTT broker is connected.");
    o.sample(names::CONNECTED, &[], u8::from(admin.mqtt.is_connected()));
    if let Some(wire) = admin.mqtt.protocol() {
        let version = wire.to_string();
        o.header(names::PROTOCOL, "gauge", "The MQTT version spoken to the broker (label version), always 1.");
        o.sample(names::PROTOCOL, &[("version", version.as_str())], 1u8);
    }
}

/// DTLS handshakes and sessions (when DTLS runs), and the Observe relations.
fn dtls(o: &mut Out, admin: &Admin) {
    let m = &admin.metrics;
    if admin.coaps.is_some() {
        o.header(names::HANDSHAKES, "counter", "DTLS handshakes, by result.");
        for (i, result) in HANDSHAKES.iter().enumerate() {
            o.sample(names::HANDSHAKES, &[("result", result)], m.handshakes.get(i).map_or(0, get));
        }
        o.header(names::SESSIONS, "gauge", "DTLS sessions established now.");
        o.sample(names::SESSIONS, &[], m.dtls_sessions.load(Ordering::Relaxed).max(0));
    }

    o.header(names::OBSERVERS, "gauge", "Observe relations now.");
    o.sample(names::OBSERVERS, &[], admin.gateway.observer_count());
}

/// The rules: Wasm calls, traps, timeouts, fail-policy answers, reloads.
fn rule_families(o: &mut Out, admin: &Admin) {
    let m = &admin.metrics;
    let reports = admin.chain.load().reports();
    let rule_labels = |info: &RuleInfo| [info.name.clone(), info.version.clone()];
    type Pick = fn(&crate::rules::RuleStats) -> u64;
    let wasm_series: [(&str, &str, Pick); 3] = [
        (names::RULE_CALLS, "Wasm rule hook calls, by rule and version.", |s| s.calls),
        (names::RULE_TRAPS, "Wasm rule calls that trapped, by rule and version.", |s| s.traps),
        (names::RULE_TIMEOUTS, "Wasm rule calls stopped by their deadline, by rule and version.", |s| s.timeouts),
    ];
    for (name, help, pick) in wasm_series {
        o.header(name, "counter", help);
        for r in &reports {
            if let Some(stats) = &r.wasm {
                let [rule, version] = rule_labels(&r.info);
                o.sample(name, &[("rule", &rule), ("version", &version)], pick(stats));
            }
        }
    }
    o.header(names::RULE_FAILURES, "counter", "Rule calls answered by the fail policy, by rule and version.");
    for r in &reports {
        let [rule, version] = rule_labels(&r.info);
        o.sample(names::RULE_FAILURES, &[("rule", &rule), ("version", &version)], r.failures);
    }

    o.header(names::RELOADS, "counter", "Rule reloads, by result (refused: a package was refused, failed: all).");
    for outcome in ReloadOutcome::ALL {
        o.sample(names::RELOADS, &[("result", outcome.label())], get(&m.reloads[outcome as usize]));
    }
}

fn info_json(info: &RuleInfo) -> Value {
    json!({
        "slot": info.slot,
        "name": info.name,
        "version": info.version,
        "sha256": info.sha256,
        "source": info.source.as_ref().map(|p| p.display().to_string()),
        "signer": info.signer,
    })
}

/// The last reload's result: `none`, `ok`, `refused` (a package kept out) or `failed`.
fn reload_result(status: &ReloadStatus) -> &'static str {
    match (&status.error, status.count) {
        (_, 0) => "none",
        (Some(_), _) => "failed",
        (None, _) if status.refused().is_empty() => "ok",
        (None, _) => "refused",
    }
}

/// The `/overview` document (see `openapi.json`).
pub(crate) fn overview(admin: &Admin, clients: usize, sessions: usize) -> Value {
    let m = &admin.metrics;
    let requests: u64 = m.requests.iter().flatten().map(get).sum();
    let mut by_code = serde_json::Map::new();
    for (ci, code) in CODES.iter().enumerate() {
        let n: u64 = m.responses.iter().filter_map(|t| t.get(ci)).flatten().map(get).sum();
        if n > 0 {
            by_code.insert(code_label(*code), json!(n));
        }
    }
    let status = admin.reloads.borrow();
    let result = reload_result(&status);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": admin.started.elapsed().as_secs(),
        "clients": clients,
        "observers": admin.gateway.observer_count(),
        "sessions": sessions,
        "mqtt": {
            "connected": admin.mqtt.is_connected(),
            // As configured (credentials redacted); the embedded broker's address otherwise.
            "broker": broker_address(&admin.config),
        },
        "dtls": {"enabled": admin.coaps.is_some(), "sessions": m.dtls_sessions.load(Ordering::Relaxed).max(0)},
        "requests_total": requests,
        "responses_by_code": by_code,
        "reloads": {"count": status.count, "result": result},
    })
}

/// The broker the config names, `host:port` (its URL's, credentials never shown).
fn broker_address(config: &Value) -> String {
    let embedded = config.pointer("/mqtt/embedded_bind").and_then(Value::as_str);
    match config.pointer("/mqtt/broker").and_then(Value::as_str) {
        Some(url) if !url.is_empty() && url != "embedded" => {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            rest.split([',', '/', '?']).next().unwrap_or(rest).to_string()
        }
        _ => embedded.unwrap_or("embedded").to_string(),
    }
}

/// The `/rules` document: the chain in order with each rule's counters, and the last reload.
pub(crate) fn rules(chain: &Chain, status: &ReloadStatus) -> Value {
    let rules: Vec<Value> = chain
        .reports()
        .iter()
        .map(|r| {
            let mut v = info_json(&r.info);
            if let Some(o) = v.as_object_mut() {
                o.insert("kind".into(), json!(if r.wasm.is_some() { "wasm" } else { "native" }));
                o.insert("failures".into(), json!(r.failures));
                if let Some(s) = &r.wasm {
                    o.insert("calls".into(), json!(s.calls));
                    o.insert("traps".into(), json!(s.traps));
                    o.insert("timeouts".into(), json!(s.timeouts));
                    o.insert("instances".into(), json!(s.instances));
                }
            }
            v
        })
        .collect();
    let changes: Vec<Value> = status
        .changes
        .iter()
        .map(|c| match c {
            Change::Added(info) => json!({"change": "added", "rule": info_json(info)}),
            Change::Swapped { old, new } => json!({"change": "swapped", "old": info_json(old), "new": info_json(new)}),
            Change::Removed(info) => json!({"change": "removed", "rule": info_json(info)}),
            Change::Refused { slot, file, reason, kept } => json!({
                "change": "refused",
                "slot": slot,
                "file": file.as_ref().map(|p| p.display().to_string()),
                "reason": reason,
                "kept": kept.as_ref().map(info_json),
            }),
        })
        .collect();
    let at = status.at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs());
    let result = reload_result(status);
    json!({
        "rules": rules,
        "last_reload": {
            "count": status.count,
            "result": result,
            "at_unix": at,
            "error": status.error,
            "changes": changes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        let mut o = Out(String::new());
        o.sample("m", &[("rule", "q\"")], 1);
        assert_eq!(o.0, "m{rule=\"q\\\"\"} 1\n");
    }
}
