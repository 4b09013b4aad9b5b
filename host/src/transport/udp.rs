//! The UDP driver: one task owns the socket and the [`Endpoint`]; the service answers through
//! the driver's [`Link`].
//!
//! The task runs the shared loop of [`Core::run`] over a [`Socket`] wire: it drains up to a
//! batch of datagrams with `recvmmsg`, hands each complete request to the service on this task
//! (see [`super::link`]), and sends what the endpoint produces with `sendmmsg` (a plain `sendto`
//! for a single datagram).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::core::{BATCH, Core, Serving, Wire};
use super::link::Link;
use super::mmsg::{RECV_BATCH, RecvBuffers, recv_batch, send_batch};
use crate::coap::{Endpoint, EndpointConfig, Transmit};
use crate::shutdown::Shutdown;
use crate::telemetry::Transport;

/// Each receive buffer: the largest UDP payload.
const RECV_BUFFER: usize = 64 * 1024;

/// The UDP listener's drivers, once bound.
pub struct Drivers {
    /// The address they share.
    pub local: SocketAddr,
    /// One [`Link`] per driver (for their statistics).
    pub links: Vec<Link>,
    /// The drivers' tasks; each ends when `shutdown` has fired and its requests in progress
    /// are answered.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Binds `addr` (port 0 picks one) with `drivers` sockets and spawns a driver for each on the
/// current tokio runtime, serving requests with `serving.service`.
///
/// # Many drivers, one port
///
/// With more than one driver the sockets share the port through `SO_REUSEPORT`: the kernel
/// picks a socket for each datagram by a hash of its source and destination, so one device
/// (address and port) always reaches the same driver, which holds everything about it
/// (de-duplication, block-wise transfers, Observe relations, Echo verification, its rate). The
/// drivers share nothing but the service, so they scale with the cores that run them: each is
/// a task on the multi-threaded runtime, and tokio runs as many at once as it has workers (one
/// per core). `endpoint` and `serving.request_queue` are the listener's; each driver gets an
/// even share of their listener-wide limits ([`EndpointConfig::share_of`]).
///
/// The first socket binds `addr`; the others bind the address it got (so port 0 works). A
/// driver that stopped leaves its share of devices unanswered until the gateway restarts (the
/// kernel keeps hashing to the group it knows); drivers stop only on shutdown.
///
/// Only a failed bind is an error; send and receive errors are logged and counted.
pub async fn bind(
    addr: SocketAddr,
    drivers: usize,
    socket_buffer: usize,
    endpoint: EndpointConfig,
    serving: Serving,
    shutdown: Shutdown,
) -> io::Result<Drivers> {
    let drivers = drivers.max(1);
    let reuse_port = drivers > 1;
    let endpoint = endpoint.share_of(drivers);
    let serving = Serving { request_queue: serving.request_queue.div_ceil(drivers).max(1), ..serving };
    let first = open(addr, socket_buffer, reuse_port)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..drivers {
        sockets.push(open(local, socket_buffer, reuse_port)?);
    }
    let (mut links, mut tasks) = (Vec::with_capacity(drivers), Vec::with_capacity(drivers));
    for socket in sockets {
        let (link, commands) = Link::channel(Transport::Udp);
        let core = Core::new(Endpoint::new(endpoint.clone(), Instant::now()), serving.clone(), link.clone());
        let wire = Socket { socket, buffers: RecvBuffers::new(RECV_BUFFER), out: Vec::with_capacity(BATCH) };
        tasks.push(tokio::spawn(core.run(wire, commands, shutdown.clone())));
        links.push(link);
    }
    info!(%local, drivers, "CoAP listening on UDP.");
    Ok(Drivers { local, links, tasks })
}

/// A non-blocking UDP socket bound to `addr` with kernel buffers of (up to) `buffer` bytes.
///
/// The default receive buffer (about 200 KiB) overflows in a burst of a few thousand
/// datagrams, and on loopback that is where NON messages are lost; the kernel caps the size at
/// `net.core.rmem_max`, which is reported when it does.
///
/// `reuse_port` lets other sockets of this process bind the same address (`SO_REUSEPORT`; the
/// kernel allows it only to the same user), for [`bind`]'s drivers.
pub(crate) fn open(addr: SocketAddr, buffer: usize, reuse_port: bool) -> io::Result<UdpSocket> {
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
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The UDP wire: the socket, its receive buffers, and the batch being sent.
struct Socket {
    socket: UdpSocket,
    buffers: RecvBuffers,
    out: Vec<Transmit>,
}

impl Wire for Socket {
    async fn ready(&mut self) -> bool {
        if let Err(error) = self.socket.readable().await {
            warn!(%error, "UDP socket not readable.");
        }
        true
    }

    /// Handles what the socket has, up to [`BATCH`] datagrams (a few `recvmmsg` calls).
    fn receive(&mut self, endpoint: &mut Endpoint) {
        let mut handled = 0;
        while handled < BATCH {
            match recv_batch(&self.socket, &mut self.buffers) {
                Ok(0) => return,
                Ok(n) => {
                    let now = Instant::now();
                    for (peer, datagram) in self.buffers.datagrams() {
                        if !datagram.is_empty() {
                            endpoint.handle_datagram(peer, datagram, now);
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

    fn identity(&self, _peer: SocketAddr) -> Option<Arc<sluice_sdk::Identity>> {
        None
    }

    /// Sends up to a batch of datagrams (one `sendmmsg` when the socket takes them all).
    async fn send(&mut self, endpoint: &mut Endpoint) -> bool {
        let out = &mut self.out;
        while out.len() < BATCH {
            let Some(transmit) = endpoint.poll_transmit() else { break };
            out.push(transmit);
        }
        if out.is_empty() {
            return false;
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
                    endpoint.record_send_error();
                    warn!(peer = %out[sent].peer, %error, "UDP send failed.");
                    sent += 1;
                }
            }
        }
        out.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};
    use tokio::time::timeout;

    use super::*;
    use crate::coap::{IncomingRequest, Notification, Response};
    use crate::shutdown::Trigger;
    use crate::transport::testing::{Forward, Seen};

    const WAIT: Duration = Duration::from_secs(5);

    struct Server {
        addr: SocketAddr,
        link: Link,
        seen: mpsc::UnboundedReceiver<Seen>,
        trigger: Trigger,
        task: JoinHandle<()>,
    }

    /// A driver whose service forwards requests (holding each one when `hold`), with room for
    /// `queue` waiting requests and `drain` to finish them at shutdown.
    async fn start_with(queue: usize, hold: bool, drain: Duration) -> Server {
        let (trigger, shutdown) = crate::shutdown::channel();
        let (service, seen) = Forward::new(hold);
        let serving =
            Serving { service: Arc::new(service), request_queue: queue, drain_timeout: drain, retry_after: 7 };
        let localhost = "127.0.0.1:0".parse().unwrap();
        // Raw datagrams without Echo options, some in quick bursts: no abuse limits.
        let config = EndpointConfig { amplification_factor: 0, peer_rate: 0, ..EndpointConfig::default() };
        let Drivers { local: addr, mut links, mut tasks } =
            bind(localhost, 1, 1 << 20, config, serving, shutdown).await.unwrap();
        let (link, task) = (links.remove(0), tasks.remove(0));
        Server { addr, link, seen, trigger, task }
    }

    async fn start(queue: usize) -> Server {
        start_with(queue, false, Duration::from_secs(1)).await
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

    /// The next request the service was handed, its link, and (when held) its release.
    async fn next_held(server: &mut Server) -> (IncomingRequest, Link, Option<oneshot::Sender<Response>>) {
        match timeout(WAIT, server.seen.recv()).await.unwrap() {
            Some(Seen::Request { request, link, release }) => (request, link, release),
            Some(Seen::Gone(id, reason)) => panic!("expected a request, got the end of {id:?} ({reason:?})"),
            None => panic!("the driver stopped"),
        }
    }

    async fn next_request(server: &mut Server) -> IncomingRequest {
        next_held(server).await.0
    }

    #[tokio::test]
    async fn con_get_gets_its_piggybacked_answer_after_respond() {
        let mut server = start(16).await;
        let client = client(&server).await;
        client.send(&[0x41, 0x01, 0x12, 0x34, 0x77, 0xb4, b't', b'e', b's', b't']).await.unwrap();
        let request = next_request(&mut server).await;
        assert_eq!(request.path, ["test"]);
        let response = Response { payload: b"ok".to_vec(), ..Response::default() };
        server.link.respond(request.id, response);
        assert_eq!(recv(&client).await, [0x61, 0x45, 0x12, 0x34, 0x77, 0xff, b'o', b'k']);
        let stats = server.link.stats().await.unwrap();
        assert_eq!((stats.received, stats.requests), (1, 1));
        server.trigger.fire();
        timeout(WAIT, server.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_full_request_queue_gets_5_03_with_max_age_1() {
        let mut server = start_with(1, true, Duration::from_secs(1)).await;
        let client = client(&server).await;
        client.send(&[0x40, 0x01, 0x00, 0x01, 0xb1, b'a']).await.unwrap();
        let (request, _, release) = next_held(&mut server).await;
        assert_eq!(request.path, ["a"]);
        client.send(&[0x40, 0x01, 0x00, 0x02, 0xb1, b'b']).await.unwrap();
        // 5.03, MID 2, Max-Age (option 14) = 1.
        assert_eq!(recv(&client).await, [0x60, 0xa3, 0x00, 0x02, 0xd1, 0x01, 0x01]);
        assert_eq!(server.link.stats().await.unwrap().busy_rejections, 1);
        // The waiting request still gets its own answer.
        release.unwrap().send(Response::default()).unwrap();
        assert_eq!(recv(&client).await, [0x60, 0x45, 0x00, 0x01]);
    }

    #[tokio::test]
    async fn shutdown_answers_what_is_in_flight_and_refuses_what_comes_after() {
        let mut server = start_with(16, true, Duration::from_secs(5)).await;
        let client = client(&server).await;
        client.send(&[0x40, 0x03, 0x00, 0x01, 0xb1, b'a']).await.unwrap();
        let (_, _, release) = next_held(&mut server).await;
        server.trigger.fire();
        // A request after the signal: 5.03 with the retry hint as Max-Age (7).
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(&[0x40, 0x03, 0x00, 0x02, 0xb1, b'b']).await.unwrap();
        let refused = recv(&client).await;
        assert_eq!(refused[..7], [0x60, 0xa3, 0x00, 0x02, 0xd1, 0x01, 0x07]);
        assert!(!server.task.is_finished(), "the driver waits for the request in progress");
        // The request in progress finishes within the drain time and gets its own answer.
        release.unwrap().send(Response { code: 0x44, ..Response::default() }).unwrap();
        assert_eq!(recv(&client).await, [0x60, 0x44, 0x00, 0x01]);
        timeout(WAIT, server.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn at_the_drain_deadline_what_is_left_gets_5_03() {
        let mut server = start_with(16, true, Duration::from_millis(300)).await;
        let client = client(&server).await;
        client.send(&[0x40, 0x03, 0x00, 0x01, 0xb1, b'a']).await.unwrap();
        let (_, _, _release) = next_held(&mut server).await;
        server.trigger.fire();
        let refused = recv(&client).await;
        assert_eq!(refused[..7], [0x60, 0xa3, 0x00, 0x01, 0xd1, 0x01, 0x07]);
        timeout(WAIT, server.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn observe_registration_returns_the_relation_and_notifications_arrive() {
        let mut server = start(16).await;
        let client = client(&server).await;
        // NON GET /t with token 0x05 and Observe=0.
        client.send(&[0x51, 0x01, 0x00, 0x09, 0x05, 0x60, 0x51, b't']).await.unwrap();
        let request = next_request(&mut server).await;
        let id = server.link.respond_observe(request.id, Response::default()).await.unwrap();
        let registered = recv(&client).await;
        assert_eq!(registered[1], 0x45);
        let notification = Notification { payload: b"n1".to_vec(), ..Notification::default() };
        server.link.notify(id, notification);
        let notified = recv(&client).await;
        assert_eq!(notified[0], 0x51, "NON with a 1-byte token");
        assert_eq!(notified[4], 0x05, "the registration token");
        assert!(notified.ends_with(&[0xff, b'n', b'1']));
        // An RST to the NON notification ends the relation.
        client.send(&[0x70, 0x00, notified[2], notified[3]]).await.unwrap();
        match timeout(WAIT, server.seen.recv()).await.unwrap() {
            Some(Seen::Gone(gone, reason)) => assert_eq!((gone, reason), (id, crate::coap::GoneReason::Reset)),
            _ => panic!("expected the relation's end"),
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
    async fn dropping_the_shutdown_trigger_stops_the_driver() {
        let server = start(1).await;
        drop(server.trigger);
        timeout(WAIT, server.task).await.unwrap().unwrap();
        assert_eq!(server.link.stats().await, None);
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
        let addr = server.addr;
        let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let notified = big.clone();
        tokio::spawn(async move {
            while let Some(seen) = server.seen.recv().await {
                let Seen::Request { request, link: handle, .. } = seen else { continue };
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
        let uri = format!("coap://127.0.0.1:{}/obs", addr.port());
        let args: Vec<String> = ["-s", "2", "-B", "3", "-o", &out, &uri].iter().map(|s| s.to_string()).collect();
        let run =
            tokio::task::spawn_blocking(move || coap_client(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let output = run.await.unwrap().unwrap();
        let received = std::fs::read(&out).unwrap();
        println!("{output:?}: {} bytes received", received.len());
        let mut expected = b"first;second;".to_vec();
        expected.extend_from_slice(&big);
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn libcoap_client_puts_and_gets_10_kb_block_wise() {
        if coap_client(&["-h"]).is_none() {
            println!("coap-client-notls not installed (Debian: libcoap3-bin); skipping the interop test");
            return;
        }
        let mut server = start(16).await;
        let link = server.link.clone();
        let addr = server.addr;
        tokio::spawn(async move {
            let mut stored = Vec::new();
            while let Some(seen) = server.seen.recv().await {
                let Seen::Request { request, link: handle, .. } = seen else { continue };
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
        let uri = format!("coap://127.0.0.1:{}/x", addr.port());
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
        let stats = link.stats().await.unwrap();
        println!("{stats:?}");
        assert_eq!(stats.requests, 2, "one PUT and one GET reached the app");
        assert!(stats.answered_locally > 150, "2.31s and cached blocks: {stats:?}");
    }
}
