//! Batched datagram I/O for the UDP driver: `recvmmsg(2)` and `sendmmsg(2)` move up to a
//! batch of datagrams per system call.
//!
//! Under load the driver finds dozens of datagrams waiting and has dozens of answers to send;
//! one system call per datagram was a measurable share of its CPU (BENCHMARKS.md). The
//! functions here are non-blocking: they return `WouldBlock` when nothing can move, and the
//! caller waits for readiness through tokio as with `try_recv_from`/`try_send_to`.
//!
//! This is the only place with `unsafe` in the transport: the two calls take arrays of raw
//! message headers pointing into buffers that the functions own or borrow for the call's
//! duration only.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{SockAddr, SockAddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::coap::Transmit;

/// Datagrams per `recvmmsg` call.
pub(crate) const RECV_BATCH: usize = 32;

/// Receive buffers for [`recv_batch`]: `RECV_BATCH` buffers of `size` bytes each.
pub(crate) struct RecvBuffers {
    bufs: Vec<Vec<u8>>,
    /// Bytes and sender of each datagram of the latest batch.
    got: Vec<(usize, SocketAddr)>,
}

impl RecvBuffers {
    /// Buffers of `size` bytes (the largest datagram taken whole; a longer one is truncated by
    /// the kernel and dropped here).
    pub(crate) fn new(size: usize) -> RecvBuffers {
        RecvBuffers { bufs: vec![vec![0; size]; RECV_BATCH], got: Vec::with_capacity(RECV_BATCH) }
    }

    /// The datagrams of the latest [`recv_batch`], in arrival order.
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.got.iter().zip(&self.bufs).map(|((len, peer), buf)| (*peer, buf.get(..*len).unwrap_or_default()))
    }
}

/// Receives up to [`RECV_BATCH`] waiting datagrams without blocking; returns how many
/// (`WouldBlock` when none waits). Truncated datagrams and senders that are not IP are
/// skipped.
pub(crate) fn recv_batch(socket: &UdpSocket, buffers: &mut RecvBuffers) -> io::Result<usize> {
    buffers.got.clear();
    socket.try_io(Interest::READABLE, || {
        let mut names: [SockAddrStorage; RECV_BATCH] = std::array::from_fn(|_| SockAddrStorage::zeroed());
        let mut bufs = buffers.bufs.iter_mut();
        let mut iovecs: [libc::iovec; RECV_BATCH] = std::array::from_fn(|_| match bufs.next() {
            Some(buf) => libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() },
            None => libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
        });
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) header.
        #[allow(unsafe_code)]
        let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for ((header, iovec), name) in headers.iter_mut().zip(iovecs.iter_mut()).zip(names.iter_mut()) {
            header.msg_hdr.msg_namelen = name.size_of();
            // SockAddrStorage is a transparent wrapper of the C sockaddr_storage.
            header.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live sockaddr_storage of the size it declares and at
        // one iovec over a live buffer of the length it declares, all of which outlive the
        // call; the kernel writes at most that much and reports the lengths in the headers.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (header, name) in headers.iter().zip(names).take(n) {
            // SAFETY: the kernel filled `msg_namelen` bytes of this (zeroed) sockaddr_storage.
            #[allow(unsafe_code)]
            let peer = unsafe { SockAddr::new(name, header.msg_hdr.msg_namelen) }.as_socket();
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            buffers.got.push(match (peer, truncated) {
                (Some(peer), false) => (header.msg_len as usize, peer),
                // Keeps the positions of the buffers; an empty datagram is ignored by the caller.
                _ => (0, SocketAddr::from(([0, 0, 0, 0], 0))),
            });
        }
        Ok(n)
    })
}

/// Sends as many of `batch` as the socket takes without blocking, in order; returns how many
/// went (`WouldBlock` when none). An error about the first datagram is returned as such, so
/// the caller can count it and go on with the next.
pub(crate) fn send_batch(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    match batch {
        [] => return Ok(0),
        // At low rates batches are single answers: a plain sendto, no header arrays.
        [one] => return socket.try_send_to(&one.bytes, one.peer).map(|_| 1),
        _ => {}
    }
    socket.try_io(Interest::WRITABLE, || {
        let names: Vec<SockAddr> = batch.iter().map(|t| SockAddr::from(t.peer)).collect();
        let mut iovecs: Vec<libc::iovec> = batch
            .iter()
            .map(|t| libc::iovec { iov_base: t.bytes.as_ptr().cast_mut().cast(), iov_len: t.bytes.len() })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = names
            .iter()
            .zip(iovecs.iter_mut())
            .map(|(name, iovec)| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) header.
                #[allow(unsafe_code)]
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
                header.msg_hdr.msg_namelen = name.len();
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        // SAFETY: every header points at a live socket address of the length it declares and at
        // one iovec over the bytes of a live datagram; the kernel only reads them (the iovec's
        // pointer is `*mut` by the C type only) and writes `msg_len`.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), headers.len() as libc::c_uint, libc::MSG_DONTWAIT)
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    })
}
