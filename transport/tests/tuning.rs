//! Transport tunings on real QUIC connections: large datagrams with segmentation offload are
//! not lost, and the loopback profile survives a path that drops large datagrams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_transport::tls::{ClusterCa, Identity, SERVER_NAME};
use strata_transport::tuning::{JUMBO_UDP_PAYLOAD, TransportTuning};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(60);

fn identities() -> (Identity, Identity) {
    let ca = ClusterCa::generate("tuning").unwrap();
    (ca.issue("node-1").unwrap(), ca.issue("router-1").unwrap())
}

/// A server that reads each stream to its end and answers with the byte count.
fn sink(identity: &Identity, tuning: &TransportTuning) -> SocketAddr {
    let ep = identity
        .endpoint_tuned("127.0.0.1:0".parse().unwrap(), tuning)
        .unwrap();
    let addr = ep.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut total = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            total += chunk.bytes.len() as u64;
                        }
                        let _ = send.write_u64(total).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    addr
}

/// Sends `bytes` on one stream and returns the connection's path statistics.
async fn send(
    identity: &Identity,
    tuning: &TransportTuning,
    to: SocketAddr,
    bytes: usize,
) -> quinn::PathStats {
    let ep = identity
        .endpoint_tuned("127.0.0.1:0".parse().unwrap(), tuning)
        .unwrap();
    let conn = ep.connect(to, SERVER_NAME).unwrap().await.unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let data = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len());
        tx.write_chunk(data.slice(..n)).await.unwrap();
        left -= n;
    }
    tx.finish().unwrap();
    let mut count = [0u8; 8];
    rx.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), bytes as u64);
    let stats = conn.stats().path;
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jumbo_datagrams_with_segmentation_offload_are_not_lost() {
    // quinn batches up to 10 datagrams per send call: 10 × 8952 bytes is over the kernel's
    // 64 KiB limit, so without the cap every batch would fail and count as loss.
    let tuning = TransportTuning {
        initial_mtu: JUMBO_UDP_PAYLOAD,
        mtu_upper_bound: Some(JUMBO_UDP_PAYLOAD),
        segmentation_offload: true,
        ..TransportTuning::loopback()
    };
    let (node, router) = identities();
    let addr = sink(&node, &tuning);
    let stats = timeout(BOUND, send(&router, &tuning, addr, 32 << 20))
        .await
        .unwrap();
    assert_eq!(stats.black_holes_detected, 0, "{stats:?}");
    assert_eq!(stats.current_mtu, JUMBO_UDP_PAYLOAD, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_profile_works_at_full_size() {
    let tuning = TransportTuning::loopback();
    let (node, router) = identities();
    let addr = sink(&node, &tuning);
    let stats = timeout(BOUND, send(&router, &tuning, addr, 64 << 20))
        .await
        .unwrap();
    assert_eq!(stats.current_mtu, tuning.initial_mtu, "{stats:?}");
    assert_eq!(stats.black_holes_detected, 0, "{stats:?}");
}

/// A UDP relay between one client and `server` that drops datagrams over `max_bytes`, like a
/// path with a 1500-byte MTU.
async fn small_mtu_path(server: SocketAddr, max_bytes: usize) -> SocketAddr {
    let outer = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let inner = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = outer.local_addr().unwrap();
    let (client_tx, mut client_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    let (o, i) = (outer.clone(), inner.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((n, from)) = o.recv_from(&mut buf).await {
            let _ = client_tx.send(Some(from));
            if n <= max_bytes {
                let _ = i.send_to(&buf[..n], server).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((n, _)) = inner.recv_from(&mut buf).await {
            let client = *client_rx.borrow_and_update();
            if let Some(client) = client
                && n <= max_bytes
            {
                let _ = outer.send_to(&buf[..n], client).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_profile_falls_back_on_a_path_with_a_small_mtu() {
    let tuning = TransportTuning::loopback();
    let (node, router) = identities();
    let server = sink(&node, &tuning);
    let path = small_mtu_path(server, 1472).await;
    let stats = timeout(BOUND, send(&router, &tuning, path, 4 << 20))
        .await
        .unwrap();
    assert!(stats.black_holes_detected >= 1, "{stats:?}");
    assert!(stats.current_mtu <= 1472, "{stats:?}");
}
