//! Typed message streams: [`MessageSender`] and [`MessageReceiver`] carry [`Message`] frames
//! (see [`frame`](crate::frame)) over one QUIC stream.
//!
//! A frame is checked against the stream's size limit before it is sent and again when it is
//! received; it is received into an aligned buffer and validated before use. A frame that is
//! too large, truncated or invalid ends that stream only: the receiver stops its half with one
//! of the [`codes`] and returns a typed [`StreamError`]; the connection and its other streams
//! carry on. Nothing here panics on bytes from the network.

use crate::frame::{self, FrameError};
use crate::proto::msg::Message;
use quinn::VarInt;
use rkyv::util::AlignedVec;

/// Application error codes of Strata streams, carried by QUIC `STOP_SENDING` and
/// `RESET_STREAM` frames.
pub mod codes {
    /// The stream ended normally, or was abandoned by its owner without a fault.
    pub const DONE: u32 = 0;
    /// A frame's declared length was over the stream's limit.
    pub const FRAME_TOO_LARGE: u32 = 0x10;
    /// The stream ended inside a frame.
    pub const FRAME_TRUNCATED: u32 = 0x11;
    /// A frame's bytes were not a valid message.
    pub const FRAME_INVALID: u32 = 0x12;
    /// A message arrived that the stream's protocol does not allow at that point.
    pub const UNEXPECTED_MESSAGE: u32 = 0x13;
    /// The peer's certificate lacks the role this stream needs.
    pub const UNAUTHORIZED: u32 = 0x14;
    /// A bulk transfer's header was malformed or over a limit.
    pub const BULK_HEADER: u32 = 0x20;
    /// A bulk transfer's data did not match its checksum.
    pub const BULK_CHECKSUM: u32 = 0x21;
    /// A bulk transfer did not fit the receiver's buffer.
    pub const BULK_TOO_LARGE: u32 = 0x22;
    /// The stream ended inside a bulk transfer.
    pub const BULK_TRUNCATED: u32 = 0x23;
    /// A bulk transfer did not complete within its time limit.
    pub const BULK_TIMEOUT: u32 = 0x24;
}

/// The largest frame a stream accepts unless told otherwise (see
/// [`frame::DEFAULT_MAX_FRAME`]).
pub const DEFAULT_MAX_FRAME: usize = frame::DEFAULT_MAX_FRAME;

/// A receive buffer grown past this by one large frame is given back after it.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// Why a message could not be sent or received on a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A frame's length is over the limit (declared by the peer, or of a message to send);
    /// nothing of its body was read or sent.
    #[error("frame of {len} bytes exceeds the stream's limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// The peer finished the stream inside a frame.
    #[error("stream ended {missing} bytes short of a {len}-byte frame")]
    Truncated { len: usize, missing: usize },
    /// The frame's bytes are not a valid message.
    #[error("invalid message: {reason}")]
    Invalid { reason: String },
    /// The message could not be archived.
    #[error("cannot encode message: {reason}")]
    Encode { reason: String },
    /// The peer reset its sending half with this code.
    #[error("stream reset by peer with code {code}")]
    Reset { code: u64 },
    /// The peer stopped reading with this code.
    #[error("peer stopped reading with code {code}")]
    Stopped { code: u64 },
    /// The connection is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] quinn::ConnectionError),
    /// The stream was already finished, reset or failed.
    #[error("the stream is closed")]
    Closed,
}

impl StreamError {
    /// The code this side stops or resets the stream with after the error, if the error is a
    /// fault of the bytes received (`None` for errors the peer or the connection caused).
    pub fn code(&self) -> Option<u32> {
        match self {
            StreamError::TooLarge { .. } => Some(codes::FRAME_TOO_LARGE),
            StreamError::Truncated { .. } => Some(codes::FRAME_TRUNCATED),
            StreamError::Invalid { .. } => Some(codes::FRAME_INVALID),
            _ => None,
        }
    }
}

impl From<quinn::ReadError> for StreamError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => StreamError::Reset {
                code: code.into_inner(),
            },
            quinn::ReadError::ConnectionLost(e) => StreamError::ConnectionLost(e),
            _ => StreamError::Closed,
        }
    }
}

impl From<quinn::WriteError> for StreamError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => StreamError::Stopped {
                code: code.into_inner(),
            },
            quinn::WriteError::ConnectionLost(e) => StreamError::ConnectionLost(e),
            _ => StreamError::Closed,
        }
    }
}

impl From<FrameError> for StreamError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, limit } => StreamError::TooLarge { len, limit },
            FrameError::Truncated { len, missing } => StreamError::Truncated { len, missing },
            FrameError::Invalid(reason) => StreamError::Invalid { reason },
            FrameError::Encode(reason) => StreamError::Encode { reason },
            FrameError::Io(e) => StreamError::Invalid {
                reason: e.to_string(),
            },
        }
    }
}

/// The sending half of a message stream.
#[derive(Debug)]
pub struct MessageSender {
    send: quinn::SendStream,
    max_frame: usize,
}

impl MessageSender {
    /// Wraps `send`; messages over `max_frame` bytes are refused before anything is sent.
    pub fn new(send: quinn::SendStream, max_frame: usize) -> Self {
        MessageSender { send, max_frame }
    }

    /// Sends one message as one frame.
    pub async fn send(&mut self, msg: &Message) -> Result<(), StreamError> {
        let bytes = frame::encode(msg)?;
        let len = bytes.len() - 4;
        if len > self.max_frame {
            return Err(StreamError::TooLarge {
                len,
                limit: self.max_frame,
            });
        }
        self.send.write_all(&bytes).await?;
        Ok(())
    }

    /// Ends the stream after the frames sent so far.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.send.finish().map_err(|_| StreamError::Closed)
    }

    /// Abandons the stream with `code` (see [`codes`]); frames not yet delivered are dropped.
    pub fn reset(&mut self, code: u32) {
        // A stream already finished or reset has nothing left to abandon.
        let _ = self.send.reset(VarInt::from_u32(code));
    }

    /// Waits until the peer has received everything (`Ok(None)`) or stopped reading
    /// (`Ok(Some(code))`).
    pub async fn stopped(&self) -> Result<Option<u64>, StreamError> {
        match self.send.stopped().await {
            Ok(code) => Ok(code.map(VarInt::into_inner)),
            Err(quinn::StoppedError::ConnectionLost(e)) => Err(StreamError::ConnectionLost(e)),
            Err(quinn::StoppedError::ZeroRttRejected) => Err(StreamError::Closed),
        }
    }

    /// The stream's frame limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The QUIC stream, for raw writes.
    pub fn into_inner(self) -> quinn::SendStream {
        self.send
    }
}

/// The receiving half of a message stream.
#[derive(Debug)]
pub struct MessageReceiver {
    recv: quinn::RecvStream,
    max_frame: usize,
    buf: AlignedVec<16>,
    failed: bool,
}

impl MessageReceiver {
    /// Wraps `recv`; frames declared over `max_frame` bytes end the stream unread.
    pub fn new(recv: quinn::RecvStream, max_frame: usize) -> Self {
        MessageReceiver {
            recv,
            max_frame,
            buf: AlignedVec::new(),
            failed: false,
        }
    }

    /// The next message: `Ok(None)` when the peer finished the stream between frames.
    ///
    /// On a bad frame the stream is stopped with the error's [`code`](StreamError::code)
    /// and every later call returns [`StreamError::Closed`].
    ///
    /// Not cancel-safe: dropping the future in the middle of a frame loses the frame's bytes
    /// read so far, and the stream must then be abandoned ([`stop`](Self::stop)).
    pub async fn recv(&mut self) -> Result<Option<Message>, StreamError> {
        if self.failed {
            return Err(StreamError::Closed);
        }
        match self.next_frame().await {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = true;
                if let Some(code) = e.code() {
                    // Already closed if the peer reset it meanwhile: nothing left to stop.
                    let _ = self.recv.stop(VarInt::from_u32(code));
                }
                Err(e)
            }
        }
    }

    async fn next_frame(&mut self) -> Result<Option<Message>, StreamError> {
        let mut prefix = [0u8; 4];
        let mut got = 0;
        while got < prefix.len() {
            match self.recv.read(&mut prefix[got..]).await? {
                Some(n) => got += n,
                None if got == 0 => return Ok(None),
                None => {
                    return Err(StreamError::Truncated {
                        len: 4,
                        missing: 4 - got,
                    });
                }
            }
        }
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.max_frame {
            return Err(StreamError::TooLarge {
                len,
                limit: self.max_frame,
            });
        }
        if self.buf.capacity() > KEEP_BUFFER_BYTES.max(4 * len) {
            self.buf = AlignedVec::new();
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        match self.recv.read_exact(&mut self.buf[..]).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(read)) => {
                return Err(StreamError::Truncated {
                    len,
                    missing: len - read,
                });
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        Ok(Some(frame::decode_aligned(&self.buf)?))
    }

    /// Stops the stream with `code` (see [`codes`]): the peer's writes fail from now on.
    pub fn stop(&mut self, code: u32) {
        self.failed = true;
        // Already finished or reset: the peer is not sending anymore anyway.
        let _ = self.recv.stop(VarInt::from_u32(code));
    }

    /// The stream's frame limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The QUIC stream, for raw reads.
    pub fn into_inner(self) -> quinn::RecvStream {
        self.recv
    }
}

/// Wraps a QUIC bidirectional stream as a typed pair with one frame limit for both halves.
pub fn pair(
    (send, recv): (quinn::SendStream, quinn::RecvStream),
    max_frame: usize,
) -> (MessageSender, MessageReceiver) {
    (
        MessageSender::new(send, max_frame),
        MessageReceiver::new(recv, max_frame),
    )
}
