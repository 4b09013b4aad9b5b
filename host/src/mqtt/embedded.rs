//! The embedded broker: rumqttd in-process, for when no broker is configured.
//!
//! It listens for MQTT 3.1.1 on the configured address (what `mosquitto_sub` speaks by default)
//! and for MQTT 5 on a free loopback port, which the gateway's own client uses. rumqttd's
//! `Broker::start` blocks and builds its own runtimes, so it runs on a dedicated thread and
//! lives as long as the process (rumqttd has no shutdown).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as codec;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

/// How long `start_embedded` waits for the listeners to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A running embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedBroker {
    /// The MQTT 3.1.1 listener for outside clients.
    pub listen: SocketAddr,
    /// `mqtt://127.0.0.1:PORT` of the MQTT 5 listener, for the gateway's own client.
    pub v5_url: String,
}

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Something else listens on the address.
    #[error("{0} is in use: stop the other broker or pass --mqtt mqtt://HOST:PORT")]
    InUse(SocketAddr),
    /// The address cannot be bound for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error from bind(2).
        source: io::Error,
    },
    /// The broker thread did not come up.
    #[error("the embedded MQTT broker did not start: {0}")]
    Start(String),
}

/// Starts rumqttd with a v4 listener on `listen` and a v5 listener on a free loopback port,
/// and returns once both accept connections (blocking the caller for at most 5 s).
pub fn start_embedded(listen: SocketAddr) -> Result<EmbeddedBroker, EmbeddedError> {
    let listen = probe_bind(listen)?;
    let v5 = probe_bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
    let config = broker_config(listen, v5);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    wait_ready(listen, false, deadline)?;
    wait_ready(v5, true, deadline)?;
    info!(%listen, v5 = %v5, "Embedded MQTT broker started.");
    Ok(EmbeddedBroker { listen, v5_url: format!("mqtt://{v5}") })
}

/// Binds and releases `addr` to check that it is free; resolves port 0 to a real port.
fn probe_bind(addr: SocketAddr) -> Result<SocketAddr, EmbeddedError> {
    match TcpListener::bind(addr).and_then(|l| l.local_addr()) {
        Ok(bound) => Ok(bound),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(EmbeddedError::InUse(addr)),
        Err(source) => Err(EmbeddedError::Bind { addr, source }),
    }
}

/// Polls until `addr` answers an MQTT CONNECT (v4 or v5) with a CONNACK. rumqttd reports bind
/// failures only in its own log, so this is how we learn that a listener is up; a clean CONNECT
/// and DISCONNECT (rather than a bare TCP probe) keeps rumqttd from logging a broken link.
fn wait_ready(addr: SocketAddr, v5: bool, deadline: Instant) -> Result<(), EmbeddedError> {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    };
    loop {
        match handshake(target, v5) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(EmbeddedError::Start(format!("no MQTT answer on {addr}: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn handshake(target: SocketAddr, v5: bool) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = BytesMut::new();
    let id = "sluice-embedded-probe";
    if v5 {
        let connect = codec::Connect { keep_alive: 10, client_id: id.into(), clean_start: true, properties: None };
        codec::Packet::Connect(connect, None, None).write(&mut buf, None).map_err(io::Error::other)?;
    } else {
        rumqttc::Connect::new(id).write(&mut buf).map_err(io::Error::other)?;
    }
    stream.write_all(&buf)?;
    let mut header = [0u8; 2];
    stream.read_exact(&mut header)?;
    if header[0] != 0x20 || header[1] > 127 {
        return Err(io::Error::other("the answer is not a CONNACK"));
    }
    stream.read_exact(&mut vec![0; usize::from(header[1])])?;
    stream.write_all(&[0xE0, 0x00])?; // DISCONNECT
    // Let the broker close first: closing with unread bytes would reset the connection.
    stream.shutdown(std::net::Shutdown::Write)?;
    let _ = stream.read_to_end(&mut Vec::new());
    Ok(())
}

fn broker_config(v4: SocketAddr, v5: SocketAddr) -> Config {
    let server = |name: &str, listen| ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 16 << 20, // not announced to v5 clients: larger ones get disconnected
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".into(), server("v4", v4))])),
        v5: Some(HashMap::from([("v5".into(), server("v5", v5))])),
        ..Config::default()
    }
}
