//! The caller side: [`QuicNetworkFactory`] makes one [`QuicNetwork`] per target; all share one
//! connection pool, so each target has one QUIC connection, reused, and each RPC its own
//! stream.

use super::{MAX_RAFT_FRAME_BYTES, RpcKind, WireError};
use crate::store::{NodeId, TypeConfig};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use strata_transport::pool::{ConnectionPool, PeerKey, PoolConfig, PoolConfigError};
use strata_transport::proto::Message;
use strata_transport::stream::StreamError;
use strata_transport::tls::SERVER_NAME;

/// Limits of the caller side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// A connection attempt (handshake included) that takes longer fails; the RPC's own
    /// `hard_ttl` bounds it further.
    pub connect_timeout_ms: u64,
    /// Targets with a connection at once.
    pub max_peers: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            connect_timeout_ms: 2_000,
            max_peers: 16,
        }
    }
}

/// openraft's network factory over a QUIC endpoint that presents this member's identity.
#[derive(Clone, Debug)]
pub struct QuicNetworkFactory {
    pool: Arc<ConnectionPool>,
}

impl QuicNetworkFactory {
    /// Calls out through `endpoint` (made with [`Identity::endpoint`]; it may also serve).
    ///
    /// [`Identity::endpoint`]: strata_transport::tls::Identity::endpoint
    pub fn new(endpoint: quinn::Endpoint, config: &NetworkConfig) -> Result<Self, PoolConfigError> {
        let pool = ConnectionPool::new(
            endpoint,
            PoolConfig {
                connect_timeout_ms: config.connect_timeout_ms,
                open_timeout_ms: config.connect_timeout_ms,
                max_peers: config.max_peers,
                max_frame_bytes: MAX_RAFT_FRAME_BYTES,
            },
        )?;
        Ok(QuicNetworkFactory {
            pool: Arc::new(pool),
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetworkFactory {
    type Network = QuicNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> QuicNetwork {
        QuicNetwork {
            pool: self.pool.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The RPCs to one target.
#[derive(Debug)]
pub struct QuicNetwork {
    pool: Arc<ConnectionPool>,
    target: NodeId,
    /// `BasicNode.addr`, parsed on each call so a bad address is reported, not a panic.
    addr: String,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl QuicNetwork {
    /// One RPC: a stream, one request frame, one answer frame, all within `option.hard_ttl()`.
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let out = match tokio::time::timeout(ttl, self.exchange(kind, req)).await {
            Ok(r) => r,
            Err(_) => {
                // A peer that restarted on the same address leaves a connection that looks
                // open and answers nothing until QUIC's idle timeout: drop it, so the next
                // RPC connects afresh.
                if let Ok(addr) = self.addr.parse() {
                    self.pool
                        .close(&PeerKey::new(SERVER_NAME, addr), 0, b"rpc timed out");
                }
                Err(WireError::Timeout {
                    after_ms: ttl.as_millis() as u64,
                })
            }
        };
        let answer: Result<Resp, RaftError<NodeId, E>> = match out {
            Ok(body) => serde_json::from_slice(&body)
                .map_err(|e| RPCError::Network(NetworkError::new(&WireError::from(e))))?,
            // No connection, a connection lost (a refused certificate shows here: TLS 1.3
            // checks the client's certificate after the client's side is done), or no answer
            // in time: openraft backs off before trying again.
            Err(
                e @ (WireError::Unreachable(_)
                | WireError::BadAddress { .. }
                | WireError::Timeout { .. }
                | WireError::Stream(StreamError::ConnectionLost(_))),
            ) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn exchange<Req: Serialize>(
        &self,
        kind: RpcKind,
        req: &Req,
    ) -> Result<Vec<u8>, WireError> {
        let addr: SocketAddr = self.addr.parse().map_err(|_| WireError::BadAddress {
            addr: self.addr.clone(),
        })?;
        exchange(&self.pool, addr, kind, serde_json::to_vec(req)?).await
    }
}

/// One request frame of `kind` on a fresh stream to `addr`, and its one answer frame's body.
pub(crate) async fn exchange(
    pool: &ConnectionPool,
    addr: SocketAddr,
    kind: RpcKind,
    body: Vec<u8>,
) -> Result<Vec<u8>, WireError> {
    let peer = PeerKey::new(SERVER_NAME, addr);
    let (mut send, mut recv) = pool.open_bi(&peer).await?;
    send.send(&Message::Raft {
        kind: kind as u8,
        body,
    })
    .await?;
    send.finish()?;
    match recv.recv().await? {
        Some(Message::Raft { kind: k, body }) if k == kind as u8 => Ok(body),
        Some(other) => Err(WireError::Unexpected {
            what: format!("{} (kind {:?})", other.kind(), kind),
        }),
        None => Err(WireError::Unexpected {
            what: "stream finished without an answer".to_owned(),
        }),
    }
}

impl RaftNetwork<TypeConfig> for QuicNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(RpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}
