//! Typed message streams over a real QUIC connection: every message round-trips; truncated,
//! corrupted, oversized and garbage frames give typed errors and end only their own stream,
//! while the connection and later streams keep working.

mod common;

use common::{BOUND, every_message, identities};
use strata_transport::frame;
use strata_transport::proto::msg::ArchivedMessage;
use strata_transport::proto::{Message, RequestId};
use strata_transport::stream::{self, MessageReceiver, MessageSender, StreamError, codes};
use strata_transport::tls::SERVER_NAME;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Frame limit of the server's streams in these tests.
const MAX_FRAME: usize = 1 << 20;

/// What the server saw on one stream: the messages echoed, then how the stream ended, then
/// what a further `recv` returned after that end.
#[derive(Debug)]
struct Seen {
    messages: Vec<Message>,
    end: Result<(), StreamError>,
    after: Result<Option<Message>, StreamError>,
}

struct Harness {
    client: quinn::Connection,
    server: quinn::Connection,
    seen: mpsc::Receiver<Seen>,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// A client connected to a server that echoes every message of every stream and reports what
/// it saw on each stream.
async fn harness() -> Harness {
    let ids = identities(&["node-1", "router-1"]);
    let server_ep = ids[0].endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_ep = ids[1].endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = client_ep
        .connect(server_ep.local_addr().unwrap(), SERVER_NAME)
        .unwrap();
    let incoming = timeout(BOUND, server_ep.accept()).await.unwrap().unwrap();
    let (client, server) = tokio::join!(connecting, incoming);
    let (client, server) = (client.unwrap(), server.unwrap());
    let (tx, seen) = mpsc::channel(16);
    let conn = server.clone();
    tokio::spawn(async move {
        while let Ok(bi) = conn.accept_bi().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut send, mut recv) = stream::pair(bi, MAX_FRAME);
                let mut messages = Vec::new();
                let end = loop {
                    match recv.recv().await {
                        Ok(Some(m)) => {
                            if let Err(e) = send.send(&m).await {
                                break Err(e);
                            }
                            messages.push(m);
                        }
                        Ok(None) => {
                            let _ = send.finish();
                            break Ok(());
                        }
                        Err(e) => {
                            send.reset(e.code().unwrap_or(codes::DONE));
                            break Err(e);
                        }
                    }
                };
                let after = recv.recv().await;
                let _ = tx
                    .send(Seen {
                        messages,
                        end,
                        after,
                    })
                    .await;
            });
        }
    });
    Harness {
        client,
        server,
        seen,
        _endpoints: (server_ep, client_ep),
    }
}

impl Harness {
    async fn next_seen(&mut self) -> Seen {
        timeout(BOUND, self.seen.recv()).await.unwrap().unwrap()
    }

    /// Opens a stream, writes `bytes` raw and finishes it if asked. Both halves are returned
    /// to be kept: dropping the receiving half would stop the server's echoes.
    async fn raw(&self, bytes: &[u8], finish: bool) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = self.client.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        if finish {
            send.finish().unwrap();
        }
        (send, recv)
    }

    /// Sends messages on a new typed stream and checks they come back, then that the server
    /// saw a clean end: the connection still works.
    async fn round_trip(&mut self, msgs: &[Message]) {
        let bi = self.client.open_bi().await.unwrap();
        let (mut tx, mut rx) = stream::pair(bi, stream::DEFAULT_MAX_FRAME);
        let sent = msgs.to_vec();
        let writer = tokio::spawn(async move {
            for m in &sent {
                tx.send(m).await.unwrap();
            }
            tx.finish().unwrap();
            tx
        });
        for m in msgs {
            assert_eq!(
                timeout(BOUND, rx.recv()).await.unwrap().unwrap().as_ref(),
                Some(m)
            );
        }
        assert_eq!(timeout(BOUND, rx.recv()).await.unwrap().unwrap(), None);
        writer.await.unwrap();
        let seen = self.next_seen().await;
        assert_eq!(seen.messages, msgs);
        assert_eq!(seen.end, Ok(()));
        self.assert_alive();
    }

    fn assert_alive(&self) {
        assert!(self.client.close_reason().is_none());
        assert!(self.server.close_reason().is_none());
    }
}

fn cancel(n: u64) -> Message {
    Message::Cancel {
        request: RequestId(n),
    }
}

/// The peer stopped the stream with `code`.
async fn assert_stopped_with(send: &quinn::SendStream, code: u32) {
    let stopped = timeout(BOUND, send.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(code.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_round_trips_over_a_real_stream() {
    let mut h = harness().await;
    h.round_trip(&every_message()).await;
    // And each on a stream of its own.
    for m in every_message() {
        h.round_trip(&[m]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frames_end_only_their_stream() {
    let mut h = harness().await;
    let bytes = frame::encode(&every_message()[0]).unwrap();
    let len = bytes.len() - 4;

    // The stream ends 10 bytes short of the end of a frame.
    let _s = h.raw(&bytes[..bytes.len() - 10], true).await;
    let seen = h.next_seen().await;
    assert_eq!(seen.end, Err(StreamError::Truncated { len, missing: 10 }));
    assert_eq!(seen.after.unwrap_err(), StreamError::Closed);
    h.round_trip(&[cancel(1)]).await;

    // The stream ends inside the length prefix, after a good frame.
    let mut two = frame::encode(&cancel(2)).unwrap();
    two.extend_from_slice(&[9, 9]);
    let _s = h.raw(&two, true).await;
    let seen = h.next_seen().await;
    assert_eq!(seen.messages, vec![cancel(2)]);
    assert_eq!(seen.end, Err(StreamError::Truncated { len: 4, missing: 2 }));
    h.round_trip(&[cancel(3)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_frames_end_only_their_stream() {
    let mut h = harness().await;
    // The enum tag sits at the root, at the end of the archive: an unknown tag is invalid.
    let mut bytes = frame::encode(&cancel(1)).unwrap();
    let root = bytes.len() - std::mem::size_of::<ArchivedMessage>();
    bytes[root] = 0xFF;
    // Not finished: the receiver decides on the frame alone and stops the stream.
    let (send, _recv) = h.raw(&bytes, false).await;
    let seen = h.next_seen().await;
    assert!(
        matches!(seen.end, Err(StreamError::Invalid { .. })),
        "{:?}",
        seen.end
    );
    assert_eq!(
        seen.end.as_ref().unwrap_err().code(),
        Some(codes::FRAME_INVALID)
    );
    assert_stopped_with(&send, codes::FRAME_INVALID).await;
    h.round_trip(&[cancel(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_is_refused_before_reading_the_body() {
    let mut h = harness().await;
    // Only the prefix is sent, and the stream stays open: the receiver must not wait for a
    // body it will never accept.
    let prefix = ((MAX_FRAME + 1) as u32).to_le_bytes();
    let (send, _recv) = h.raw(&prefix, false).await;
    let seen = h.next_seen().await;
    assert_eq!(
        seen.end,
        Err(StreamError::TooLarge {
            len: MAX_FRAME + 1,
            limit: MAX_FRAME
        })
    );
    assert_stopped_with(&send, codes::FRAME_TOO_LARGE).await;
    h.round_trip(&[cancel(1)]).await;
    h.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gives_typed_errors_and_never_panics() {
    let mut h = harness().await;
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in [1usize, 7, 16, 64, 300, 5000] {
        // A plausible length prefix and random bytes behind it.
        let mut bytes = (len as u32).to_le_bytes().to_vec();
        bytes.extend((0..len).map(|_| next() as u8));
        let (send, _recv) = h.raw(&bytes, false).await;
        let seen = h.next_seen().await;
        assert!(
            matches!(seen.end, Err(StreamError::Invalid { .. })),
            "len {len}: {:?}",
            seen.end
        );
        assert_stopped_with(&send, codes::FRAME_INVALID).await;
        // Entirely random bytes, prefix included: some typed error, whichever it is.
        let bytes: Vec<u8> = (0..len + 4).map(|_| next() as u8).collect();
        let _s = h.raw(&bytes, true).await;
        let seen = h.next_seen().await;
        assert!(
            matches!(
                seen.end,
                Err(StreamError::Invalid { .. }
                    | StreamError::TooLarge { .. }
                    | StreamError::Truncated { .. })
            ),
            "len {len}: {:?}",
            seen.end
        );
    }
    h.round_trip(&every_message()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_refuses_a_message_over_its_limit_and_goes_on() {
    let mut h = harness().await;
    let (send, recv) = h.client.open_bi().await.unwrap();
    let mut tx = MessageSender::new(send, 1000);
    let mut rx = MessageReceiver::new(recv, 1000);
    let big = every_message().remove(0);
    let err = tx.send(&big).await.unwrap_err();
    assert!(
        matches!(err, StreamError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    // Nothing was written: the stream still carries the next message.
    tx.send(&cancel(5)).await.unwrap();
    tx.finish().unwrap();
    assert_eq!(
        timeout(BOUND, rx.recv()).await.unwrap().unwrap(),
        Some(cancel(5))
    );
    let seen = h.next_seen().await;
    assert_eq!(seen.messages, vec![cancel(5)]);
    h.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_from_the_peer_is_reported_with_its_code() {
    let mut h = harness().await;
    let (send, recv) = h.client.open_bi().await.unwrap();
    let mut tx = MessageSender::new(send, MAX_FRAME);
    let mut rx = MessageReceiver::new(recv, MAX_FRAME);
    tx.send(&cancel(1)).await.unwrap();
    assert_eq!(
        timeout(BOUND, rx.recv()).await.unwrap().unwrap(),
        Some(cancel(1))
    );
    // We abandon our half: the server's receiver reports our code.
    tx.reset(codes::UNEXPECTED_MESSAGE);
    let seen = h.next_seen().await;
    assert_eq!(seen.messages, vec![cancel(1)]);
    assert_eq!(
        seen.end,
        Err(StreamError::Reset {
            code: u64::from(codes::UNEXPECTED_MESSAGE)
        })
    );
    h.round_trip(&[cancel(2)]).await;
}
