//! Transport tuning: the knobs of a QUIC endpoint (datagram sizes, path-MTU discovery, flow
//! control, congestion control, UDP socket buffers) as one typed, validated struct.
//!
//! Two profiles, chosen by the caller who knows the path:
//! - [`TransportTuning::lan`] (the default): safe on any network. Starts at QUIC's 1200-byte
//!   datagrams and lets path-MTU discovery climb to jumbo frames where the path carries them.
//! - [`TransportTuning::loopback`]: for peers on the same host (benchmarks, a local cluster).
//!   Starts at 64 KB datagrams; a path that drops them is detected as a black hole and the
//!   connection falls back to 1200 bytes, then rediscovers, so the profile is slow but never
//!   broken on a path that is not loopback.

use std::sync::Arc;
use std::time::Duration;

/// QUIC's minimum (and quinn's default) UDP payload size.
pub const MIN_UDP_PAYLOAD: u16 = 1200;
/// Largest UDP payload that fits loopback's 65536-byte MTU over both IPv4 and IPv6
/// (65536 − 40-byte IPv6 header − 8-byte UDP header).
pub const LOOPBACK_UDP_PAYLOAD: u16 = 65_488;
/// Largest UDP payload of a 9000-byte jumbo frame over IPv6 (9000 − 40 − 8).
pub const JUMBO_UDP_PAYLOAD: u16 = 8952;
/// Largest window accepted by [`TransportTuning::validate`]: 1 GiB.
pub const MAX_WINDOW_BYTES: u64 = 1 << 30;
/// Largest UDP socket buffer asked of the kernel: 256 MiB.
pub const MAX_SOCKET_BUFFER_BYTES: usize = 256 << 20;
/// Most packets a peer may be asked to receive per ACK it sends.
pub const MAX_ACK_EVERY_PACKETS: u32 = 256;
/// Most concurrent streams a peer may open, per direction.
pub const MAX_STREAMS: u32 = 1 << 16;

/// Which congestion controller a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), quinn's default.
    Cubic,
    /// BBR (experimental in quinn).
    Bbr,
    /// NewReno (RFC 9002).
    NewReno,
}

/// A tuning that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TuningError {
    /// The initial UDP payload size is outside 1200 ..= 65527.
    #[error("initial_mtu {initial_mtu} is outside {MIN_UDP_PAYLOAD}..=65527")]
    InitialMtu { initial_mtu: u16 },
    /// The discovery bound is below the size the connection starts at.
    #[error("mtu_upper_bound {mtu_upper_bound} is below initial_mtu {initial_mtu}")]
    MtuUpperBound {
        mtu_upper_bound: u16,
        initial_mtu: u16,
    },
    /// A window is zero or over [`MAX_WINDOW_BYTES`].
    #[error("{name} of {bytes} bytes is outside 1..={MAX_WINDOW_BYTES}")]
    Window { name: &'static str, bytes: u64 },
    /// A stream's window is larger than the connection's, so it could never be used.
    #[error(
        "stream_receive_window_bytes {stream_receive_window_bytes} exceeds receive_window_bytes {receive_window_bytes}"
    )]
    StreamOverConnection {
        stream_receive_window_bytes: u64,
        receive_window_bytes: u64,
    },
    /// The initial congestion window is below two datagrams or over the send window.
    #[error(
        "initial_window_bytes {initial_window_bytes} is outside 2×initial_mtu..=send_window_bytes ({send_window_bytes})"
    )]
    InitialWindow {
        initial_window_bytes: u64,
        send_window_bytes: u64,
    },
    /// A socket buffer size is over [`MAX_SOCKET_BUFFER_BYTES`].
    #[error("{name} of {bytes} bytes exceeds {MAX_SOCKET_BUFFER_BYTES}")]
    SocketBuffer { name: &'static str, bytes: usize },
    /// A stream limit is zero or over [`MAX_STREAMS`].
    #[error("max_concurrent_streams {streams} is outside 1..={MAX_STREAMS}")]
    Streams { streams: u32 },
    /// The ACK frequency asked of the peer is zero or over [`MAX_ACK_EVERY_PACKETS`].
    #[error("ack_every_packets {ack_every_packets} is outside 1..={MAX_ACK_EVERY_PACKETS}")]
    AckEvery { ack_every_packets: u32 },
    /// Keep-alives are not sent well inside the idle timeout.
    #[error(
        "keep_alive_ms {keep_alive_ms} must be below half of idle_timeout_ms {idle_timeout_ms}"
    )]
    KeepAlive {
        keep_alive_ms: u64,
        idle_timeout_ms: u64,
    },
}

/// Every knob of a Strata QUIC endpoint. Build one from a profile, change fields, then
/// [`validate`](Self::validate) (the endpoint constructors validate too).
#[derive(Debug, Clone, PartialEq)]
pub struct TransportTuning {
    /// UDP payload size a connection starts at after the handshake (the handshake itself uses
    /// 1200). Above the path's MTU, packets are lost until black-hole detection falls back to
    /// 1200 bytes.
    pub initial_mtu: u16,
    /// Largest UDP payload path-MTU discovery probes for; `None` turns discovery off (the
    /// connection stays at `initial_mtu`).
    pub mtu_upper_bound: Option<u16>,
    /// Flow-control window of one stream: how far a sender may run ahead of the reader.
    pub stream_receive_window_bytes: u64,
    /// Flow-control window of a whole connection.
    pub receive_window_bytes: u64,
    /// Unacknowledged bytes a connection buffers for sending, all streams together.
    pub send_window_bytes: u64,
    /// Congestion controller.
    pub congestion: CongestionControl,
    /// Congestion window a connection starts with.
    pub initial_window_bytes: u64,
    /// UDP send buffer asked of the kernel (0: the system default). The kernel may grant less
    /// (`net.core.wmem_max`); see [`crate::socket`].
    pub socket_send_buffer_bytes: usize,
    /// UDP receive buffer asked of the kernel (0: the system default). Datagrams that arrive
    /// while it is full are dropped, which congestion control reads as loss.
    pub socket_recv_buffer_bytes: usize,
    /// Let quinn batch datagrams into one send call (GSO) where the platform supports it.
    pub segmentation_offload: bool,
    /// Ask the peer to acknowledge only every this many ack-eliciting packets (QUIC's
    /// ACK-frequency extension; `None`: the peer's default of every other packet).
    pub ack_every_packets: Option<u32>,
    /// Streams a peer may have open at once, per direction.
    pub max_concurrent_streams: u32,
    /// Interval of keep-alive packets on an idle connection.
    pub keep_alive_ms: u64,
    /// A connection that hears nothing for this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self::lan()
    }
}

impl TransportTuning {
    /// Safe on any network: 1200-byte datagrams at first, path-MTU discovery up to jumbo frames,
    /// windows sized for bulk KV-block streams (quinn's defaults suit small messages).
    pub fn lan() -> Self {
        TransportTuning {
            initial_mtu: MIN_UDP_PAYLOAD,
            mtu_upper_bound: Some(JUMBO_UDP_PAYLOAD),
            stream_receive_window_bytes: 64 << 20,
            receive_window_bytes: 256 << 20,
            send_window_bytes: 256 << 20,
            congestion: CongestionControl::Cubic,
            initial_window_bytes: 14_720,
            socket_send_buffer_bytes: 4 << 20,
            socket_recv_buffer_bytes: 4 << 20,
            segmentation_offload: true,
            ack_every_packets: None,
            max_concurrent_streams: 1024,
            keep_alive_ms: 2_000,
            idle_timeout_ms: 10_000,
        }
    }

    /// For peers on one host: 64 KB datagrams from the start, a large initial congestion window
    /// and large socket buffers. Still correct on other paths (see the module doc), only slower
    /// to settle there.
    ///
    /// The connection window (6 MiB) is kept below the receive buffer the kernel grants with a
    /// stock `net.core.rmem_max` of 4 MiB (8 MiB, Linux doubles it): a sender on loopback is
    /// faster than its receiver, and a window larger than the socket buffer lets it overflow
    /// the buffer, which QUIC reads as congestion. Loopback's round trip is tens of
    /// microseconds, so 6 MiB in flight is far more than the path needs.
    pub fn loopback() -> Self {
        TransportTuning {
            initial_mtu: LOOPBACK_UDP_PAYLOAD,
            mtu_upper_bound: Some(LOOPBACK_UDP_PAYLOAD),
            stream_receive_window_bytes: 4 << 20,
            receive_window_bytes: 6 << 20,
            send_window_bytes: 6 << 20,
            initial_window_bytes: 4 << 20,
            socket_send_buffer_bytes: 16 << 20,
            socket_recv_buffer_bytes: 16 << 20,
            ..Self::lan()
        }
    }

    /// Checks that the tuning can work; each error carries the bad values.
    pub fn validate(&self) -> Result<(), TuningError> {
        if !(MIN_UDP_PAYLOAD..=65_527).contains(&self.initial_mtu) {
            return Err(TuningError::InitialMtu {
                initial_mtu: self.initial_mtu,
            });
        }
        if let Some(bound) = self.mtu_upper_bound
            && bound < self.initial_mtu
        {
            return Err(TuningError::MtuUpperBound {
                mtu_upper_bound: bound,
                initial_mtu: self.initial_mtu,
            });
        }
        for (name, bytes) in [
            (
                "stream_receive_window_bytes",
                self.stream_receive_window_bytes,
            ),
            ("receive_window_bytes", self.receive_window_bytes),
            ("send_window_bytes", self.send_window_bytes),
        ] {
            if bytes == 0 || bytes > MAX_WINDOW_BYTES {
                return Err(TuningError::Window { name, bytes });
            }
        }
        if self.stream_receive_window_bytes > self.receive_window_bytes {
            return Err(TuningError::StreamOverConnection {
                stream_receive_window_bytes: self.stream_receive_window_bytes,
                receive_window_bytes: self.receive_window_bytes,
            });
        }
        if self.initial_window_bytes < 2 * u64::from(MIN_UDP_PAYLOAD)
            || self.initial_window_bytes > self.send_window_bytes
        {
            return Err(TuningError::InitialWindow {
                initial_window_bytes: self.initial_window_bytes,
                send_window_bytes: self.send_window_bytes,
            });
        }
        for (name, bytes) in [
            ("socket_send_buffer_bytes", self.socket_send_buffer_bytes),
            ("socket_recv_buffer_bytes", self.socket_recv_buffer_bytes),
        ] {
            if bytes > MAX_SOCKET_BUFFER_BYTES {
                return Err(TuningError::SocketBuffer { name, bytes });
            }
        }
        if self.max_concurrent_streams == 0 || self.max_concurrent_streams > MAX_STREAMS {
            return Err(TuningError::Streams {
                streams: self.max_concurrent_streams,
            });
        }
        if let Some(n) = self.ack_every_packets
            && !(1..=MAX_ACK_EVERY_PACKETS).contains(&n)
        {
            return Err(TuningError::AckEvery {
                ack_every_packets: n,
            });
        }
        if self.keep_alive_ms == 0 || self.keep_alive_ms.saturating_mul(2) >= self.idle_timeout_ms {
            return Err(TuningError::KeepAlive {
                keep_alive_ms: self.keep_alive_ms,
                idle_timeout_ms: self.idle_timeout_ms,
            });
        }
        Ok(())
    }

    /// quinn's transport configuration for this tuning. Call [`validate`](Self::validate)
    /// first: out-of-range values are clamped here, not reported.
    pub fn transport_config(&self) -> Arc<quinn::TransportConfig> {
        let window = |bytes: u64| {
            quinn::VarInt::from_u64(bytes.min(MAX_WINDOW_BYTES)).unwrap_or(quinn::VarInt::MAX)
        };
        let streams = quinn::VarInt::from_u32(self.max_concurrent_streams.min(MAX_STREAMS));
        let mut t = quinn::TransportConfig::default();
        t.initial_mtu(self.initial_mtu)
            .mtu_discovery_config(self.mtu_upper_bound.map(|bound| {
                let mut d = quinn::MtuDiscoveryConfig::default();
                d.upper_bound(bound);
                d
            }))
            .stream_receive_window(window(self.stream_receive_window_bytes))
            .receive_window(window(self.receive_window_bytes))
            .send_window(self.send_window_bytes.min(MAX_WINDOW_BYTES))
            .max_concurrent_bidi_streams(streams)
            .max_concurrent_uni_streams(streams)
            .enable_segmentation_offload(self.segmentation_offload)
            .ack_frequency_config(self.ack_every_packets.map(|n| {
                let mut a = quinn::AckFrequencyConfig::default();
                a.ack_eliciting_threshold(quinn::VarInt::from_u32(n.saturating_sub(1)));
                a
            }))
            .keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)))
            .congestion_controller_factory(self.congestion_factory());
        if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
        {
            t.max_idle_timeout(Some(idle));
        }
        Arc::new(t)
    }

    /// Largest UDP payload this endpoint sends or accepts: the larger of `initial_mtu` and the
    /// discovery bound. quinn sizes its receive buffers by it and announces it to peers.
    pub fn max_udp_payload(&self) -> u16 {
        self.initial_mtu
            .max(self.mtu_upper_bound.unwrap_or(MIN_UDP_PAYLOAD))
            .clamp(MIN_UDP_PAYLOAD, 65_527)
    }

    /// quinn's endpoint configuration for this tuning.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut e = quinn::EndpointConfig::default();
        // max_udp_payload() is clamped to 1200..=65527, the range this setter accepts, so it
        // cannot fail; the default (1472) stands if it ever did.
        let _ = e.max_udp_payload_size(self.max_udp_payload());
        e
    }

    fn congestion_factory(&self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        let window = self.initial_window_bytes;
        match self.congestion {
            CongestionControl::Cubic => {
                let mut c = quinn::congestion::CubicConfig::default();
                c.initial_window(window);
                Arc::new(c)
            }
            CongestionControl::Bbr => {
                let mut c = quinn::congestion::BbrConfig::default();
                c.initial_window(window);
                Arc::new(c)
            }
            CongestionControl::NewReno => {
                let mut c = quinn::congestion::NewRenoConfig::default();
                c.initial_window(window);
                Arc::new(c)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid() {
        TransportTuning::lan().validate().unwrap();
        TransportTuning::loopback().validate().unwrap();
        assert_eq!(TransportTuning::default(), TransportTuning::lan());
    }

    #[test]
    fn bad_values_are_named() {
        let t = TransportTuning {
            initial_mtu: 900,
            ..TransportTuning::lan()
        };
        assert_eq!(
            t.validate(),
            Err(TuningError::InitialMtu { initial_mtu: 900 })
        );
        let t = TransportTuning {
            initial_mtu: 9000,
            mtu_upper_bound: Some(1452),
            ..TransportTuning::lan()
        };
        assert!(matches!(
            t.validate(),
            Err(TuningError::MtuUpperBound { .. })
        ));
        let t = TransportTuning {
            stream_receive_window_bytes: 512 << 20,
            ..TransportTuning::lan()
        };
        assert!(matches!(
            t.validate(),
            Err(TuningError::StreamOverConnection { .. })
        ));
        let t = TransportTuning {
            send_window_bytes: 0,
            ..TransportTuning::lan()
        };
        assert!(matches!(
            t.validate(),
            Err(TuningError::Window {
                name: "send_window_bytes",
                ..
            })
        ));
        let t = TransportTuning {
            keep_alive_ms: 6_000,
            ..TransportTuning::lan()
        };
        assert!(matches!(t.validate(), Err(TuningError::KeepAlive { .. })));
        let t = TransportTuning {
            max_concurrent_streams: 0,
            ..TransportTuning::lan()
        };
        assert!(matches!(t.validate(), Err(TuningError::Streams { .. })));
    }
}
