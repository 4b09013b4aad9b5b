//! The UDP driver: one task owns the socket and the [`Endpoint`]; the app talks to it through
//! a cloneable [`Handle`].
//!
//! The task `select!`s over the socket (draining up to a batch of datagrams with `recvmmsg`),
//! the command channel, the requests that wait, and the endpoint's next timer, and after each
//! step forwards every event and sends every pending datagram (`sendmmsg`). Requests go to the
//! gateway's inline handler on this task ([`Handle::dispatch_inline`]), or, until one is
//! installed, as [`Event`]s on a bounded channel. It never waits on the app: with too many
//! requests waiting (or a full channel) a request is answered 5.03 Service Unavailable
//! (Max-Age 1) right away, and a relation-gone notice waits in a local queue until there is
//! room.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::core::{BATCH, Core, reserve};
use super::mmsg::{RECV_BATCH, RecvBuffers, recv_batch, send_batch};
use crate::coap::{
    Endpoint, EndpointConfig, Event, IncomingRequest, Notification, ObserverId, RequestId, Response, Stats, Transmit,
};

/// Each receive buffer: the largest UDP payload.
const RECV_BUFFER: usize = 64 * 1024;

/// What the app asks of the driver.
#[derive(Debug)]
pub enum Command {
    /// Answer a request.
    Respond(RequestId, Response),
    /// Answer a request and report the Observe relation it registered, if any.
    RespondObserve(RequestId, Response, oneshot::Sender<Option<ObserverId>>),
    /// Notify an observer.
    Notify(ObserverId, Notification),
    /// End an observation without telling the app.
    Cancel(ObserverId),
    /// Report a copy of the endpoint's counters.
    Stats(oneshot::Sender<Stats>),
    /// From now on, hand requests to this handler on the driver's own task (see
    /// [`Handle::dispatch_inline`]).
    Inline(Inline),
}

/// The rest of a request's handling once it has to wait (for a PUBACK, a SUBACK, a value).
pub type RequestTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request handler the driver calls on its own task. It handles the request as far as it
/// can without waiting and returns the rest, if any, which the driver then polls among its
/// other waiting requests.
pub type InlineHandler = Arc<dyn Fn(IncomingRequest) -> Option<RequestTask> + Send + Sync>;

/// An [`InlineHandler`], the driver whose commands it may issue in place, and how many of its
/// requests may wait at once (beyond, new requests are answered 5.03, Max-Age 1).
#[derive(Clone)]
pub struct Inline {
    pub(crate) handler: InlineHandler,
    pub(crate) driver: u64,
    pub(crate) limit: usize,
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline").field("driver", &self.driver).finish_non_exhaustive()
    }
}

thread_local! {
    /// The commands issued for driver `.0` while it runs an inline handler on this thread.
    static CAPTURE: RefCell<Option<(u64, Vec<Command>)>> = const { RefCell::new(None) };
}

/// Runs `f` (an inline handler, on driver `driver`'s task) and returns its result (`Err` if it
/// panicked) and the commands it issued to that driver, which then go straight to the endpoint
/// instead of through the channel.
pub(crate) fn capture<R>(
    driver: u64,
    buffer: Vec<Command>,
    f: impl FnOnce() -> R,
) -> (std::thread::Result<R>, Vec<Command>) {
    let previous = CAPTURE.with(|c| c.replace(Some((driver, buffer))));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let captured = CAPTURE.with(|c| c.replace(previous)).map(|(_, commands)| commands).unwrap_or_default();
    (result, captured)
}

/// Talks to a running driver; cheap to clone. Commands sent after the driver stopped are
/// dropped.
#[derive(Clone, Debug)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    /// Tells this driver's captured commands from another's (see [`capture`]).
    driver: u64,
}

impl Handle {
    /// A handle over a driver's command channel (for the other transports' drivers).
    pub(crate) fn new(commands: mpsc::UnboundedSender<Command>) -> Handle {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Handle { commands, driver: NEXT.fetch_add(1, Ordering::Relaxed) }
    }

    fn send(&self, command: Command) {
        // Issued by an inline handler running on this driver's task: it applies it itself.
        let command = CAPTURE.with(|c| match &mut *c.borrow_mut() {
            Some((driver, captured)) if *driver == self.driver => {
                captured.push(command);
                None
            }
            _ => Some(command),
        });
        if let Some(command) = command
            && self.commands.send(command).is_err()
        {
            debug!("Dropped a command: the CoAP driver has stopped.");
        }
    }

    /// Has the driver call `handler` for each request on its own task instead of sending
    /// [`Event::Request`]s through the event channel (relation-gone events still go there).
    ///
    /// This is the gateway's hot path. A request that needs no waiting (a QoS 0 publish, a
    /// refusal, a rule's own answer) is read, decided, published and answered in one turn of
    /// the driver; one that waits (a QoS 1 publish for its PUBACK) is polled by the driver
    /// when what it waits for arrives. No task is spawned per request, and the responses a
    /// handler issues through this handle are applied in place, so a burst of PUBACKs
    /// becomes one batch of answers. At most `limit` requests wait at once.
    pub fn dispatch_inline(&self, handler: InlineHandler, limit: usize) {
        self.send(Command::Inline(Inline { handler, driver: self.driver, limit }));
    }

    /// Answers request `id`; never blocks and never loses the response while the driver runs.
    pub fn respond(&self, id: RequestId, response: Response) {
        self.send(Command::Respond(id, response));
    }

    /// Sends a notification to an observer (ignored if the relation is gone).
    pub fn notify(&self, id: ObserverId, notification: Notification) {
        self.send(Command::Notify(id, notification));
    }

    /// Ends an observation from the gateway side; no [`Event::ObserverGone`] follows.
    pub fn cancel(&self, id: ObserverId) {
        self.send(Command::Cancel(id));
    }

    /// Answers request `id` with `response.observe` set and returns the registered relation
    /// (`None` if none was registered or the driver stopped).
    pub async fn respond_observe(&self, id: RequestId, response: Response) -> Option<ObserverId> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RespondObserve(id, Response { observe: true, ..response }, tx));
        rx.await.ok().flatten()
    }

    /// A copy of the endpoint's counters (`None` if the driver stopped).
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx));
        rx.await.ok()
    }
}

/// Binds `addr` (port 0 picks one) and spawns the driver on the current tokio runtime.
///
/// Returns the bound address, a [`Handle`], and the task, which ends when `shutdown` becomes
/// `true` (or its sender is dropped). Only a failed bind is an error; send and receive
/// errors are logged and counted.
pub async fn bind(
    addr: SocketAddr,
    socket_buffer: usize,
    config: EndpointConfig,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, Handle, JoinHandle<()>)> {
    let socket = open(addr, socket_buffer)?;
    let local = socket.local_addr()?;
    let (tx, commands) = mpsc::unbounded_channel();
    let driver = Driver { socket, core: Core::new(Endpoint::new(config), events, 0), commands };
    info!(%local, "CoAP listening on UDP.");
    let task = tokio::spawn(driver.run(shutdown));
    Ok((local, Handle::new(tx), task))
}

/// A non-blocking UDP socket bound to `addr` with kernel buffers of (up to) `buffer` bytes.
///
/// The default receive buffer (about 200 KiB) overflows in a burst of a few thousand
/// datagrams, and on loopback that is where NON messages are lost; the kernel caps the size at
/// `net.core.rmem_max`, which is reported when it does.
pub(crate) fn open(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        warn!(error = %e, buffer, "Cannot set the UDP receive buffer size.");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        warn!(error = %e, buffer, "Cannot set the UDP send buffer size.");
    }
    // Linux reports twice the size it granted (the bookkeeping overhead).
    if let Ok(granted) = socket.recv_buffer_size().map(|doubled| doubled / 2)
        && granted < buffer
    {
        debug!(requested = buffer, granted, "The kernel capped the UDP receive buffer (net.core.rmem_max).");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Why the driver woke up.
enum Wake {
    Readable(io::Result<()>),
    Command(Option<Command>),
    /// Waiting requests made progress (their commands are applied).
    Waiting,
    Timer,
    Room(Option<mpsc::OwnedPermit<Event>>),
}

struct Driver {
    socket: UdpSocket,
    core: Core,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut buffers = RecvBuffers::new(RECV_BUFFER);
        let mut out = Vec::with_capacity(BATCH);
        let mut commands_open = true;
        while !*shutdown.borrow() {
            let deadline = self.core.endpoint.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let room = self.core.room_wanted();
            let wake = tokio::select! {
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                ready = self.socket.readable() => Wake::Readable(ready),
                command = self.commands.recv(), if commands_open => Wake::Command(command),
                () = std::future::poll_fn(|cx| self.core.poll_waiting(cx)) => Wake::Waiting,
                () = sleep => Wake::Timer,
                permit = reserve(room.clone()), if room.is_some() => Wake::Room(permit),
            };
            match wake {
                Wake::Readable(Ok(())) => self.received(&mut buffers),
                Wake::Readable(Err(error)) => warn!(%error, "UDP socket not readable."),
                Wake::Command(Some(command)) => self.core.apply_batch(command, &mut self.commands),
                Wake::Command(None) => commands_open = false,
                Wake::Waiting => {}
                Wake::Timer => self.core.endpoint.handle_timeout(Instant::now()),
                Wake::Room(permit) => self.core.room(permit),
            }
            self.flush(&mut out).await;
        }
        info!("CoAP driver stopped.");
    }

    /// Handles what the socket has, up to [`BATCH`] datagrams (a few `recvmmsg` calls).
    fn received(&mut self, buffers: &mut RecvBuffers) {
        let mut handled = 0;
        while handled < BATCH {
            match recv_batch(&self.socket, buffers) {
                Ok(0) => return,
                Ok(n) => {
                    let now = Instant::now();
                    for (peer, datagram) in buffers.datagrams() {
                        if !datagram.is_empty() {
                            self.core.endpoint.handle_datagram(peer, datagram, now);
                        }
                    }
                    handled += n;
                    if n < RECV_BATCH {
                        return;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                // E.g. ICMP port unreachable reported on a later receive: not fatal.
                Err(error) => {
                    debug!(%error, "UDP receive failed.");
                    handled += 1;
                }
            }
        }
    }

    /// Forwards events and sends datagrams (a batch per `sendmmsg`) until the endpoint has
    /// nothing more.
    async fn flush(&mut self, out: &mut Vec<Transmit>) {
        loop {
            self.core.forward_events(|_| None);
            while out.len() < BATCH {
                let Some(transmit) = self.core.endpoint.poll_transmit() else { break };
                out.push(transmit);
            }
            if out.is_empty() {
                break;
            }
            let mut sent = 0;
            while sent < out.len() {
                match send_batch(&self.socket, &out[sent..]) {
                    Ok(n) => sent += n.max(1),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(error) = self.socket.writable().await {
                            warn!(%error, "UDP socket not writable.");
                            break;
                        }
                    }
                    Err(error) => {
                        self.core.endpoint.record_send_error();
                        warn!(peer = %out[sent].peer, %error, "UDP send failed.");
                        sent += 1;
                    }
                }
            }
            out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    struct Server {
        addr: SocketAddr,
        handle: Handle,
        events: mpsc::Receiver<Event>,
        shutdown: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    async fn start(queue: usize) -> Server {
        let (events_tx, events) = mpsc::channel(queue);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let localhost = "127.0.0.1:0".parse().unwrap();
        let (addr, handle, task) =
            bind(localhost, 1 << 20, EndpointConfig::default(), events_tx, shutdown_rx).await.unwrap();
        Server { addr, handle, events, shutdown, task }
    }

    async fn client(server: &Server) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(server.addr).await.unwrap();
        socket
    }

    async fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let len = timeout(WAIT, socket.recv(&mut buf)).await.unwrap().unwrap();
        buf[..len].to_vec()
    }

    async fn next_request(server: &mut Server) -> crate::coap::IncomingRequest {
        match timeout(WAIT, server.events.recv()).await.unwrap() {
            Some(Event::Request(request)) => request,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn con_get_gets_its_piggybacked_answer_after_respond() {
        let mut server = start(16).await;
        let client = client(&server).await;
        client.send(&[0x41, 0x01, 0x12, 0x34, 0x77, 0xb4, b't', b'e', b's', b't']).await.unwrap();
        let request = next_request(&mut server).await;
        assert_eq!(request.path, ["test"]);
        let response = Response { payload: b"ok".to_vec(), ..Response::default() };
        server.handle.respond(request.id, response);
        assert_eq!(recv(&client).await, [0x61, 0x45, 0x12, 0x34, 0x77, 0xff, b'o', b'k']);
        let stats = server.handle.stats().await.unwrap();
        assert_eq!((stats.received, stats.requests), (1, 1));
        server.shutdown.send(true).unwrap();
        timeout(WAIT, server.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn full_event_channel_gets_5_03_with_max_age_1() {
        let mut server = start(1).await;
        let client = client(&server).await;
        client.send(&[0x40, 0x01, 0x00, 0x01, 0xb1, b'a']).await.unwrap();
        client.send(&[0x40, 0x01, 0x00, 0x02, 0xb1, b'b']).await.unwrap();
        // 5.03, MID 2, Max-Age (option 14) = 1.
        assert_eq!(recv(&client).await, [0x60, 0xa3, 0x00, 0x02, 0xd1, 0x01, 0x01]);
        assert_eq!(next_request(&mut server).await.path, ["a"]);
        assert_eq!(server.handle.stats().await.unwrap().busy_rejections, 1);
    }

    #[tokio::test]
    async fn observe_registration_returns_the_relation_and_notifications_arrive() {
        let mut server = start(16).await;
        let client = client(&server).await;
        // NON GET /t with token 0x05 and Observe=0.
        client.send(&[0x51, 0x01, 0x00, 0x09, 0x05, 0x60, 0x51, b't']).await.unwrap();
        let request = next_request(&mut server).await;
        let id = server.handle.respond_observe(request.id, Response::default()).await.unwrap();
        let registered = recv(&client).await;
        assert_eq!(registered[1], 0x45);
        let notification = Notification { payload: b"n1".to_vec(), ..Notification::default() };
        server.handle.notify(id, notification);
        let notified = recv(&client).await;
        assert_eq!(notified[0], 0x51, "NON with a 1-byte token");
        assert_eq!(notified[4], 0x05, "the registration token");
        assert!(notified.ends_with(&[0xff, b'n', b'1']));
        // An RST to the NON notification ends the relation.
        client.send(&[0x70, 0x00, notified[2], notified[3]]).await.unwrap();
        match timeout(WAIT, server.events.recv()).await.unwrap() {
            Some(Event::ObserverGone { id: gone, reason }) => {
                assert_eq!((gone, reason), (id, crate::coap::GoneReason::Reset));
            }
            other => panic!("expected ObserverGone, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn burst_of_datagrams_is_handled_in_batches_without_loss() {
        let mut server = start(1000).await;
        let client = client(&server).await;
        for mid in 0..300u16 {
            let [m0, m1] = mid.to_be_bytes();
            client.send(&[0x50, 0x01, m0, m1, 0xb1, b'x']).await.unwrap();
        }
        for _ in 0..300 {
            next_request(&mut server).await;
        }
    }

    #[tokio::test]
    async fn dropping_the_shutdown_sender_stops_the_driver() {
        let server = start(1).await;
        drop(server.shutdown);
        timeout(WAIT, server.task).await.unwrap().unwrap();
        assert_eq!(server.handle.stats().await, None);
    }

    /// Runs libcoap's client; `None` when it is not installed.
    fn coap_client(args: &[&str]) -> Option<std::process::Output> {
        match std::process::Command::new("coap-client-notls").args(args).output() {
            Ok(output) => Some(output),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => panic!("coap-client-notls: {error}"),
        }
    }

    #[tokio::test]
    async fn libcoap_client_observes_small_and_block_wise_notifications() {
        if coap_client(&["-h"]).is_none() {
            println!("coap-client-notls not installed (Debian: libcoap3-bin); skipping the interop test");
            return;
        }
        let mut server = start(16).await;
        let handle = server.handle.clone();
        let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let notified = big.clone();
        tokio::spawn(async move {
            while let Some(event) = server.events.recv().await {
                let Event::Request(request) = event else { continue };
                if !request.is_observe_registration() {
                    handle.respond(request.id, Response { code: 0x84, ..Response::default() });
                    continue;
                }
                let response = Response { payload: b"first;".to_vec(), ..Response::default() };
                let Some(id) = handle.respond_observe(request.id, response).await else { continue };
                for payload in [b"second;".to_vec(), notified.clone()] {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    handle.notify(id, Notification { payload, confirmable: true, ..Notification::default() });
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("observe.out");
        let out = out.to_str().unwrap().to_owned();
        let uri = format!("coap://127.0.0.1:{}/obs", server.addr.port());
        let args: Vec<String> = ["-s", "2", "-B", "3", "-o", &out, &uri].iter().map(|s| s.to_string()).collect();
        let run =
            tokio::task::spawn_blocking(move || coap_client(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let output = run.await.unwrap().unwrap();
        let received = std::fs::read(&out).unwrap();
        println!("{output:?}: {} bytes received", received.len());
        let mut expected = b"first;second;".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(received, expected);
        server.shutdown.send(true).unwrap();
    }

    #[tokio::test]
    async fn libcoap_client_puts_and_gets_10_kb_block_wise() {
        if coap_client(&["-h"]).is_none() {
            println!("coap-client-notls not installed (Debian: libcoap3-bin); skipping the interop test");
            return;
        }
        let mut server = start(16).await;
        let handle = server.handle.clone();
        tokio::spawn(async move {
            let mut stored = Vec::new();
            while let Some(event) = server.events.recv().await {
                let Event::Request(request) = event else { continue };
                let payload = if request.method == 1 {
                    stored.clone()
                } else {
                    stored = request.payload.clone();
                    request.payload
                };
                handle.respond(request.id, Response { code: 0x45, payload, ..Response::default() });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..10_240u32).map(|i| b'a' + (i % 26) as u8).collect();
        let input = dir.path().join("in.txt");
        std::fs::write(&input, &body).unwrap();
        let uri = format!("coap://127.0.0.1:{}/x", server.addr.port());
        let put_out = dir.path().join("put.out");
        let get_out = dir.path().join("get.out");
        let (input, put_out, get_out) = (input.to_str().unwrap(), put_out.to_str().unwrap(), get_out.to_str().unwrap());

        let args = ["-m", "put", "-b", "512", "-f", input, "-o", put_out, "-B", "10", &uri];
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let put =
            tokio::task::spawn_blocking(move || coap_client(&owned.iter().map(String::as_str).collect::<Vec<_>>()));
        let put = put.await.unwrap().unwrap();
        assert!(put.status.success(), "{put:?}");
        assert_eq!(std::fs::read(put_out).unwrap(), body, "PUT (Block1) echoed back (Block2)");

        let args = ["-m", "get", "-b", "64", "-o", get_out, "-B", "10", &uri];
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let get =
            tokio::task::spawn_blocking(move || coap_client(&owned.iter().map(String::as_str).collect::<Vec<_>>()));
        let get = get.await.unwrap().unwrap();
        assert!(get.status.success(), "{get:?}");
        assert_eq!(std::fs::read(get_out).unwrap(), body, "GET in 64-byte Block2 blocks");
        let stats = server.handle.stats().await.unwrap();
        println!("{stats:?}");
        assert_eq!(stats.requests, 2, "one PUT and one GET reached the app");
        assert!(stats.answered_locally > 150, "2.31s and cached blocks: {stats:?}");
        server.shutdown.send(true).unwrap();
    }
}
