//! The caller side of the control API: one stream per request to a replica's control address,
//! over a pooled, mutually authenticated QUIC connection.

use crate::api::{ControlAnswer, ControlError, ControlReply, ControlRequest, Envelope};
use crate::network::{MAX_RAFT_FRAME_BYTES, RpcKind, WireError, exchange};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_transport::pool::{ConnectionPool, PeerKey, PoolConfig, PoolConfigError};
use strata_transport::tls::{Identity, SERVER_NAME};

/// A client that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Its endpoint could not be made with the identity.
    #[error(transparent)]
    Tls(#[from] strata_transport::tls::TlsError),
    #[error(transparent)]
    Pool(#[from] PoolConfigError),
}

/// A request that got no answer, or an error answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The replica could not be reached or did not answer in time.
    #[error("{addr}: {source}")]
    Wire {
        addr: SocketAddr,
        #[source]
        source: WireError,
    },
    /// The replica answered with an error.
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl CallError {
    /// Worth trying again shortly (this replica or another).
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Wire { .. } => true,
            CallError::Control(e) => e.is_transient(),
        }
    }
}

/// See the module doc. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct ControlClient {
    pool: Arc<ConnectionPool>,
    timeout: Duration,
}

impl ControlClient {
    /// Calls out through `endpoint` (it presents the caller's certificate); each request,
    /// connecting included, must be answered within `timeout`.
    pub fn new(endpoint: quinn::Endpoint, timeout: Duration) -> Result<Self, PoolConfigError> {
        let ms = timeout.as_millis().max(1) as u64;
        let pool = ConnectionPool::new(
            endpoint,
            PoolConfig {
                connect_timeout_ms: ms,
                open_timeout_ms: ms,
                max_peers: 16,
                max_frame_bytes: MAX_RAFT_FRAME_BYTES,
            },
        )?;
        Ok(ControlClient {
            pool: Arc::new(pool),
            timeout,
        })
    }

    /// A client of its own: a client-only endpoint on an ephemeral port (of the address family
    /// of `toward`) that presents `identity`, as `strata admin` and tools use.
    pub fn connect_as(
        identity: &Identity,
        toward: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let any: SocketAddr = if toward.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = identity.endpoint(any)?;
        endpoint.set_server_config(None);
        Ok(ControlClient::new(endpoint, timeout)?)
    }

    /// The per-request time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one envelope and returns the replica's answer, within the client's timeout.
    pub async fn call(
        &self,
        addr: SocketAddr,
        envelope: &Envelope,
    ) -> Result<ControlAnswer, CallError> {
        self.call_within(addr, envelope, self.timeout).await
    }

    /// [`ControlClient::call`] with its own time limit.
    pub async fn call_within(
        &self,
        addr: SocketAddr,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<ControlAnswer, CallError> {
        let wire = |source| CallError::Wire { addr, source };
        let body = serde_json::to_vec(envelope).map_err(|e| wire(e.into()))?;
        let answer =
            tokio::time::timeout(timeout, exchange(&self.pool, addr, RpcKind::Control, body))
                .await
                .map_err(|_| {
                    // See `QuicNetwork::call`: a silent connection may be one to a process
                    // that died; the next request connects afresh.
                    self.pool
                        .close(&PeerKey::new(SERVER_NAME, addr), 0, b"request timed out");
                    wire(WireError::Timeout {
                        after_ms: timeout.as_millis() as u64,
                    })
                })?
                .map_err(wire)?;
        serde_json::from_slice(&answer).map_err(|e| wire(e.into()))
    }

    /// Sends `request` (not forwarded) and flattens the answer. Membership changes, transfers
    /// and snapshots may take longer than the client's timeout: they get
    /// [`ControlRequest::slow_limit`] at least.
    pub async fn request(
        &self,
        addr: SocketAddr,
        request: ControlRequest,
    ) -> Result<ControlReply, CallError> {
        let limit = request
            .slow_limit()
            .map_or(self.timeout, |l| l.max(self.timeout));
        let envelope = Envelope {
            forwarded: false,
            request,
        };
        Ok(self.call_within(addr, &envelope, limit).await??)
    }
}
