//! UDP sockets for QUIC endpoints, with the send and receive buffers a tuning asks for.
//!
//! Loopback and fast LANs drop datagrams when the receiver's socket buffer fills (Linux's
//! default is about 208 KiB, three 64 KB datagrams), and QUIC reads every drop as congestion.
//! The kernel caps what an unprivileged process gets at `net.core.rmem_max` / `wmem_max`; the
//! sizes granted are reported so callers can log them.
//!
//! [`GsoCapped`] keeps quinn's segmentation-offload batches under the kernel's limit: quinn
//! (0.11) builds batches of up to 10 datagrams of the current MTU, and a batch over 64 KiB
//! fails in `sendmsg` (`EMSGSIZE`), which quinn counts as loss. With datagrams over ~6.5 KB
//! (jumbo frames, loopback) every batch would be lost and black-hole detection would drop the
//! connection to 1200-byte datagrams.

use crate::tuning::TransportTuning;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Largest UDP payload of one segmentation-offload batch: the IP length field (65535) less an
/// IPv6 header (40) and a UDP header (8).
pub const MAX_GSO_BATCH_BYTES: usize = 65_487;

/// A socket that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Creating, configuring or binding the socket failed.
    #[error("UDP socket on {addr}: {step}: {source}")]
    Io {
        addr: SocketAddr,
        step: &'static str,
        source: std::io::Error,
    },
}

/// Buffer sizes the kernel granted (Linux reports twice what it stores for its bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    pub send_bytes: usize,
    pub recv_bytes: usize,
}

/// Binds a UDP socket on `addr` with the buffers of `tuning` (best effort: the kernel may grant
/// less, which is not an error).
pub fn bind_udp(
    addr: SocketAddr,
    tuning: &TransportTuning,
) -> Result<(std::net::UdpSocket, SocketBuffers), SocketError> {
    let io = |step: &'static str| move |source| SocketError::Io { addr, step, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("create"))?;
    if addr.is_ipv6() {
        // Dual-stack where the platform allows it; a v6-only socket still works for v6 peers.
        let _ = socket.set_only_v6(false);
    }
    if tuning.socket_send_buffer_bytes > 0 {
        socket
            .set_send_buffer_size(tuning.socket_send_buffer_bytes)
            .map_err(io("SO_SNDBUF"))?;
    }
    if tuning.socket_recv_buffer_bytes > 0 {
        socket
            .set_recv_buffer_size(tuning.socket_recv_buffer_bytes)
            .map_err(io("SO_RCVBUF"))?;
    }
    socket.bind(&addr.into()).map_err(io("bind"))?;
    let buffers = SocketBuffers {
        send_bytes: socket.send_buffer_size().map_err(io("get SO_SNDBUF"))?,
        recv_bytes: socket.recv_buffer_size().map_err(io("get SO_RCVBUF"))?,
    };
    Ok((socket.into(), buffers))
}

/// A quinn socket whose segmentation-offload batches never pass [`MAX_GSO_BATCH_BYTES`], given
/// the largest datagram the endpoint may send.
pub struct GsoCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl GsoCapped {
    /// Wraps `inner` for an endpoint whose datagrams are at most `max_udp_payload` bytes.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, max_udp_payload: u16) -> Self {
        let max_segments = (MAX_GSO_BATCH_BYTES / usize::from(max_udp_payload.max(1))).max(1);
        GsoCapped {
            inner,
            max_segments,
        }
    }
}

impl fmt::Debug for GsoCapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoCapped")
            .field("inner", &self.inner)
            .field("max_segments", &self.max_segments)
            .finish()
    }
}

impl AsyncUdpSocket for GsoCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max_segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_at_least_the_default_buffers() {
        let (socket, buffers) =
            bind_udp("127.0.0.1:0".parse().unwrap(), &TransportTuning::loopback()).unwrap();
        assert_ne!(socket.local_addr().unwrap().port(), 0);
        assert!(buffers.recv_bytes > 0 && buffers.send_bytes > 0);
    }
}
