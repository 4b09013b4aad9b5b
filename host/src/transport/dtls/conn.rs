//! One peer's datagrams as a webrtc-util `Conn`: what the listener demultiplexed for this
//! peer comes in through a channel, and what webrtc-dtls writes goes out of the shared socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};
use webrtc_util::conn::Conn;

/// A peer's view of the shared socket.
pub(super) struct PeerConn {
    pub(super) socket: Arc<UdpSocket>,
    pub(super) peer: SocketAddr,
    pub(super) incoming: Mutex<mpsc::Receiver<Vec<u8>>>,
    /// Set when the listener let go of this peer (a new session from the same address took
    /// its place): nothing more is sent, not even a close_notify under the old keys, which
    /// would end the new session of some clients.
    pub(super) detached: AtomicBool,
    /// Datagrams handed to webrtc-dtls so far.
    pub(super) received: AtomicUsize,
}

impl PeerConn {
    async fn next(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let Some(datagram) = self.incoming.lock().await.recv().await else {
            self.detached.store(true, Ordering::Relaxed);
            return Err(webrtc_util::Error::ErrUseClosedNetworkConn);
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }
}

#[async_trait]
impl Conn for PeerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.next(buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.next(buf).await?, self.peer))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        if self.detached.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, self.peer).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.detached.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.incoming.lock().await.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
