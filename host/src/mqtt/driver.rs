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
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Login, Packet,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::client::{ClientConfig, Incoming};
use super::queue::Shared;
use super::state::{Inbound, State, StateError, write};
use super::subscriptions::Waiter;
use super::transport::{Endpoint, Stream};

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
    #[error("malformed packet from the broker: {0}")]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Protocol(#[from] StateError),
    #[error("broker closed the connection")]
    Eof,
}

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
    endpoint: Endpoint,
    connect: Packet,
    keep_alive: Duration,
    delay_max: Duration,
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
        endpoint: Endpoint,
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
        let state = State::new(shared.clone(), config.queue_capacity, config.max_inflight);
        Self {
            endpoint,
            connect: Packet::Connect(connect, None, login),
            keep_alive: config.keep_alive,
            delay_max: config.reconnect_delay_max.max(MIN_DELAY),
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
        let broker = self.endpoint.to_string();
        let mut delay = MIN_DELAY;
        let mut failures = 0u32;
        let mut sessions = 0u64;
        loop {
            let (endpoint, connect) = (self.endpoint.clone(), self.connect.clone());
            let connecting = open_session(&endpoint, &connect);
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
                    info!(%broker, "Connected to the MQTT broker.");
                    self.connected.send_replace(true);
                    let started = Instant::now();
                    let outcome = self.session(stream, &connack, rbuf).await;
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
                    failures += 1;
                    if failures == 1 {
                        warn!(%broker, error = %e, "Cannot connect to the MQTT broker; retrying.");
                    } else {
                        debug!(%broker, error = %e, failures, "MQTT connect attempt failed.");
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
        mut rbuf: BytesMut,
    ) -> Result<(), LinkError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut out = BytesMut::with_capacity(2 * HIGH_WATER);
        self.state.on_connack(connack, &mut out);
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
                            write(&mut out, &ack);
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
                    if now >= last_write + tick && self.state.oldest_ping().is_none() {
                        self.state.ping(now, &mut out);
                    }
                    let mut next = last_write + tick;
                    if let Some(sent) = self.state.oldest_ping() {
                        next = next.min(sent + tick);
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
        while stalled.is_none() {
            let packet = match Packet::read(rbuf, None) {
                Ok(packet) => packet,
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(e) => return Err(e.into()),
            };
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
                        write(out, &ack);
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
        write(out, &Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)));
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
        debug!(broker = %self.endpoint, "MQTT client stopped.");
    }
}

/// Writes from `out`, or flushes once it is empty (TLS may hold records back). Cancel-safe.
async fn write_step(writer: &mut WriteHalf<Box<dyn Stream>>, out: &mut BytesMut) -> Option<io::Result<usize>> {
    if out.is_empty() {
        return writer.flush().await.err().map(Err);
    }
    Some(writer.write_buf(out).await)
}

/// TCP/TLS connect, CONNECT, CONNACK; returns the stream and any bytes read past the CONNACK.
async fn open_session(
    endpoint: &Endpoint,
    connect: &Packet,
) -> Result<(Box<dyn Stream>, ConnAck, BytesMut), LinkError> {
    let attempt = async {
        let mut stream = endpoint.open().await?;
        let mut buf = BytesMut::new();
        connect.write(&mut buf, None)?;
        stream.write_all(&buf).await?;
        stream.flush().await?;
        let mut rbuf = BytesMut::with_capacity(4096);
        loop {
            match Packet::read(&mut rbuf, None) {
                Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                    return Ok((stream, ack, rbuf));
                }
                Ok(Packet::ConnAck(ack)) => {
                    let reason = ack.properties.and_then(|p| p.reason_string);
                    return Err(LinkError::Refused(match reason {
                        Some(text) => format!("{:?}: {text}", ack.code),
                        None => format!("{:?}", ack.code),
                    }));
                }
                Ok(_) => return Err(StateError::Unexpected("non-CONNACK").into()),
                Err(CodecError::InsufficientBytes(_)) => {
                    if stream.read_buf(&mut rbuf).await? == 0 {
                        return Err(LinkError::Eof);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt).await.map_err(|_| LinkError::Timeout("no CONNACK within 10 s"))?
}
