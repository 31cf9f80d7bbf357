//! openraft's network over the transport crate's QUIC endpoints with mutual TLS: the caller side
//! ([`QuicNetworkFactory`], one [`QuicNetwork`] per target) and the callee side
//! ([`serve_raft`]).
//!
//! One stream per RPC: the caller sends one [`Message::Raft`] frame with the RPC's [`RpcKind`]
//! and the request as serde JSON (openraft's types are serde, not rkyv), and finishes; the
//! callee answers one `Raft` frame of the same kind holding `Result<response, RaftError>` as
//! JSON, and finishes. The outer frame is an rkyv archive validated like every other frame.
//! A bad frame or body ends that stream only.
//!
//! [`Message::Raft`]: strata_transport::proto::Message::Raft

mod client;
mod server;

pub(crate) use client::exchange;
pub use client::{NetworkConfig, QuicNetwork, QuicNetworkFactory};
pub use server::serve_raft;

/// The largest Raft frame either side accepts: a snapshot chunk (openraft's default is
/// 3 MiB) as JSON, with room to spare.
pub const MAX_RAFT_FRAME_BYTES: usize = 64 << 20;

/// Which RPC a `Raft` frame carries; the frame's `kind` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RpcKind {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
    /// A control request ([`crate::api::Envelope`]) and its [`crate::api::ControlAnswer`].
    Control = 4,
}

impl RpcKind {
    /// The kind of a received `kind` byte, if it names one.
    pub fn from_u8(kind: u8) -> Option<RpcKind> {
        match kind {
            1 => Some(RpcKind::AppendEntries),
            2 => Some(RpcKind::Vote),
            3 => Some(RpcKind::InstallSnapshot),
            4 => Some(RpcKind::Control),
            _ => None,
        }
    }
}

/// Why one RPC failed on the wire (the caller maps these onto openraft's `RPCError`).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No connection or no stream to the target.
    #[error("unreachable: {0}")]
    Unreachable(#[from] strata_transport::pool::PoolError),
    /// The target's address is not a socket address.
    #[error("bad address {addr:?}")]
    BadAddress { addr: String },
    /// The stream failed after it was opened.
    #[error("stream: {0}")]
    Stream(#[from] strata_transport::stream::StreamError),
    /// A body did not encode or decode.
    #[error("body: {0}")]
    Codec(#[from] serde_json::Error),
    /// The peer finished the stream without answering, or answered another kind.
    #[error("unexpected answer: {what}")]
    Unexpected { what: String },
    /// No answer within the RPC's time limit.
    #[error("no answer within {after_ms} ms")]
    Timeout { after_ms: u64 },
}
