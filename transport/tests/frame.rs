//! Framing: every message round-trips; bad bytes give typed errors and never panic.

mod common;

use common::every_message;
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::msg::ArchivedMessage;
use strata_transport::proto::{Message, RequestId};

#[test]
fn every_message_round_trips() {
    for m in every_message() {
        let bytes = frame::encode(&m).unwrap();
        let (back, used) = frame::decode(&bytes, frame::DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back, m);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn partial_and_back_to_back_frames() {
    let msgs = every_message();
    let stream: Vec<u8> = msgs
        .iter()
        .flat_map(|m| frame::encode(m).unwrap())
        .collect();
    // Every strict prefix of the first frame asks for more bytes.
    let first = frame::encode(&msgs[0]).unwrap().len();
    for cut in [0, 1, 3, 4, 5, first - 1] {
        assert!(
            frame::decode(&stream[..cut], frame::DEFAULT_MAX_FRAME)
                .unwrap()
                .is_none(),
            "cut {cut}"
        );
    }
    let mut at = 0;
    for m in &msgs {
        let (back, used) = frame::decode(&stream[at..], frame::DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(&back, m);
        at += used;
    }
    assert_eq!(at, stream.len());
}

#[test]
fn oversized_frames_are_refused_before_reading_them() {
    let bytes = frame::encode(&every_message()[0]).unwrap();
    let err = frame::decode(&bytes[..4], 100).unwrap_err();
    assert!(
        matches!(err, FrameError::TooLarge { limit: 100, .. }),
        "{err}"
    );
}

#[test]
fn corrupted_bytes_give_typed_errors_never_panics() {
    // Random bodies.
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in [0usize, 1, 7, 16, 64, 300] {
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        assert!(
            matches!(frame::decode_body(&body), Err(FrameError::Invalid(_))),
            "len {len}"
        );
    }
    // The enum tag sits at the root, at the end of the archive: an unknown tag is refused.
    let bytes = frame::encode(&Message::Cancel {
        request: RequestId(1),
    })
    .unwrap();
    let mut body = bytes[4..].to_vec();
    let root = body.len() - std::mem::size_of::<ArchivedMessage>();
    body[root] = 0xFF;
    assert!(matches!(
        frame::decode_body(&body),
        Err(FrameError::Invalid(_))
    ));
    // Single-byte flips anywhere in every message: decoding returns, Ok or a typed error.
    let mut invalid = 0;
    for m in every_message() {
        let body = frame::encode(&m).unwrap()[4..].to_vec();
        for i in 0..body.len().min(400) {
            let mut b = body.clone();
            b[i] ^= 0x80 | (next() as u8);
            if frame::decode_body(&b).is_err() {
                invalid += 1;
            }
        }
    }
    assert!(invalid > 0, "no flip was ever caught");
}

#[test]
fn misaligned_input_is_decoded_from_an_aligned_copy() {
    let m = every_message().remove(0);
    let bytes = frame::encode(&m).unwrap();
    let mut shifted = vec![0u8; 3];
    shifted.extend_from_slice(&bytes[4..]);
    assert_eq!(frame::decode_body(&shifted[3..]).unwrap(), m);
}

#[tokio::test]
async fn async_streams_round_trip_and_report_truncation() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let msgs = every_message();
    let sent = msgs.clone();
    let writer = tokio::spawn(async move {
        for m in &sent {
            frame::write_frame(&mut a, m).await.unwrap();
        }
    });
    for m in &msgs {
        assert_eq!(
            frame::read_frame(&mut b, frame::DEFAULT_MAX_FRAME)
                .await
                .unwrap()
                .as_ref(),
            Some(m)
        );
    }
    writer.await.unwrap();
    // The writer is gone: a clean end between frames.
    assert!(
        frame::read_frame(&mut b, frame::DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .is_none()
    );

    // A stream that ends inside a frame.
    let bytes = frame::encode(&msgs[0]).unwrap();
    let mut short = &bytes[..bytes.len() - 10];
    let err = frame::read_frame(&mut short, frame::DEFAULT_MAX_FRAME)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FrameError::Truncated { missing: 10, .. }),
        "{err}"
    );
    let mut two = &bytes[..2];
    assert!(matches!(
        frame::read_frame(&mut two, 1 << 20).await,
        Err(FrameError::Truncated { .. })
    ));
    let mut big = &bytes[..];
    assert!(matches!(
        frame::read_frame(&mut big, 16).await,
        Err(FrameError::TooLarge { .. })
    ));
}
