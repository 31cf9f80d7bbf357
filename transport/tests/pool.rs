//! The connection pool on loopback: concurrent callers share one connection, a dead connection
//! is replaced, a dead address fails within the connect timeout with a typed error, and the
//! pool holds at most `max_peers` peers.

mod common;

use common::{BOUND, echo_server, identities};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_transport::pool::{ConnectionPool, PeerKey, PoolConfig, PoolError};
use strata_transport::proto::{Message, RequestId};
use strata_transport::tls::Identity;
use tokio::time::timeout;

fn pool(me: &Identity, config: PoolConfig) -> Arc<ConnectionPool> {
    let ep = me.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    Arc::new(ConnectionPool::new(ep, config).unwrap())
}

/// One message there and back on a new stream of the pool.
async fn round_trip(pool: &ConnectionPool, peer: &PeerKey, n: u64) {
    let (mut tx, mut rx) = pool.open_bi(peer).await.unwrap();
    let msg = Message::Cancel {
        request: RequestId(n),
    };
    tx.send(&msg).await.unwrap();
    tx.finish().unwrap();
    assert_eq!(rx.recv().await.unwrap(), Some(msg));
    assert_eq!(rx.recv().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_connection() {
    let ids = identities(&["node-1", "router-1"]);
    let (_server, addr) = echo_server(&ids[0]);
    let pool = pool(&ids[1], PoolConfig::default());
    let peer = PeerKey::new("node-1", addr);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (pool, peer) = (pool.clone(), peer.clone());
        tasks.spawn(async move {
            let conn = pool.connection(&peer).await.unwrap();
            round_trip(&pool, &peer, i).await;
            conn.stable_id()
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        ids.push(id.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "callers got different connections: {ids:?}");
    assert_eq!(pool.endpoint().open_connections(), 1);
    assert_eq!(pool.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_connection_is_replaced() {
    let ids = identities(&["node-1", "router-1"]);
    let (_server, addr) = echo_server(&ids[0]);
    let pool = pool(&ids[1], PoolConfig::default());
    let peer = PeerKey::new("node-1", addr);

    let first = pool.connection(&peer).await.unwrap();
    round_trip(&pool, &peer, 1).await;
    // The connection dies (closed by someone else holding it: the pool does not know yet).
    first.close(7u32.into(), b"gone");
    timeout(BOUND, first.closed()).await.unwrap();

    round_trip(&pool, &peer, 2).await;
    let second = pool.connection(&peer).await.unwrap();
    assert_ne!(first.stable_id(), second.stable_id());
    assert!(second.close_reason().is_none());
    assert_eq!(pool.len(), 1);

    // Closed through the pool: forgotten at once, and the next use connects afresh.
    pool.close(&peer, 0, b"bye");
    assert_eq!(pool.len(), 0);
    round_trip(&pool, &peer, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_fails_within_the_timeout() {
    let ids = identities(&["router-1"]);
    // A bound UDP socket that never answers: the handshake can only time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = PeerKey::new("node-1", silent.local_addr().unwrap());
    let config = PoolConfig {
        connect_timeout_ms: 300,
        ..PoolConfig::default()
    };
    let pool = pool(&ids[0], config);

    // Eight concurrent callers wait on one attempt and all get its error.
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, peer) = (pool.clone(), peer.clone());
        tasks.spawn(async move { pool.open_bi(&peer).await.map(|_| ()) });
    }
    while let Some(r) = timeout(BOUND, tasks.join_next()).await.unwrap() {
        let err = r.unwrap().unwrap_err();
        assert!(
            matches!(err, PoolError::Timeout { after_ms: 300, ref peer } if peer.member == "node-1"),
            "{err}"
        );
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // One shared attempt, not eight in a row (generous bound for a loaded machine).
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The failed attempt is not kept: the next call tries again.
    assert_eq!(pool.len(), 0);
    let err = pool.connection(&peer).await.unwrap_err();
    assert!(matches!(err, PoolError::Timeout { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_name_is_checked_against_the_certificate() {
    let ids = identities(&["node-1", "router-1"]);
    let (_server, addr) = echo_server(&ids[0]);
    let pool = pool(&ids[1], PoolConfig::default());
    let err = timeout(BOUND, pool.connection(&PeerKey::new("node-2", addr)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PoolError::Handshake { .. }), "{err}");
    let err = pool
        .connection(&PeerKey::new("not a name", addr))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::InvalidMemberName { .. }), "{err}");
    // The right name works.
    round_trip(&pool, &PeerKey::new("node-1", addr), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_peers_is_bounded() {
    let ids = identities(&["node-1", "node-2", "router-1"]);
    let (_a, addr_a) = echo_server(&ids[0]);
    let (_b, addr_b) = echo_server(&ids[1]);
    let config = PoolConfig {
        max_peers: 1,
        ..PoolConfig::default()
    };
    let pool = pool(&ids[2], config);
    let a = PeerKey::new("node-1", addr_a);
    let b = PeerKey::new("node-2", addr_b);
    let conn_a = pool.connection(&a).await.unwrap();
    let err = pool.connection(&b).await.unwrap_err();
    assert_eq!(err, PoolError::TooManyPeers { limit: 1 });
    // Once the first peer's connection is dead, its slot is reused.
    conn_a.close(0u32.into(), b"done");
    timeout(BOUND, conn_a.closed()).await.unwrap();
    round_trip(&pool, &b, 1).await;
    assert_eq!(pool.len(), 1);
}
