//! `mqtt:`: the broker connection, and the QoS settings.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, redact};

/// A QoS setting: a number, or `coap` (CON → 1, NON → 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosSetting {
    /// CON requests map to QoS 1, NON requests to QoS 0.
    Coap,
    /// Always this QoS.
    Fixed(u8),
}

impl<'de> Deserialize<'de> for QosSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        match &value {
            serde_yaml::Value::String(s) if s == "coap" => Ok(QosSetting::Coap),
            serde_yaml::Value::Number(n) => match n.as_u64() {
                Some(q @ 0..=2) => Ok(QosSetting::Fixed(q as u8)),
                _ => Err(serde::de::Error::custom("expected coap, 0, 1 or 2")),
            },
            _ => Err(serde::de::Error::custom("expected coap, 0, 1 or 2")),
        }
    }
}

impl Serialize for QosSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            QosSetting::Coap => s.serialize_str("coap"),
            QosSetting::Fixed(q) => s.serialize_u8(*q),
        }
    }
}

impl QosSetting {
    /// The QoS for a request of this message type.
    pub fn for_request(self, confirmable: bool) -> u8 {
        match self {
            QosSetting::Coap => u8::from(confirmable),
            QosSetting::Fixed(q) => q,
        }
    }
}

/// Where the gateway's MQTT connection goes (`mqtt.broker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// `embedded`: start rumqttd in-process and connect to it.
    Embedded,
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (checked by [`Config::parse`]; the MQTT
    /// client parses the rest).
    Url(String),
}

impl Broker {
    /// Reads `embedded` or a URL, as written in the config file or on the command line.
    pub fn parse(text: &str) -> Broker {
        if text == "embedded" { Broker::Embedded } else { Broker::Url(text.to_string()) }
    }

    pub(super) fn problem(&self) -> Option<String> {
        match self {
            Broker::Url(urls) => urls.split(',').map(str::trim).find(|url| !(url.starts_with("mqtt://") || url.starts_with("mqtts://"))).map(|url| {
                format!("{url:?} is not a broker; use embedded, mqtt://HOST:PORT or mqtts://HOST:PORT (several, separated by commas, for the nodes of a cluster)")
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broker::Embedded => f.write_str("embedded"),
            Broker::Url(url) => f.write_str(url),
        }
    }
}

/// `embedded`, or the URLs without their credentials ([`redact::broker_url`]).
impl Serialize for Broker {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Broker::Embedded => s.serialize_str("embedded"),
            Broker::Url(urls) => s.serialize_str(&redact::broker_url(urls)),
        }
    }
}

impl<'de> Deserialize<'de> for Broker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|text| Broker::parse(&text))
    }
}

/// `mqtt.protocol`: the MQTT version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum MqttProtocol {
    /// `auto`: MQTT 5, and MQTT 3.1.1 when the broker refuses 5 (its CONNACK says so, or it
    /// closes the connection or stays silent instead of answering the CONNECT).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// `v5`: MQTT 5 only.
    #[serde(rename = "v5")]
    V5,
    /// `v3.1.1`: MQTT 3.1.1 only (NATS, Azure IoT Hub, older brokers).
    #[serde(rename = "v3.1.1")]
    V311,
}

impl fmt::Display for MqttProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MqttProtocol::Auto => "auto",
            MqttProtocol::V5 => "v5",
            MqttProtocol::V311 => "v3.1.1",
        })
    }
}

/// `mqtt:` — the broker connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `embedded` (start rumqttd in-process), or `mqtt://host:port` / `mqtts://host:port`;
    /// several URLs separated by commas are the nodes of a cluster, tried in turn.
    pub broker: Broker,
    /// The MQTT version: `auto` (5, falling back to 3.1.1), `v5` or `v3.1.1`. The embedded
    /// broker is always spoken to in MQTT 5.
    pub protocol: MqttProtocol,
    /// Where the embedded broker listens for other MQTT clients (MQTT 3.1.1).
    pub embedded_bind: SocketAddr,
    /// The gateway's MQTT client id; default `sluice-` and a random suffix.
    pub client_id: Option<String>,
    /// Broker user name.
    pub username: Option<String>,
    /// Broker password. Serialized as [`redact::REDACTED`].
    #[serde(serialize_with = "redact::secret")]
    pub password: Option<String>,
    /// CA certificate (PEM) for `mqtts://`; default the system roots.
    #[serde(serialize_with = "redact::path")]
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive.
    #[serde(with = "duration")]
    pub keep_alive: Duration,
    /// Publishes queued or in flight; beyond, requests get 5.03 with Max-Age.
    pub queue: usize,
    /// QoS of publishes: `coap` (CON → 1, NON → 0), 0, 1 or 2.
    pub publish_qos: QosSetting,
    /// QoS of Observe subscriptions.
    pub subscribe_qos: QosSetting,
    /// How long a CON request waits for the broker's acknowledgement before 5.03.
    #[serde(with = "duration")]
    pub publish_timeout: Duration,
    /// The Max-Age (seconds) sent with 5.03 when the broker is unavailable: when to retry.
    pub retry_after: u32,
    /// How long a publish may wait for the broker's acknowledgement before the gateway takes
    /// the connection for dead and reconnects (to the next node of `broker` first), sending
    /// what was in flight again; `0s` never. A broker that answers pings but acknowledges
    /// nothing, or one publish in seconds (a NATS node whose JetStream lost its leaders), holds
    /// every device's messages otherwise.
    #[serde(with = "duration")]
    pub stall_timeout: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: Broker::Embedded,
            protocol: MqttProtocol::Auto,
            embedded_bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            keep_alive: Duration::from_secs(30),
            queue: 10_000,
            publish_qos: QosSetting::Coap,
            subscribe_qos: QosSetting::Coap,
            publish_timeout: Duration::from_secs(10),
            retry_after: 5,
            stall_timeout: Duration::from_secs(30),
        }
    }
}
