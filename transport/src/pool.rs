//! The connection pool: one QUIC connection per peer, made on first use and shared.
//!
//! A peer is a member name and an address ([`PeerKey`]); the name is checked against the
//! peer's certificate in the handshake, so a pool never talks to the wrong member at an
//! address. Concurrent first uses of a peer wait on one connection attempt (no thundering
//! herd) and share its outcome, error included. A connection that has closed is replaced on the
//! next use. Connects and stream opens are bounded in time, and the number of peers is bounded.

use crate::stream::{self, MessageReceiver, MessageSender};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

/// A peer: the member name its certificate carries, and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub member: String,
    pub addr: SocketAddr,
}

impl PeerKey {
    pub fn new(member: impl Into<String>, addr: SocketAddr) -> Self {
        PeerKey {
            member: member.into(),
            addr,
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.member, self.addr)
    }
}

/// Limits of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// A connection attempt (handshake included) that takes longer fails.
    pub connect_timeout_ms: u64,
    /// Opening a stream waits at most this long for the peer's stream credit.
    pub open_timeout_ms: u64,
    /// Peers the pool holds connections to at once.
    pub max_peers: usize,
    /// Frame limit of the message streams the pool opens.
    pub max_frame_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connect_timeout_ms: 5_000,
            open_timeout_ms: 5_000,
            max_peers: 1024,
            max_frame_bytes: stream::DEFAULT_MAX_FRAME,
        }
    }
}

/// A pool configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// A timeout is zero or over ten minutes.
    #[error("{name} of {ms} ms is outside 1..=600000")]
    Timeout { name: &'static str, ms: u64 },
    /// The peer bound is zero.
    #[error("max_peers must be at least 1")]
    NoPeers,
    /// The frame limit is zero or over 1 GiB.
    #[error("max_frame_bytes {max_frame_bytes} is outside 1..=1073741824")]
    MaxFrame { max_frame_bytes: usize },
}

impl PoolConfig {
    /// Checks the limits; each error carries the bad value.
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        for (name, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("open_timeout_ms", self.open_timeout_ms),
        ] {
            if ms == 0 || ms > 600_000 {
                return Err(PoolConfigError::Timeout { name, ms });
            }
        }
        if self.max_peers == 0 {
            return Err(PoolConfigError::NoPeers);
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > 1 << 30 {
            return Err(PoolConfigError::MaxFrame {
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        Ok(())
    }
}

/// Why the pool could not give a connection or a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The member name is not usable as a TLS server name.
    #[error("{peer}: the member name is not a valid server name")]
    InvalidMemberName { peer: PeerKey },
    /// The endpoint refused to start the connection.
    #[error("{peer}: cannot connect: {source}")]
    Connect {
        peer: PeerKey,
        source: quinn::ConnectError,
    },
    /// The handshake failed (refused, wrong certificate, unreachable, ...).
    #[error("{peer}: handshake failed: {source}")]
    Handshake {
        peer: PeerKey,
        source: quinn::ConnectionError,
    },
    /// No connection within the connect timeout.
    #[error("{peer}: no connection within {after_ms} ms")]
    Timeout { peer: PeerKey, after_ms: u64 },
    /// The pool already holds its limit of peers, all live.
    #[error("the pool already holds connections to {limit} peers")]
    TooManyPeers { limit: usize },
    /// A fresh connection closed before it could be used.
    #[error("{peer}: connection closed: {source}")]
    Closed {
        peer: PeerKey,
        source: quinn::ConnectionError,
    },
    /// Opening a stream failed.
    #[error("{peer}: cannot open a stream: {source}")]
    Open {
        peer: PeerKey,
        source: quinn::ConnectionError,
    },
    /// The peer gave no stream credit within the open timeout.
    #[error("{peer}: no stream could be opened within {after_ms} ms")]
    OpenTimeout { peer: PeerKey, after_ms: u64 },
}

/// One connection attempt to a peer and its outcome, shared by every caller that waited on it.
#[derive(Default)]
struct Attempt {
    outcome: OnceCell<Result<quinn::Connection, PoolError>>,
}

impl Attempt {
    /// Resolved to an error or to a connection that has closed since.
    fn is_dead(&self) -> bool {
        match self.outcome.get() {
            None => false,
            Some(Ok(conn)) => conn.close_reason().is_some(),
            Some(Err(_)) => true,
        }
    }
}

/// One QUIC connection per peer, shared. Cheap to share behind an `Arc`.
pub struct ConnectionPool {
    endpoint: quinn::Endpoint,
    config: PoolConfig,
    peers: Mutex<HashMap<PeerKey, Arc<Attempt>>>,
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("config", &self.config)
            .field("peers", &self.len())
            .finish()
    }
}

impl ConnectionPool {
    /// A pool making connections from `endpoint` (which needs a default client
    /// configuration, as [`Identity::endpoint`](crate::tls::Identity::endpoint) sets).
    pub fn new(endpoint: quinn::Endpoint, config: PoolConfig) -> Result<Self, PoolConfigError> {
        config.validate()?;
        Ok(ConnectionPool {
            endpoint,
            config,
            peers: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Peers the pool holds an attempt or a connection for (live or not yet replaced).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, Arc<Attempt>>> {
        // No code panics while holding the lock (map operations only), so a poisoned map is
        // still consistent.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer's current attempt, or a new one in place of a dead or missing one.
    fn attempt(&self, peer: &PeerKey) -> Result<Arc<Attempt>, PoolError> {
        let mut peers = self.lock();
        if let Some(a) = peers.get(peer)
            && !a.is_dead()
        {
            return Ok(a.clone());
        }
        if !peers.contains_key(peer) && peers.len() >= self.config.max_peers {
            peers.retain(|_, a| !a.is_dead());
            if peers.len() >= self.config.max_peers {
                return Err(PoolError::TooManyPeers {
                    limit: self.config.max_peers,
                });
            }
        }
        let fresh = Arc::new(Attempt::default());
        peers.insert(peer.clone(), fresh.clone());
        Ok(fresh)
    }

    /// Drops `attempt` from the pool if it is still the peer's current one.
    fn retire(&self, peer: &PeerKey, attempt: &Arc<Attempt>) {
        let mut peers = self.lock();
        if peers.get(peer).is_some_and(|a| Arc::ptr_eq(a, attempt)) {
            peers.remove(peer);
        }
    }

    /// The connection to `peer`: the live one, or a new one. Concurrent callers share one
    /// attempt and its outcome.
    pub async fn connection(&self, peer: &PeerKey) -> Result<quinn::Connection, PoolError> {
        // A connection found closed is replaced once; a replacement that is closed already
        // is reported rather than retried without end.
        let mut closed = None;
        for _ in 0..2 {
            let attempt = self.attempt(peer)?;
            match attempt.outcome.get_or_init(|| self.connect(peer)).await {
                Ok(conn) => match conn.close_reason() {
                    None => return Ok(conn.clone()),
                    Some(reason) => {
                        self.retire(peer, &attempt);
                        closed = Some(reason);
                    }
                },
                Err(e) => {
                    let e = e.clone();
                    self.retire(peer, &attempt);
                    return Err(e);
                }
            }
        }
        Err(PoolError::Closed {
            peer: peer.clone(),
            source: closed.unwrap_or(quinn::ConnectionError::LocallyClosed),
        })
    }

    async fn connect(&self, peer: &PeerKey) -> Result<quinn::Connection, PoolError> {
        let connecting = self
            .endpoint
            .connect(peer.addr, &peer.member)
            .map_err(|source| match source {
                quinn::ConnectError::InvalidServerName(_) => {
                    PoolError::InvalidMemberName { peer: peer.clone() }
                }
                source => PoolError::Connect {
                    peer: peer.clone(),
                    source,
                },
            })?;
        let bound = Duration::from_millis(self.config.connect_timeout_ms);
        match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(PoolError::Handshake {
                peer: peer.clone(),
                source,
            }),
            // Dropping the attempt abandons the handshake.
            Err(_) => Err(PoolError::Timeout {
                peer: peer.clone(),
                after_ms: self.config.connect_timeout_ms,
            }),
        }
    }

    /// Opens a bidirectional stream to `peer` as a typed message pair. A connection that turns
    /// out to be lost is replaced once.
    pub async fn open_bi(
        &self,
        peer: &PeerKey,
    ) -> Result<(MessageSender, MessageReceiver), PoolError> {
        let raw = self.open_raw_bi(peer).await?;
        Ok(stream::pair(raw, self.config.max_frame_bytes))
    }

    /// Opens a bidirectional stream to `peer` as raw QUIC streams (bulk transfers).
    pub async fn open_raw_bi(
        &self,
        peer: &PeerKey,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), PoolError> {
        let bound = Duration::from_millis(self.config.open_timeout_ms);
        let mut last = None;
        for _ in 0..2 {
            let conn = self.connection(peer).await?;
            match tokio::time::timeout(bound, conn.open_bi()).await {
                Ok(Ok(pair)) => return Ok(pair),
                // The connection died between the lookup and the open: the next lookup
                // replaces it.
                Ok(Err(source)) => last = Some(source),
                Err(_) => {
                    return Err(PoolError::OpenTimeout {
                        peer: peer.clone(),
                        after_ms: self.config.open_timeout_ms,
                    });
                }
            }
        }
        Err(PoolError::Open {
            peer: peer.clone(),
            source: last.unwrap_or(quinn::ConnectionError::LocallyClosed),
        })
    }

    /// Closes and forgets the connection to `peer`, if any.
    pub fn close(&self, peer: &PeerKey, code: u32, reason: &[u8]) {
        let attempt = self.lock().remove(peer);
        if let Some(a) = attempt
            && let Some(Ok(conn)) = a.outcome.get()
        {
            conn.close(quinn::VarInt::from_u32(code), reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_limits_are_checked() {
        PoolConfig::default().validate().unwrap();
        let c = PoolConfig {
            connect_timeout_ms: 0,
            ..PoolConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(PoolConfigError::Timeout {
                name: "connect_timeout_ms",
                ms: 0
            })
        );
        let c = PoolConfig {
            max_peers: 0,
            ..PoolConfig::default()
        };
        assert_eq!(c.validate(), Err(PoolConfigError::NoPeers));
    }
}
