//! Bulk block streams over a real QUIC connection: 64 MiB arrive intact into the receiver's
//! buffer; corruption is caught by the checksum; size limits are enforced on both sides; each
//! fault ends only its own stream.

mod common;

use bytes::Bytes;
use common::{BOUND, identities};
use std::time::Instant;
use strata_transport::bulk::{
    self, Block, BulkError, BulkHeader, BulkLimits, BulkReceiver, Transferred,
};
use strata_transport::checksum::Xxh64;
use strata_transport::stream::codes;
use strata_transport::tls::SERVER_NAME;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// What the receiving side saw on one stream.
#[derive(Debug)]
struct Received {
    result: Result<Transferred, BulkError>,
    ids: Vec<u64>,
    data: Vec<u8>,
}

struct Harness {
    client: quinn::Connection,
    server: quinn::Connection,
    received: mpsc::Receiver<Received>,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// A client connected to a server that receives one transfer per stream under `limits`, into
/// a buffer of the transfer's size plus `buffer_delta` bytes (negative: too small).
async fn harness(limits: BulkLimits, buffer_delta: isize) -> Harness {
    let ids = identities(&["node-1", "node-2"]);
    let server_ep = ids[0].endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_ep = ids[1].endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = client_ep
        .connect(server_ep.local_addr().unwrap(), SERVER_NAME)
        .unwrap();
    let incoming = timeout(BOUND, server_ep.accept()).await.unwrap().unwrap();
    let (client, server) = tokio::join!(connecting, incoming);
    let (client, server) = (client.unwrap(), server.unwrap());
    let (tx, received) = mpsc::channel(4);
    let conn = server.clone();
    tokio::spawn(async move {
        while let Ok(bi) = conn.accept_bi().await {
            let (tx, limits) = (tx.clone(), limits.clone());
            tokio::spawn(async move {
                let r = match BulkReceiver::accept(bi, &limits).await {
                    Err(e) => Received {
                        result: Err(e),
                        ids: Vec::new(),
                        data: Vec::new(),
                    },
                    Ok(rx) => {
                        let ids = rx.ids().to_vec();
                        let len = rx.transfer_bytes().saturating_add_signed(buffer_delta);
                        let mut data = vec![0u8; len];
                        let result = rx.receive_into(&mut data).await;
                        Received { result, ids, data }
                    }
                };
                let _ = tx.send(r).await;
            });
        }
    });
    Harness {
        client,
        server,
        received,
        _endpoints: (server_ep, client_ep),
    }
}

impl Harness {
    async fn next(&mut self) -> Received {
        timeout(BOUND, self.received.recv()).await.unwrap().unwrap()
    }

    async fn send(&self, blocks: &[Block]) -> Result<Transferred, BulkError> {
        let bi = self.client.open_bi().await.unwrap();
        timeout(BOUND, bulk::send_blocks(bi, blocks, &BulkLimits::default()))
            .await
            .unwrap()
    }

    /// A good transfer of a few blocks goes through: the connection still works.
    async fn assert_works(&mut self) {
        let blocks = blocks(4, 4096, 99);
        self.send(&blocks).await.unwrap();
        let r = self.next().await;
        r.result.unwrap();
        assert_eq!(r.data, concat(&blocks));
        assert!(self.client.close_reason().is_none());
        assert!(self.server.close_reason().is_none());
    }
}

/// `n` blocks of `size` bytes with distinct contents and ids.
fn blocks(n: usize, size: usize, seed: u64) -> Vec<Block> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            let bytes: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Block {
                id: 1000 + i as u64 * 7,
                bytes: Bytes::from(bytes),
            }
        })
        .collect()
}

fn concat(blocks: &[Block]) -> Vec<u8> {
    blocks
        .iter()
        .flat_map(|b| b.bytes.iter().copied())
        .collect()
}

/// The wire bytes of a transfer of `blocks` with its true checksum, before any tampering.
fn wire(blocks: &[Block]) -> (Vec<u8>, u64) {
    let header = bulk::header_of(blocks, &BulkLimits::default()).unwrap();
    let mut out = header.to_bytes().to_vec();
    for b in blocks {
        out.extend_from_slice(&b.id.to_le_bytes());
    }
    out.extend(concat(blocks));
    let mut h = Xxh64::default();
    h.update(&out);
    (out, h.digest())
}

/// Sends raw `bytes` on a new stream, finishes, and returns what the receiver answered:
/// `Ok(answer)` or `Err(reset code)`.
async fn raw(h: &Harness, bytes: &[u8]) -> Result<u64, u64> {
    let (mut send, mut recv) = h.client.open_bi().await.unwrap();
    // The receiver may refuse before everything is written.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut answer = [0u8; 8];
    match timeout(BOUND, recv.read_exact(&mut answer)).await.unwrap() {
        Ok(()) => Ok(u64::from_le_bytes(answer)),
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            Err(code.into_inner())
        }
        Err(e) => panic!("unexpected answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_transfer_arrives_intact() {
    let mut h = harness(BulkLimits::default(), 0).await;
    // 1024 blocks of 64 KiB: one layer's KV of 16 tokens for Llama-3-8B (8 KV heads × 128
    // dims × 2 bytes × K and V × 16 tokens).
    let blocks = blocks(1024, 64 << 10, 1);
    let start = Instant::now();
    let sent = h.send(&blocks).await.unwrap();
    let r = h.next().await;
    let took = start.elapsed();
    let got = r.result.unwrap();
    assert_eq!(got, sent);
    assert_eq!(
        got.header,
        BulkHeader {
            count: 1024,
            block_bytes: 64 << 10
        }
    );
    assert_eq!(r.ids, blocks.iter().map(|b| b.id).collect::<Vec<_>>());
    assert!(r.data == concat(&blocks), "the received bytes differ");
    eprintln!(
        "64 MiB in {took:?} ({:.2} GB/s, debug build)",
        (64u64 << 20) as f64 / took.as_secs_f64() / 1e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_caught_by_the_checksum() {
    let mut h = harness(BulkLimits::default(), 0).await;
    let blocks = blocks(16, 4096, 2);
    let (mut bytes, checksum) = wire(&blocks);
    // One bit flipped in block 5, after the checksum was taken.
    let at = bulk::HEADER_BYTES + 16 * 8 + 5 * 4096 + 100;
    bytes[at] ^= 0x04;
    bytes.extend_from_slice(&checksum.to_le_bytes());
    assert_eq!(raw(&h, &bytes).await, Err(u64::from(codes::BULK_CHECKSUM)));
    let r = h.next().await;
    assert!(
        matches!(r.result, Err(BulkError::Checksum { sent, .. }) if sent == checksum),
        "{:?}",
        r.result
    );
    // A corrupted id is caught too.
    let (mut bytes, checksum) = wire(&blocks);
    bytes[bulk::HEADER_BYTES + 3] ^= 1;
    bytes.extend_from_slice(&checksum.to_le_bytes());
    assert_eq!(raw(&h, &bytes).await, Err(u64::from(codes::BULK_CHECKSUM)));
    assert!(matches!(
        h.next().await.result,
        Err(BulkError::Checksum { .. })
    ));
    // The intact transfer is accepted and answered with its checksum.
    let (mut bytes, checksum) = wire(&blocks);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    assert_eq!(raw(&h, &bytes).await, Ok(checksum));
    h.next().await.result.unwrap();
    h.assert_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_overlong_transfers_are_refused() {
    let mut h = harness(BulkLimits::default(), 0).await;
    let blocks = blocks(8, 1024, 3);
    let (bytes, checksum) = wire(&blocks);
    // Ends inside the blocks.
    assert_eq!(
        raw(&h, &bytes[..bytes.len() - 100]).await,
        Err(u64::from(codes::BULK_TRUNCATED))
    );
    assert_eq!(
        h.next().await.result,
        Err(BulkError::Truncated { missing: 108 })
    );
    // Bytes after the trailer.
    let mut long = bytes.clone();
    long.extend_from_slice(&checksum.to_le_bytes());
    long.extend_from_slice(b"extra");
    assert_eq!(raw(&h, &long).await, Err(u64::from(codes::BULK_TRUNCATED)));
    assert_eq!(h.next().await.result, Err(BulkError::TrailingBytes));
    // Not a bulk stream at all.
    assert_eq!(
        raw(&h, b"GET / HTTP/1.1\r\n\r\n").await,
        Err(u64::from(codes::BULK_HEADER))
    );
    assert!(matches!(
        h.next().await.result,
        Err(BulkError::BadHeader { .. })
    ));
    h.assert_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_enforces_its_limits() {
    let limits = BulkLimits {
        max_blocks: 8,
        max_block_bytes: 4096,
        max_transfer_bytes: 16 << 10,
        ..BulkLimits::default()
    };
    let mut h = harness(limits, 0).await;
    let err = h.send(&blocks(9, 1024, 4)).await.unwrap_err();
    assert_eq!(
        err,
        BulkError::Rejected {
            code: u64::from(codes::BULK_HEADER)
        }
    );
    assert_eq!(
        h.next().await.result.unwrap_err(),
        BulkError::TooManyBlocks { count: 9, limit: 8 }
    );
    let err = h.send(&blocks(2, 8192, 5)).await.unwrap_err();
    assert!(matches!(err, BulkError::Rejected { .. }), "{err}");
    assert!(matches!(
        h.next().await.result,
        Err(BulkError::BlockTooLarge {
            block_bytes: 8192,
            limit: 4096
        })
    ));
    let err = h.send(&blocks(8, 4096, 6)).await.unwrap_err();
    assert!(matches!(err, BulkError::Rejected { .. }), "{err}");
    assert!(matches!(
        h.next().await.result,
        Err(BulkError::TransferTooLarge { bytes: 32768, .. })
    ));
    h.assert_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_too_small_refuses_the_transfer() {
    let mut h = harness(BulkLimits::default(), -1).await;
    let err = h.send(&blocks(4, 1024, 7)).await.unwrap_err();
    assert_eq!(
        err,
        BulkError::Rejected {
            code: u64::from(codes::BULK_TOO_LARGE)
        }
    );
    assert_eq!(
        h.next().await.result,
        Err(BulkError::BufferTooSmall {
            needed: 4096,
            got: 4095
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_checks_its_blocks_before_sending() {
    let h = harness(BulkLimits::default(), 0).await;
    let mut uneven = blocks(3, 1024, 8);
    uneven[1].bytes = uneven[1].bytes.slice(..1000);
    let bi = h.client.open_bi().await.unwrap();
    let err = bulk::send_blocks(bi, &uneven, &BulkLimits::default())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BulkError::UnequalBlocks {
            index: 1,
            len: 1000,
            expected: 1024
        }
    );
    let bi = h.client.open_bi().await.unwrap();
    let small = BulkLimits {
        max_transfer_bytes: 1024,
        ..BulkLimits::default()
    };
    let err = bulk::send_blocks(bi, &blocks(2, 1024, 9), &small)
        .await
        .unwrap_err();
    assert!(matches!(err, BulkError::TransferTooLarge { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sender_is_timed_out_by_the_receiver() {
    let limits = BulkLimits {
        timeout_ms: 200,
        ..BulkLimits::default()
    };
    let mut h = harness(limits, 0).await;
    // The header and ids arrive, the blocks never do; the stream stays open.
    let (bytes, _) = wire(&blocks(4, 1024, 10));
    let (mut send, mut recv) = h.client.open_bi().await.unwrap();
    send.write_all(&bytes[..bulk::HEADER_BYTES + 4 * 8 + 10])
        .await
        .unwrap();
    let r = h.next().await;
    assert_eq!(r.result, Err(BulkError::Timeout { after_ms: 200 }));
    let mut answer = [0u8; 8];
    let err = timeout(BOUND, recv.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err,
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(codes::BULK_TIMEOUT.into()))
    );
    h.assert_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_receiver_is_timed_out_by_the_sender() {
    let h = harness(BulkLimits::default(), 0).await;
    // The harness's server receives every stream the client opens, so this transfer goes the
    // other way: the server sends, the client accepts the stream and never reads or answers.
    let silent = tokio::spawn({
        let client = h.client.clone();
        async move {
            let (_send, _recv) = client.accept_bi().await.unwrap();
            std::future::pending::<()>().await
        }
    });
    let bi = h.server.open_bi().await.unwrap();
    let limits = BulkLimits {
        timeout_ms: 300,
        ..BulkLimits::default()
    };
    let err = timeout(BOUND, bulk::send_blocks(bi, &blocks(2, 1024, 11), &limits))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, BulkError::Timeout { after_ms: 300 });
    silent.abort();
}
