//! The DTLS driver (coaps): DTLS 1.2 with webrtc-dtls, pre-shared keys and X.509 certificates
//! (one-way or mutual) on one port, and a CoAP [`Endpoint`](crate::coap::Endpoint) of its own.
//!
//! ```text
//!  socket ─▶ listener (one task: demultiplexes datagrams by peer; a new peer must open
//!            │          with a ClientHello, else it leaves no trace)
//!            ├─▶ session task per peer: handshake (bounded in number and time), then
//!            │   decrypt ─▶ driver, driver ─▶ encrypt; ends when idle
//!            ▼
//!  driver (one task: owns the endpoint, runs the UDP driver's loop) ─▶ the service, each
//!          request with the identity its session proved
//! ```
//!
//! webrtc-dtls needs four fixes (research §2.4), all here: the rustls crypto provider is
//! installed before the first handshake; the cipher suites are listed explicitly (its default
//! list has no PSK and no CCM suites); each handshake runs in its own task under a timeout,
//! so a stalled ClientHello delays nobody; and since one webrtc-dtls configuration cannot hold
//! both a PSK and a certificate, the listener picks one per peer from the suites its
//! ClientHello offers.

pub mod certs;
mod conn;
mod driver;
pub mod hello;
mod listener;
pub mod psk;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{ClientAuthType, Config as WebrtcConfig};

use super::{Link, Serving};
use crate::coap::EndpointConfig;
use crate::config::{DtlsConfig, Verify};
use crate::shutdown::Shutdown;

/// The PSK suites offered: CCM_8 (RFC 7252's mandatory suite), CCM and GCM.
const PSK_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
];

/// The certificate suites offered: ECDHE_ECDSA with CCM_8 (RFC 7252's mandatory suite), CCM
/// and GCM.
const CERT_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
];

/// Looks up the key of a PSK identity during a handshake.
type PskCallback = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, webrtc_dtls::Error> + Send + Sync>;

/// A DTLS listener's settings, built from the `dtls:` section (keys loaded, files read).
#[derive(Clone)]
pub struct Settings {
    /// Where to listen.
    pub bind: SocketAddr,
    /// webrtc-dtls's configuration for PSK clients, if PSK is on.
    psk: Option<WebrtcConfig>,
    /// webrtc-dtls's configuration for certificate clients, if a certificate is configured.
    cert: Option<WebrtcConfig>,
    /// The longest a handshake may take.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; a ClientHello beyond it is dropped (the client retries).
    pub max_handshakes: usize,
    /// Peers (handshaking or established) at once.
    pub max_sessions: usize,
    /// A session with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Where handshakes, sessions and drops are counted (the admin API's).
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The socket's kernel buffers, in bytes (`coap.socket_buffer`).
    pub socket_buffer: usize,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("psk", &self.psk.is_some())
            .field("cert", &self.cert.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_sessions", &self.max_sessions)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Settings {
    /// Loads the keys and certificates a `dtls:` section names (for `run` and `sluice check`
    /// alike); the PSK file is watched and reloaded until `shutdown`. The error names the key
    /// and the fix.
    pub fn from_config(section: &DtlsConfig, shutdown: watch::Receiver<bool>) -> Result<Settings, SettingsError> {
        // Which keys go together is the config's own check (one source of each message).
        let mut inconsistent = None;
        section.validate(&mut |key, message| {
            inconsistent.get_or_insert(SettingsError { key: key.to_string(), message });
        });
        if let Some(error) = inconsistent {
            return Err(error);
        }
        let psk = match &section.psk_file {
            Some(path) => {
                let store =
                    psk::Store::watch(path.clone(), shutdown).map_err(|m| SettingsError::new("dtls.psk_file", m))?;
                // An unknown identity gets a random key, so that its handshake fails exactly like
                // a wrong key's (RFC 4279 §2): a client cannot probe which identities exist.
                let psk: PskCallback = Arc::new(move |identity: &[u8]| match store.key(identity) {
                    Some(key) => Ok(key.bytes().to_vec()),
                    None => {
                        tracing::info!(identity = %String::from_utf8_lossy(identity), "Unknown PSK identity.");
                        Ok(rand::random::<[u8; 16]>().to_vec())
                    }
                });
                Some(WebrtcConfig {
                    psk: Some(psk),
                    psk_identity_hint: section.psk_identity_hint.as_ref().map(|h| h.as_bytes().to_vec()),
                    cipher_suites: PSK_SUITES.to_vec(),
                    ..WebrtcConfig::default()
                })
            }
            None => None,
        };
        let cert = match (&section.cert_file, &section.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let identity = certs::load_identity(cert_file, key_file).map_err(|message| {
                    let names_key = message.contains(&key_file.display().to_string());
                    SettingsError::new(if names_key { "dtls.key_file" } else { "dtls.cert_file" }, message)
                })?;
                let (client_auth, client_cas) = match (&section.verify, &section.ca_file) {
                    (Verify::None, _) => (ClientAuthType::NoClientCert, rustls::RootCertStore::empty()),
                    (Verify::Peer, Some(ca)) => {
                        let auth = if section.fail_if_no_peer_cert {
                            ClientAuthType::RequireAndVerifyClientCert
                        } else {
                            ClientAuthType::VerifyClientCertIfGiven
                        };
                        (auth, certs::load_roots(ca).map_err(|m| SettingsError::new("dtls.ca_file", m))?)
                    }
                    (Verify::Peer, None) => unreachable!("refused by DtlsConfig::validate above"),
                };
                Some(WebrtcConfig {
                    certificates: vec![identity],
                    cipher_suites: CERT_SUITES.to_vec(),
                    client_auth,
                    client_cas,
                    ..WebrtcConfig::default()
                })
            }
            // A key without its certificate (or the reverse) was refused by the check above.
            _ => None,
        };
        if psk.is_none() && cert.is_none() {
            let message = "no credentials; set dtls.psk_file, or dtls.cert_file and dtls.key_file";
            return Err(SettingsError::new("dtls.psk_file", message));
        }
        Ok(Settings {
            bind: section.bind,
            psk,
            cert,
            handshake_timeout: section.handshake_timeout,
            max_handshakes: section.max_handshakes,
            max_sessions: section.max_sessions,
            idle_timeout: section.idle_timeout,
            metrics: Arc::default(),
            socket_buffer: 4 << 20,
        })
    }

    /// The webrtc-dtls configuration for a client whose ClientHello offers `hello`.
    fn config_for(&self, hello: &hello::ClientHello) -> Option<WebrtcConfig> {
        match (&self.psk, &self.cert) {
            (Some(psk), Some(cert)) => {
                let certificates = hello.offers_certificates() && (!hello.offers_psk() || prefers_certificates(hello));
                Some(if certificates { cert.clone() } else { psk.clone() })
            }
            (Some(only), None) | (None, Some(only)) => Some(only.clone()),
            (None, None) => None,
        }
    }
}

/// A `dtls:` key whose value cannot be used, and why (naming the fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// The dotted key (`dtls.cert_file`).
    pub key: String,
    /// What is wrong and the fix.
    pub message: String,
}

impl SettingsError {
    fn new(key: &str, message: impl Into<String>) -> SettingsError {
        SettingsError { key: key.to_string(), message: message.into() }
    }
}

/// With both kinds offered, the client's first preference decides.
fn prefers_certificates(hello: &hello::ClientHello) -> bool {
    let cert = hello.suites.iter().position(|s| CERT_SUITES.iter().any(|c| *c as u16 == *s));
    let psk = hello.suites.iter().position(|s| PSK_SUITES.iter().any(|c| *c as u16 == *s));
    matches!((cert, psk), (Some(c), Some(p)) if c < p)
}

/// Binds `settings.bind` (port 0 picks one) and spawns the listener and the driver.
///
/// Returns the bound address, the driver's [`Link`] and task, which ends when `shutdown` has
/// fired and the requests in progress are answered. Meanwhile established sessions keep
/// carrying requests and answers (new handshakes are refused once `shutdown` fired); the
/// listener and the sessions end with the driver. Only a failed bind is an error.
pub async fn bind(
    settings: Settings,
    config: EndpointConfig,
    serving: Serving,
    shutdown: Shutdown,
) -> io::Result<(SocketAddr, Link, JoinHandle<()>)> {
    // rustls (used by webrtc-dtls to verify certificates) needs a process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let socket = Arc::new(super::udp::open(settings.bind, settings.socket_buffer, false)?);
    let local = socket.local_addr()?;
    let (inbound_tx, inbound) = mpsc::channel(4096);
    // A DTLS session is verified by its handshake (the cookie exchange proves the client
    // receives at its address), so no Echo round trip is needed for large answers.
    let config = EndpointConfig { amplification_factor: 0, ..config };
    let (link, task) = driver::spawn(config, inbound, serving, shutdown.clone());
    listener::spawn(socket, Arc::new(settings), inbound_tx, shutdown.watch());
    tracing::info!(%local, "CoAP listening on DTLS.");
    Ok((local, link, task))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use tokio::net::UdpSocket;
    use tokio::time::timeout;
    use webrtc_dtls::conn::DTLSConn;
    use webrtc_util::conn::Conn;

    use super::*;
    use crate::coap::Response;
    use crate::transport::testing::{Forward, Seen};

    const WAIT: Duration = Duration::from_secs(5);

    /// A client socket that can go silent, like a device that loses power.
    struct Muted {
        socket: Arc<UdpSocket>,
        mute: AtomicBool,
    }

    #[async_trait]
    impl Conn for Muted {
        async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
            Ok(self.socket.connect(addr).await?)
        }
        async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
            Ok(self.socket.recv(buf).await?)
        }
        async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
            Ok(self.socket.recv_from(buf).await?)
        }
        async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
            if self.mute.load(Ordering::Relaxed) {
                return Ok(buf.len());
            }
            Ok(self.socket.send(buf).await?)
        }
        async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
            if self.mute.load(Ordering::Relaxed) {
                return Ok(buf.len());
            }
            Ok(self.socket.send_to(buf, target).await?)
        }
        fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
            Ok(self.socket.local_addr()?)
        }
        fn remote_addr(&self) -> Option<SocketAddr> {
            self.socket.peer_addr().ok()
        }
        async fn close(&self) -> webrtc_util::Result<()> {
            Ok(())
        }
        fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
            self
        }
    }

    struct Server {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Seen>,
        _shutdown: crate::shutdown::Trigger,
        _dir: tempfile::TempDir,
    }

    async fn start(idle_timeout: Duration) -> Server {
        start_with(idle_timeout, 100).await
    }

    async fn start_with(idle_timeout: Duration, max_sessions: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let psk_file = dir.path().join("psk.txt");
        std::fs::write(&psk_file, "dev1:secretkey1\n").unwrap();
        let section = crate::config::DtlsConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            psk_file: Some(psk_file),
            idle_timeout,
            max_sessions,
            ..crate::config::DtlsConfig::default()
        };
        let (trigger, shutdown) = crate::shutdown::channel();
        let settings = Settings::from_config(&section, shutdown.watch()).unwrap();
        let (service, seen) = Forward::new(false);
        let serving = Serving {
            service: Arc::new(service),
            request_queue: 16,
            drain_timeout: Duration::from_secs(1),
            retry_after: 1,
        };
        let (addr, link, _task) = bind(settings, EndpointConfig::default(), serving, shutdown).await.unwrap();
        assert_eq!(link.transport(), crate::telemetry::Transport::Dtls);
        Server { addr, seen, _shutdown: trigger, _dir: dir }
    }

    async fn handshake(conn: Arc<Muted>) -> DTLSConn {
        try_handshake(conn, WAIT).await.unwrap()
    }

    async fn try_handshake(conn: Arc<Muted>, within: Duration) -> Option<DTLSConn> {
        let config = WebrtcConfig {
            psk: Some(Arc::new(|_: &[u8]| Ok(b"secretkey1".to_vec()))),
            psk_identity_hint: Some(b"dev1".to_vec()),
            cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
            ..WebrtcConfig::default()
        };
        timeout(within, DTLSConn::new(conn, config, true, None)).await.ok().and_then(Result::ok)
    }

    async fn muted(server: &Server) -> Arc<Muted> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        socket.connect(server.addr).await.unwrap();
        Arc::new(Muted { socket, mute: AtomicBool::new(false) })
    }

    /// A CON GET /a with Message-ID `mid` answered 2.05 through its link; returns the
    /// request's identity.
    async fn exchange(server: &mut Server, client: &DTLSConn, mid: u8) -> Option<Arc<sluice_sdk::Identity>> {
        client.write(&[0x40, 0x01, 0x00, mid, 0xb1, b'a'], None).await.unwrap();
        let Some(Seen::Request { request, link, .. }) = timeout(WAIT, server.seen.recv()).await.unwrap() else {
            panic!("expected a request");
        };
        link.respond(request.id, Response::default());
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf, Some(WAIT)).await.unwrap();
        assert_eq!(&buf[..n], [0x60, 0x45, 0x00, mid]);
        request.identity
    }

    #[tokio::test]
    async fn a_device_that_restarts_on_the_same_port_handshakes_again() {
        let mut server = start(Duration::from_secs(60)).await;
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        socket.connect(server.addr).await.unwrap();
        let first = Arc::new(Muted { socket: socket.clone(), mute: AtomicBool::new(false) });
        let client = handshake(first.clone()).await;
        let identity = exchange(&mut server, &client, 1).await.unwrap();
        assert_eq!(identity.psk_identity.as_deref(), Some("dev1"));
        // The device loses its state without a word, and starts over from the same port.
        first.mute.store(true, Ordering::Relaxed);
        let _ = client.close().await;
        drop(client);
        let second = Arc::new(Muted { socket, mute: AtomicBool::new(false) });
        let client = handshake(second).await;
        exchange(&mut server, &client, 2).await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_session_is_closed() {
        let mut server = start(Duration::from_millis(300)).await;
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        socket.connect(server.addr).await.unwrap();
        let client = handshake(Arc::new(Muted { socket, mute: AtomicBool::new(false) })).await;
        exchange(&mut server, &client, 1).await;
        let mut buf = [0u8; 64];
        let closed = client.read(&mut buf, Some(WAIT)).await;
        assert!(
            matches!(closed, Err(ref e) if !matches!(e, webrtc_dtls::Error::ErrDeadlineExceeded)),
            "expected close_notify, got {closed:?}"
        );
    }

    #[tokio::test]
    async fn sessions_beyond_the_limit_wait_for_a_free_one() {
        let mut server = start_with(Duration::from_secs(60), 1).await;
        let first = handshake(muted(&server).await).await;
        exchange(&mut server, &first, 1).await;
        assert!(try_handshake(muted(&server).await, Duration::from_millis(800)).await.is_none());
        first.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = handshake(muted(&server).await).await;
        exchange(&mut server, &second, 2).await;
    }
}
