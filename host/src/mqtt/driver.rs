//! The driver task: a thin tokio event loop around the sans-IO [`State`].
//!
//! It connects (first attempt at once), runs a session until the connection fails, and
//! reconnects with exponential back-off, taking commands from the handles all the while. In a
//! session one `select!` multiplexes commands, socket writes (batched: everything queued is
//! serialised into one buffer before each write), socket reads, delivery into the incoming
//! channel (when it is full the driver stops reading, i.e. back-pressure) and keep-alive.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Login, Packet,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::client::{ClientConfig, Incoming};
use super::queue::Shared;
use super::state::{Inbound, State, StateError, write};
use super::subscriptions::Waiter;
use super::transport::{Endpoint, Stream};
use super::wire::{Wire, WireError, refuses_v5};
use crate::config::MqttProtocol;

/// First reconnect delay; it doubles up to `reconnect_delay_max`.
const MIN_DELAY: Duration = Duration::from_millis(100);
/// A session that lasted this long resets the reconnect back-off.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Bound on TCP connect + TLS handshake + CONNECT → CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on flushing DISCONNECT at close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Serialise queued publishes until the write buffer holds this much.
const HIGH_WATER: usize = 64 * 1024;
/// Commands taken from the channel per wake-up, so that one write carries many.
const COMMAND_BATCH: usize = 1024;

/// A request from a [`Handle`](super::Handle) to the driver.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // nearly every command is a Publish: boxing it costs an allocation each
pub(crate) enum Command {
    /// Publishes were handed over (see `Shared::hand_over`).
    Take,
    Subscribe {
        filter: String,
        qos: QoS,
        tx: Waiter,
    },
    Unsubscribe {
        filter: String,
        tx: Waiter,
    },
    Close(oneshot::Sender<()>),
}

/// Why a connection attempt or session ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Timeout(&'static str),
    #[error("broker refused the connection: {0}")]
    Refused(String),
    #[error("the broker refused MQTT {0} (unsupported protocol version)")]
    VersionRefused(Wire),
    #[error("malformed packet from the broker: {0}")]
    Codec(#[from] WireError),
    #[error(transparent)]
    Protocol(#[from] StateError),
    #[error("broker closed the connection")]
    Eof,
}

impl LinkError {
    /// Whether a connection attempt in `wire` failed the way a broker that speaks only the
    /// other version fails it: it refused the version, closed the connection before its
    /// CONNACK, or never answered the CONNECT.
    fn other_version_may_work(&self) -> bool {
        matches!(self, LinkError::VersionRefused(_) | LinkError::Eof | LinkError::Timeout(CONNACK_TIMEOUT))
    }

    /// What to change when an attempt failed this way with a fixed `mqtt.protocol`.
    fn fix(&self, protocol: MqttProtocol) -> Option<&'static str> {
        match (self, protocol) {
            (LinkError::VersionRefused(Wire::V5), _) => {
                Some("the broker speaks MQTT 3.1.1 only: set mqtt.protocol: v3.1.1 (or auto)")
            }
            (LinkError::VersionRefused(Wire::V311), _) => {
                Some("the broker does not accept MQTT 3.1.1: set mqtt.protocol: v5 (or auto)")
            }
            (LinkError::Eof | LinkError::Timeout(CONNACK_TIMEOUT), MqttProtocol::V5) => Some(
                "a broker that speaks MQTT 3.1.1 only may close or ignore an MQTT 5 CONNECT: try mqtt.protocol: v3.1.1 (or auto)",
            ),
            (LinkError::Eof | LinkError::Timeout(CONNACK_TIMEOUT), MqttProtocol::V311) => Some(
                "a broker that speaks MQTT 5 only may close or ignore an MQTT 3.1.1 CONNECT: try mqtt.protocol: v5 (or auto)",
            ),
            _ => None,
        }
    }
}

/// The timeout of a connection attempt (its text is matched by [`LinkError::fix`]).
const CONNACK_TIMEOUT: &str = "no CONNACK within 10 s";

enum Flow {
    Continue,
    Stop,
}

/// What woke the session loop.
#[allow(clippy::large_enum_variant)] // a stack value for one loop iteration; boxing costs more
enum Wake {
    Command(Option<Command>),
    /// Some(bytes written, or an error) or None (flushed).
    Wrote(Option<io::Result<usize>>),
    Read(io::Result<usize>),
    Room,
    Tick,
}

/// The driver; see the module documentation.
pub(crate) struct Driver {
    /// The brokers, tried in turn: the next one after a failed attempt.
    endpoints: Vec<Endpoint>,
    /// The broker of the next attempt.
    current: usize,
    /// The CONNECT packet, MQTT 5 and 3.1.1 (the same client id, login and keep-alive).
    connect: Packet,
    connect_v4: v4::Packet,
    protocol: MqttProtocol,
    /// The version of the next connection attempt.
    wire: Wire,
    keep_alive: Duration,
    delay_max: Duration,
    stall_timeout: Duration,
    shared: Arc<Shared>,
    state: State,
    cmds: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::Sender<Incoming>,
    connected: watch::Sender<bool>,
    close_waiters: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub(crate) fn new(
        config: ClientConfig,
        endpoints: Vec<Endpoint>,
        shared: Arc<Shared>,
        cmds: mpsc::UnboundedReceiver<Command>,
        incoming: mpsc::Sender<Incoming>,
        connected: watch::Sender<bool>,
    ) -> Self {
        let mut properties = ConnectProperties::new();
        properties.topic_alias_max = Some(0);
        let login = (config.username.is_some() || config.password.is_some()).then(|| {
            Login::new(config.username.clone().unwrap_or_default(), config.password.clone().unwrap_or_default())
        });
        let connect = Connect {
            keep_alive: u16::try_from(config.keep_alive.as_secs()).unwrap_or(u16::MAX),
            client_id: config.client_id.clone(),
            clean_start: true,
            properties: Some(properties),
        };
        let connect_v4 = v4::Connect {
            protocol: rumqttc::mqttbytes::Protocol::V4,
            keep_alive: connect.keep_alive,
            client_id: connect.client_id.clone(),
            clean_session: true,
            last_will: None,
            login: login.as_ref().map(|l| v4::Login::new(l.username.clone(), l.password.clone())),
        };
        let state = State::new(shared.clone(), config.queue_capacity, config.max_inflight);
        Self {
            endpoints,
            current: 0,
            connect: Packet::Connect(connect, None, login),
            connect_v4: v4::Packet::Connect(connect_v4),
            protocol: config.protocol,
            wire: if config.protocol == MqttProtocol::V311 { Wire::V311 } else { Wire::V5 },
            keep_alive: config.keep_alive,
            delay_max: config.reconnect_delay_max.max(MIN_DELAY),
            stall_timeout: config.stall_timeout,
            shared,
            state,
            cmds,
            incoming,
            connected,
            close_waiters: Vec::new(),
        }
    }

    /// Connects, runs sessions and reconnects until closed.
    pub(crate) async fn run(mut self) {
        let mut delay = MIN_DELAY;
        let mut failures = 0u32;
        let mut sessions = 0u64;
        loop {
            let endpoint = self.endpoints[self.current].clone();
            let broker = endpoint.to_string();
            let wire = self.wire;
            let Some(hello) = self.hello(&broker) else { return self.finish() };
            let connecting = open_session(&endpoint, hello, wire);
            tokio::pin!(connecting);
            let result = loop {
                tokio::select! {
                    result = &mut connecting => break result,
                    cmd = self.cmds.recv() => if let Flow::Stop = self.apply_offline(cmd) {
                        return self.finish();
                    },
                }
            };
            match result {
                Ok((stream, connack, rbuf)) => {
                    if sessions > 0 {
                        self.shared.reconnects.fetch_add(1, Ordering::AcqRel);
                    }
                    sessions += 1;
                    let level = if wire == Wire::V5 { 5 } else { 4 };
                    self.shared.protocol_level.store(level, Ordering::Release);
                    info!(%broker, mqtt = %wire, "Connected to the MQTT broker.");
                    self.connected.send_replace(true);
                    let started = Instant::now();
                    let outcome = self.session(stream, &connack, wire, rbuf).await;
                    // A broker that accepts and then drops us at once (say, another client with
                    // our id) must not make us reconnect in a tight loop.
                    if started.elapsed() >= STABLE_SESSION {
                        delay = MIN_DELAY;
                    }
                    self.connected.send_replace(false);
                    if let Err(e) = &outcome {
                        warn!(%broker, error = %e, "MQTT connection lost; reconnecting.");
                    }
                    self.state.on_disconnect();
                    if outcome.is_ok() {
                        return self.finish();
                    }
                    failures = 1; // the loss was logged; failed attempts that follow are not
                }
                Err(e) => {
                    if self.failed(&broker, wire, e, &mut failures) {
                        continue;
                    }
                }
            }
            let pause = tokio::time::sleep(delay.mul_f64(rand::random_range(0.8..1.2)));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    cmd = self.cmds.recv() => if let Flow::Stop = self.apply_offline(cmd) {
                        return self.finish();
                    },
                }
            }
            delay = (delay * 2).min(self.delay_max);
        }
    }

    /// The CONNECT of the next attempt, in its version; None (logged) if it cannot be encoded.
    fn hello(&self, broker: &str) -> Option<BytesMut> {
        let mut hello = BytesMut::new();
        let written = match self.wire {
            Wire::V5 => self.connect.write(&mut hello, None).map_err(WireError::from),
            Wire::V311 => self.connect_v4.write(&mut hello, usize::MAX).map_err(|e| WireError::new(e.to_string())),
        };
        match written {
            Ok(_) => Some(hello),
            Err(e) => {
                warn!(%broker, error = %e, "Cannot encode the MQTT CONNECT; check mqtt.client_id, username and password.");
                None
            }
        }
    }

    /// Handles a failed connection attempt in `wire`: logs it (the first of a series as a
    /// warning, with the fix when there is one), picks the version and broker of the next
    /// attempt, and returns true to make it at once (`auto`: 3.1.1 right after 5 was refused).
    fn failed(&mut self, broker: &str, wire: Wire, e: LinkError, failures: &mut u32) -> bool {
        let auto = self.protocol == MqttProtocol::Auto;
        if auto && e.other_version_may_work() {
            self.wire = if wire == Wire::V5 { Wire::V311 } else { Wire::V5 };
            if wire == Wire::V5 {
                info!(%broker, error = %e, "The broker did not take MQTT 5; trying MQTT 3.1.1 (mqtt.protocol: auto).");
                return true;
            }
        }
        *failures += 1;
        // With several brokers, the next one.
        self.current = (self.current + 1) % self.endpoints.len();
        let fix = if auto { None } else { e.fix(self.protocol) };
        match (fix, *failures) {
            (Some(fix), 1) => warn!(%broker, error = %e, fix, "Cannot connect to the MQTT broker; retrying."),
            (None, 1) => warn!(%broker, error = %e, "Cannot connect to the MQTT broker; retrying."),
            _ => debug!(%broker, error = %e, failures = *failures, "MQTT connect attempt failed."),
        }
        false
    }

    /// Runs one session; Ok when closed on request, Err when the connection failed.
    ///
    /// Longer than the ~80 lines the code keeps to, on purpose: it is the session's one event
    /// loop (read, write, keep-alive, commands), and each arm is a call; split across
    /// functions, the borrows of the reader, writer and buffers would have to travel with them
    /// and the order of the arms, which is the point, would no longer read in one place.
    async fn session(
        &mut self,
        stream: Box<dyn Stream>,
        connack: &ConnAck,
        wire: Wire,
        mut rbuf: BytesMut,
    ) -> Result<(), LinkError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut out = BytesMut::with_capacity(2 * HIGH_WATER);
        self.state.on_connack(connack, wire, &mut out);
        let keep_alive = match self.state.limits().and_then(|l| l.keep_alive) {
            Some(secs) => Duration::from_secs(secs.into()),
            None => self.keep_alive,
        };
        // Keep-alive 0 disables pings.
        let tick = if keep_alive.is_zero() { Duration::from_secs(86_400 * 365) } else { keep_alive };
        let timer = tokio::time::sleep(tick);
        tokio::pin!(timer);
        let mut last_write = Instant::now();
        let mut stalled: Option<Inbound> = None;
        let mut dirty = false;
        self.parse(&mut rbuf, &mut out, &mut stalled)?;
        loop {
            self.state.fill(&mut out, HIGH_WATER);
            rbuf.reserve(HIGH_WATER);
            // A refused subscription to ask for again, or publishes that will have waited too
            // long for an acknowledgement, before the next keep-alive tick.
            let soonest = [self.state.next_retry(), self.state.stall_deadline(self.stall_timeout)];
            if let Some(due) = soonest.into_iter().flatten().min()
                && tokio::time::Instant::from_std(due) < timer.deadline()
            {
                timer.as_mut().reset(due.into());
            }
            let wake = tokio::select! {
                cmd = self.cmds.recv() => Wake::Command(cmd),
                wrote = write_step(&mut writer, &mut out), if !out.is_empty() || dirty => {
                    Wake::Wrote(wrote)
                }
                read = reader.read_buf(&mut rbuf), if stalled.is_none() => Wake::Read(read),
                _ = self.incoming.reserve(), if stalled.is_some() => Wake::Room,
                () = &mut timer => Wake::Tick,
            };
            match wake {
                Wake::Command(mut cmd) => {
                    // Take a batch, so that one write carries many publishes.
                    for taken in 1.. {
                        if let Flow::Stop = self.apply(cmd, &mut out) {
                            self.shutdown(&mut writer, &mut out).await;
                            return Ok(());
                        }
                        if taken == COMMAND_BATCH {
                            break;
                        }
                        match self.cmds.try_recv() {
                            Ok(next) => cmd = Some(next),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Wrote(Some(n)) => {
                    let n = n?;
                    if n == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    self.state.on_written(n);
                    dirty = true;
                    last_write = Instant::now();
                }
                Wake::Wrote(None) => dirty = false,
                Wake::Read(read) => {
                    if read? == 0 {
                        return Err(LinkError::Eof);
                    }
                    self.parse(&mut rbuf, &mut out, &mut stalled)?;
                }
                Wake::Room => {
                    // The driver is the only sender, so the slot just seen free stays free.
                    if let Some(inbound) = stalled.take() {
                        if self.incoming.try_send(inbound.message).is_ok() {
                            self.shared.delivered.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Some(ack) = inbound.ack {
                            write(wire, &mut out, &ack);
                        }
                    }
                    self.parse(&mut rbuf, &mut out, &mut stalled)?;
                }
                Wake::Tick => {
                    let now = Instant::now();
                    // While stalled we do not read, so a missing PINGRESP proves nothing.
                    if stalled.is_none() && self.state.ping_overdue(now, keep_alive) {
                        return Err(LinkError::Timeout("no PINGRESP within the keep-alive"));
                    }
                    // (Nor does a missing acknowledgement while we are not reading.)
                    if stalled.is_none() && self.state.stall_deadline(self.stall_timeout).is_some_and(|d| now >= d) {
                        return Err(LinkError::Timeout(
                            "a publish waited longer than mqtt.stall_timeout for its acknowledgement",
                        ));
                    }
                    if now >= last_write + tick && self.state.oldest_ping().is_none() {
                        self.state.ping(now, &mut out);
                    }
                    self.state.retry_due(now, &mut out);
                    let mut next = last_write + tick;
                    if let Some(sent) = self.state.oldest_ping() {
                        next = next.min(sent + tick);
                    }
                    if let Some(due) = self.state.next_retry() {
                        next = next.min(due);
                    }
                    let next = next.max(now + Duration::from_millis(10));
                    timer.as_mut().reset(next.into());
                }
            }
        }
    }

    /// Decodes buffered packets until the buffer runs dry or the incoming channel is full.
    fn parse(
        &mut self,
        rbuf: &mut BytesMut,
        out: &mut BytesMut,
        stalled: &mut Option<Inbound>,
    ) -> Result<(), LinkError> {
        let wire = self.state.wire();
        while stalled.is_none() {
            let Some(packet) = wire.read(rbuf)? else { break };
            let Some(inbound) = self.state.handle(packet, Instant::now(), out)? else {
                continue;
            };
            let sent = self.incoming.try_send(inbound.message);
            if sent.is_ok() {
                // Counted before a subscribe it came with resolves (see Handle::subscribe).
                self.shared.delivered.fetch_add(1, Ordering::SeqCst);
            }
            match sent {
                Ok(()) | Err(TrySendError::Closed(_)) => {
                    if let Some(ack) = inbound.ack {
                        write(wire, out, &ack);
                    }
                }
                Err(TrySendError::Full(message)) => {
                    *stalled = Some(Inbound { message, ack: inbound.ack });
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, cmd: Option<Command>, out: &mut BytesMut) -> Flow {
        // The publishes handed over before this command go first, in order.
        self.take_handed();
        match cmd {
            None => return Flow::Stop, // every handle dropped
            Some(Command::Close(tx)) => {
                self.close_waiters.push(tx);
                return Flow::Stop;
            }
            Some(Command::Take) => {}
            Some(Command::Subscribe { filter, qos, tx }) => {
                self.state.subscribe(filter, qos, tx, out);
            }
            Some(Command::Unsubscribe { filter, tx }) => self.state.unsubscribe(filter, tx, out),
        }
        Flow::Continue
    }

    fn take_handed(&mut self) {
        for queued in self.shared.take_handed() {
            self.state.enqueue(queued);
        }
    }

    fn apply_offline(&mut self, cmd: Option<Command>) -> Flow {
        // Without a session the state writes nothing.
        let mut nothing = BytesMut::new();
        self.apply(cmd, &mut nothing)
    }

    /// Writes what is buffered, what is still queued (the QoS 0 publishes nobody waits for;
    /// QoS 1 ones as the in-flight window allows) and DISCONNECT, bounded by [`CLOSE_TIMEOUT`].
    async fn shutdown(&mut self, writer: &mut WriteHalf<Box<dyn Stream>>, out: &mut BytesMut) {
        self.state.fill(out, usize::MAX);
        let disconnect = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection));
        write(self.state.wire(), out, &disconnect);
        let state = &mut self.state;
        let flush = async {
            while !out.is_empty() {
                let n = writer.write_buf(out).await?;
                if n == 0 {
                    break;
                }
                state.on_written(n);
            }
            writer.flush().await?;
            writer.shutdown().await
        };
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, flush).await {
            debug!(error = %e, "Could not send DISCONNECT to the MQTT broker.");
        }
    }

    /// Stops: everything pending resolves `Closed`.
    fn finish(mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.caught_up.notify_waiters();
        self.take_handed();
        self.state.close();
        self.connected.send_replace(false);
        for tx in self.close_waiters.drain(..) {
            let _ = tx.send(());
        }
        debug!(broker = %self.endpoints[self.current], "MQTT client stopped.");
    }
}

/// Writes from `out`, or flushes once it is empty (TLS may hold records back). Cancel-safe.
async fn write_step(writer: &mut WriteHalf<Box<dyn Stream>>, out: &mut BytesMut) -> Option<io::Result<usize>> {
    if out.is_empty() {
        return writer.flush().await.err().map(Err);
    }
    Some(writer.write_buf(out).await)
}

/// TCP/TLS connect, CONNECT (`hello`, encoded in `wire`), CONNACK; returns the stream and any
/// bytes read past the CONNACK.
async fn open_session(
    endpoint: &Endpoint,
    hello: BytesMut,
    wire: Wire,
) -> Result<(Box<dyn Stream>, ConnAck, BytesMut), LinkError> {
    let attempt = async {
        let mut stream = endpoint.open().await?;
        stream.write_all(&hello).await?;
        stream.flush().await?;
        let mut rbuf = BytesMut::with_capacity(4096);
        loop {
            // A 3.1.1 broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK, which the MQTT 5
            // codec cannot read.
            if wire == Wire::V5 && rbuf.len() >= 4 && refuses_v5(&rbuf) {
                return Err(LinkError::VersionRefused(wire));
            }
            match wire.read(&mut rbuf)? {
                Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                    return Ok((stream, ack, rbuf));
                }
                Some(Packet::ConnAck(ack))
                    if matches!(
                        ack.code,
                        ConnectReturnCode::UnsupportedProtocolVersion | ConnectReturnCode::RefusedProtocolVersion
                    ) =>
                {
                    return Err(LinkError::VersionRefused(wire));
                }
                Some(Packet::ConnAck(ack)) => {
                    let reason = ack.properties.and_then(|p| p.reason_string);
                    return Err(LinkError::Refused(match reason {
                        Some(text) => format!("{:?}: {text}", ack.code),
                        None => format!("{:?}", ack.code),
                    }));
                }
                Some(_) => return Err(StateError::Unexpected("non-CONNACK").into()),
                None => {
                    if stream.read_buf(&mut rbuf).await? == 0 {
                        return Err(LinkError::Eof);
                    }
                }
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt).await.map_err(|_| LinkError::Timeout(CONNACK_TIMEOUT))?
}
