//! Framing: a message is a 4-byte little-endian length and that many bytes of rkyv archive.
//!
//! Frames are received into aligned buffers and validated (bytecheck) before use; nothing from
//! the network is accessed unchecked. Every failure is a typed [`FrameError`]: the stream that
//! produced it is closed with it, and the process goes on.

use crate::proto::msg::{ArchivedMessage, Message};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted by default: 64 MiB (a 128k-token prompt is 512 KiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// A frame that could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared length is over the limit; nothing of the frame was read.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// The stream ended inside a frame.
    #[error("stream ended {missing} bytes short of a {len}-byte frame")]
    Truncated { len: usize, missing: usize },
    /// The bytes are not a valid archived message.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The message could not be archived.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Archives `msg` into a frame (length prefix included).
pub fn encode(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let body =
        rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        limit: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Validates and deserializes a frame body that is already aligned.
pub(crate) fn decode_aligned(body: &AlignedVec<16>) -> Result<Message, FrameError> {
    let archived = rkyv::access::<ArchivedMessage, rancor::Error>(body)
        .map_err(|e| FrameError::Invalid(format!("{e} ({} bytes)", body.len())))?;
    rkyv::deserialize::<Message, rancor::Error>(archived)
        .map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Validates and deserializes one frame body, whatever its alignment in `body`.
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    decode_aligned(&aligned)
}

/// Decodes the first complete frame of `buf`: `Ok(None)` when more bytes are needed, else the
/// message and the bytes it took.
pub fn decode(buf: &[u8], limit: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    match buf.get(4..4 + len) {
        Some(body) => Ok(Some((decode_body(body)?, 4 + len))),
        None => Ok(None),
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?).await?;
    Ok(())
}

/// Reads one frame: `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Message>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated {
                    len: 4,
                    missing: 4 - got,
                })
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut body = AlignedVec::<16>::with_capacity(len);
    body.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        let n = r.read(&mut body[filled..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                len,
                missing: len - filled,
            });
        }
        filled += n;
    }
    decode_aligned(&body).map(Some)
}
