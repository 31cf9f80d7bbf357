//! Bulk block streams: a list of equal-sized KV blocks on a bidirectional stream of its own,
//! received straight into a buffer the caller provides.
//!
//! Wire format, little-endian, sender → receiver:
//!
//! ```text
//! header   16 B   magic "SKVB" (u32), version (u16), reserved (u16), count (u32), block_bytes (u32)
//! ids      8 B × count        block ids (u64)
//! blocks   block_bytes × count, in the order of the ids
//! trailer  8 B    XXH64 of everything before it
//! ```
//!
//! then the sender finishes its half. The receiver checks the header against its
//! [`BulkLimits`] before reading on, copies the blocks into the caller's buffer as they arrive
//! (one copy, hashed while still in cache), checks the trailer, and answers with the checksum
//! (8 B) before finishing its half; on any fault it stops and resets the stream with one of the
//! `BULK_*` [`codes`] and the sender's [`send_blocks`] fails with
//! [`BulkError::Rejected`]. The checksum travels after the blocks rather than in the header so
//! the sender hashes each block as it sends it, instead of reading the whole transfer once
//! before its first byte leaves.
//!
//! Blocks are sent as [`Bytes`] handed to quinn by reference (no copy on the sending side).
//! Endpoints made with [`tls`](crate::tls) carry large stream windows
//! ([`TransportTuning`](crate::tuning::TransportTuning)), sized for these streams.

use crate::checksum::Xxh64;
use crate::stream::codes;
use bytes::Bytes;
use quinn::VarInt;
use std::time::Duration;

/// "SKVB" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SKVB");
/// Version of the wire format.
pub const VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 16;
/// Bytes of the trailer.
pub const TRAILER_BYTES: usize = 8;

/// One KV block to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub id: u64,
    pub bytes: Bytes,
}

/// Bounds on a transfer, checked by the sender before sending and by the receiver on the
/// header before reading on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkLimits {
    pub max_blocks: u32,
    pub max_block_bytes: u32,
    /// Blocks × block size.
    pub max_transfer_bytes: u64,
    /// Time limit of each side's part: the sender's from its first byte to the receiver's
    /// answer, the receiver's for the header and ids, and again for the blocks.
    pub timeout_ms: u64,
}

impl Default for BulkLimits {
    fn default() -> Self {
        BulkLimits {
            max_blocks: 1 << 16,
            max_block_bytes: 16 << 20,
            max_transfer_bytes: 4 << 30,
            timeout_ms: 60_000,
        }
    }
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// A transfer of no blocks, or of empty blocks.
    #[error("a transfer needs at least one block of at least one byte")]
    Empty,
    /// More blocks than the limit.
    #[error("{count} blocks exceed the limit of {limit}")]
    TooManyBlocks { count: u64, limit: u32 },
    /// Blocks larger than the limit.
    #[error("blocks of {block_bytes} bytes exceed the limit of {limit}")]
    BlockTooLarge { block_bytes: u64, limit: u32 },
    /// The whole transfer is larger than the limit.
    #[error("a transfer of {bytes} bytes exceeds the limit of {limit}")]
    TransferTooLarge { bytes: u64, limit: u64 },
    /// Block `index` is not the size of the first.
    #[error("block {index} has {len} bytes, the first has {expected}")]
    UnequalBlocks {
        index: usize,
        len: usize,
        expected: usize,
    },
    /// The header is not a bulk header of this version.
    #[error("bad bulk header: {reason}")]
    BadHeader { reason: &'static str },
    /// The caller's buffer cannot hold the transfer.
    #[error("the transfer needs {needed} bytes, the buffer has {got}")]
    BufferTooSmall { needed: usize, got: usize },
    /// The stream ended early.
    #[error("stream ended {missing} bytes short of the transfer")]
    Truncated { missing: u64 },
    /// Bytes followed the trailer.
    #[error("bytes follow the transfer's trailer")]
    TrailingBytes,
    /// The data does not match the checksum that came with it.
    #[error("checksum mismatch: sent {sent:#018x}, received data hashes to {received:#018x}")]
    Checksum { sent: u64, received: u64 },
    /// The receiver refused the transfer with this code (see [`codes`]).
    #[error("the receiver refused the transfer with code {code}")]
    Rejected { code: u64 },
    /// The receiver answered with another checksum than the one sent.
    #[error("the receiver acknowledged {answered:#018x}, not {sent:#018x}")]
    WrongAnswer { sent: u64, answered: u64 },
    /// The transfer did not complete within [`BulkLimits::timeout_ms`].
    #[error("the transfer did not complete within {after_ms} ms")]
    Timeout { after_ms: u64 },
    /// The sender abandoned the stream with this code.
    #[error("the sender reset the stream with code {code}")]
    Reset { code: u64 },
    /// The connection is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] quinn::ConnectionError),
    /// The stream was already closed.
    #[error("the stream is closed")]
    Closed,
}

impl BulkError {
    /// The code the receiver ends the stream with after this error, if it is the fault of what
    /// was received.
    pub fn code(&self) -> Option<u32> {
        match self {
            BulkError::Empty
            | BulkError::TooManyBlocks { .. }
            | BulkError::BlockTooLarge { .. }
            | BulkError::TransferTooLarge { .. }
            | BulkError::BadHeader { .. } => Some(codes::BULK_HEADER),
            BulkError::BufferTooSmall { .. } => Some(codes::BULK_TOO_LARGE),
            BulkError::Truncated { .. } | BulkError::TrailingBytes => Some(codes::BULK_TRUNCATED),
            BulkError::Checksum { .. } => Some(codes::BULK_CHECKSUM),
            BulkError::Timeout { .. } => Some(codes::BULK_TIMEOUT),
            _ => None,
        }
    }

    fn read(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => BulkError::Reset {
                code: code.into_inner(),
            },
            quinn::ReadError::ConnectionLost(e) => BulkError::ConnectionLost(e),
            _ => BulkError::Closed,
        }
    }

    fn read_exact(e: quinn::ReadExactError, missing: u64) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(read) => BulkError::Truncated {
                missing: missing - read as u64,
            },
            quinn::ReadExactError::ReadError(e) => Self::read(e),
        }
    }

    /// A write or answer failure on the sending side.
    fn write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => BulkError::Rejected {
                code: code.into_inner(),
            },
            quinn::WriteError::ConnectionLost(e) => BulkError::ConnectionLost(e),
            _ => BulkError::Closed,
        }
    }
}

/// The shape of a transfer, as its header states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkHeader {
    pub count: u32,
    pub block_bytes: u32,
}

impl BulkHeader {
    /// Bytes of the blocks.
    pub fn transfer_bytes(&self) -> u64 {
        u64::from(self.count) * u64::from(self.block_bytes)
    }

    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_bytes.to_le_bytes());
        b
    }

    /// Parses a header and checks it against `limits`.
    pub fn parse(b: &[u8; HEADER_BYTES], limits: &BulkLimits) -> Result<Self, BulkError> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        if u32_at(0) != MAGIC {
            return Err(BulkError::BadHeader {
                reason: "not a bulk transfer (magic)",
            });
        }
        if u16::from_le_bytes([b[4], b[5]]) != VERSION || b[6] != 0 || b[7] != 0 {
            return Err(BulkError::BadHeader {
                reason: "unknown version",
            });
        }
        let h = BulkHeader {
            count: u32_at(8),
            block_bytes: u32_at(12),
        };
        h.check(limits)?;
        Ok(h)
    }

    /// Checks the shape against `limits`.
    pub fn check(&self, limits: &BulkLimits) -> Result<(), BulkError> {
        if self.count == 0 || self.block_bytes == 0 {
            return Err(BulkError::Empty);
        }
        if self.count > limits.max_blocks {
            return Err(BulkError::TooManyBlocks {
                count: u64::from(self.count),
                limit: limits.max_blocks,
            });
        }
        if self.block_bytes > limits.max_block_bytes {
            return Err(BulkError::BlockTooLarge {
                block_bytes: u64::from(self.block_bytes),
                limit: limits.max_block_bytes,
            });
        }
        if self.transfer_bytes() > limits.max_transfer_bytes {
            return Err(BulkError::TransferTooLarge {
                bytes: self.transfer_bytes(),
                limit: limits.max_transfer_bytes,
            });
        }
        Ok(())
    }
}

/// The shape of `blocks`: all of one size, within `limits`.
pub fn header_of(blocks: &[Block], limits: &BulkLimits) -> Result<BulkHeader, BulkError> {
    let first = blocks.first().ok_or(BulkError::Empty)?;
    let expected = first.bytes.len();
    if let Some((index, b)) = blocks
        .iter()
        .enumerate()
        .find(|(_, b)| b.bytes.len() != expected)
    {
        return Err(BulkError::UnequalBlocks {
            index,
            len: b.bytes.len(),
            expected,
        });
    }
    let count = u32::try_from(blocks.len()).map_err(|_| BulkError::TooManyBlocks {
        count: blocks.len() as u64,
        limit: limits.max_blocks,
    })?;
    let block_bytes = u32::try_from(expected).map_err(|_| BulkError::BlockTooLarge {
        block_bytes: expected as u64,
        limit: limits.max_block_bytes,
    })?;
    let h = BulkHeader { count, block_bytes };
    h.check(limits)?;
    Ok(h)
}

fn ids_bytes(ids: impl Iterator<Item = u64>) -> Vec<u8> {
    ids.flat_map(u64::to_le_bytes).collect()
}

/// What a finished transfer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub header: BulkHeader,
    pub checksum: u64,
}

/// Sends `blocks` on the bidirectional stream `(send, recv)` (one transfer per stream) and
/// waits for the receiver to confirm it got them intact, all within
/// [`BulkLimits::timeout_ms`].
pub async fn send_blocks(
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    blocks: &[Block],
    limits: &BulkLimits,
) -> Result<Transferred, BulkError> {
    let header = match header_of(blocks, limits) {
        Ok(h) => h,
        Err(e) => {
            // Nothing was sent: abandon the stream rather than finish it empty.
            send.reset(VarInt::from_u32(codes::DONE)).ok();
            return Err(e);
        }
    };
    let bound = Duration::from_millis(limits.timeout_ms);
    match tokio::time::timeout(bound, send_all(&mut send, &mut recv, header, blocks)).await {
        Ok(r) => r,
        Err(_) => {
            let code = VarInt::from_u32(codes::BULK_TIMEOUT);
            send.reset(code).ok();
            recv.stop(code).ok();
            Err(BulkError::Timeout {
                after_ms: limits.timeout_ms,
            })
        }
    }
}

async fn send_all(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    header: BulkHeader,
    blocks: &[Block],
) -> Result<Transferred, BulkError> {
    let mut hash = Xxh64::default();
    let head = header.to_bytes();
    let ids = ids_bytes(blocks.iter().map(|b| b.id));
    hash.update(&head);
    hash.update(&ids);
    send.write_chunk(Bytes::copy_from_slice(&head))
        .await
        .map_err(BulkError::write)?;
    send.write_chunk(Bytes::from(ids))
        .await
        .map_err(BulkError::write)?;
    for b in blocks {
        hash.update(&b.bytes);
        send.write_chunk(b.bytes.clone())
            .await
            .map_err(BulkError::write)?;
    }
    let checksum = hash.digest();
    send.write_all(&checksum.to_le_bytes())
        .await
        .map_err(BulkError::write)?;
    send.finish().map_err(|_| BulkError::Closed)?;

    let mut answer = [0u8; 8];
    match recv.read_exact(&mut answer).await {
        Ok(()) => {}
        // The receiver resets its half with the code of its refusal.
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            return Err(BulkError::Rejected {
                code: code.into_inner(),
            });
        }
        Err(e) => return Err(BulkError::read_exact(e, 8)),
    }
    let answered = u64::from_le_bytes(answer);
    if answered != checksum {
        return Err(BulkError::WrongAnswer {
            sent: checksum,
            answered,
        });
    }
    Ok(Transferred { header, checksum })
}

/// The receiving side of a transfer whose header and ids have arrived: the caller looks at
/// the shape, provides a buffer, and calls [`receive_into`](Self::receive_into).
#[derive(Debug)]
pub struct BulkReceiver {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    header: BulkHeader,
    ids: Vec<u64>,
    hash: Xxh64,
    timeout_ms: u64,
}

impl BulkReceiver {
    /// Reads and checks the header and the ids of a transfer arriving on `(send, recv)`,
    /// within [`BulkLimits::timeout_ms`].
    pub async fn accept(
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        limits: &BulkLimits,
    ) -> Result<BulkReceiver, BulkError> {
        let mut this = BulkReceiver {
            send,
            recv,
            header: BulkHeader {
                count: 0,
                block_bytes: 0,
            },
            ids: Vec::new(),
            hash: Xxh64::default(),
            timeout_ms: limits.timeout_ms,
        };
        let bound = Duration::from_millis(limits.timeout_ms);
        let read = match tokio::time::timeout(bound, this.read_head(limits)).await {
            Ok(r) => r,
            Err(_) => Err(BulkError::Timeout {
                after_ms: limits.timeout_ms,
            }),
        };
        match read {
            Ok(()) => Ok(this),
            Err(e) => Err(this.refuse(e)),
        }
    }

    async fn read_head(&mut self, limits: &BulkLimits) -> Result<(), BulkError> {
        let mut head = [0u8; HEADER_BYTES];
        self.recv
            .read_exact(&mut head)
            .await
            .map_err(|e| BulkError::read_exact(e, HEADER_BYTES as u64))?;
        self.header = BulkHeader::parse(&head, limits)?;
        let mut ids = vec![0u8; self.header.count as usize * 8];
        self.recv
            .read_exact(&mut ids)
            .await
            .map_err(|e| BulkError::read_exact(e, ids.len() as u64))?;
        self.hash.update(&head);
        self.hash.update(&ids);
        self.ids = ids
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(())
    }

    pub fn header(&self) -> BulkHeader {
        self.header
    }

    /// Block ids, in the order their bytes will land in the buffer.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Bytes the buffer must hold.
    pub fn transfer_bytes(&self) -> usize {
        self.header.transfer_bytes() as usize
    }

    /// Receives the blocks into `dest[..transfer_bytes()]` (block `i` at
    /// `i * block_bytes`), checks the checksum and confirms to the sender, within
    /// [`BulkLimits::timeout_ms`]. On error, the contents of `dest` are unspecified and the
    /// sender is told why.
    pub async fn receive_into(mut self, dest: &mut [u8]) -> Result<Transferred, BulkError> {
        let bound = Duration::from_millis(self.timeout_ms);
        let received = match tokio::time::timeout(bound, self.receive(dest)).await {
            Ok(r) => r,
            Err(_) => Err(BulkError::Timeout {
                after_ms: self.timeout_ms,
            }),
        };
        match received {
            Ok(t) => Ok(t),
            Err(e) => Err(self.refuse(e)),
        }
    }

    /// Refuses the transfer for `e`: stops and resets the stream with its code.
    pub fn refuse(&mut self, e: BulkError) -> BulkError {
        if let Some(code) = e.code() {
            let code = VarInt::from_u32(code);
            // Either half may already be closed by the peer; the code is then moot.
            let _ = self.recv.stop(code);
            let _ = self.send.reset(code);
        }
        e
    }

    async fn receive(&mut self, dest: &mut [u8]) -> Result<Transferred, BulkError> {
        let needed = self.transfer_bytes();
        let got = dest.len();
        let dest = dest
            .get_mut(..needed)
            .ok_or(BulkError::BufferTooSmall { needed, got })?;
        let mut filled = 0;
        while filled < needed {
            let chunk = self
                .recv
                .read_chunk(needed - filled, true)
                .await
                .map_err(BulkError::read)?
                .ok_or(BulkError::Truncated {
                    missing: (needed - filled + TRAILER_BYTES) as u64,
                })?;
            let landed = &mut dest[filled..filled + chunk.bytes.len()];
            landed.copy_from_slice(&chunk.bytes);
            self.hash.update(landed);
            filled += chunk.bytes.len();
        }
        let mut trailer = [0u8; TRAILER_BYTES];
        self.recv
            .read_exact(&mut trailer)
            .await
            .map_err(|e| BulkError::read_exact(e, TRAILER_BYTES as u64))?;
        if self
            .recv
            .read_chunk(1, true)
            .await
            .map_err(BulkError::read)?
            .is_some()
        {
            return Err(BulkError::TrailingBytes);
        }
        let sent = u64::from_le_bytes(trailer);
        let received = self.hash.digest();
        if sent != received {
            return Err(BulkError::Checksum { sent, received });
        }
        self.send
            .write_all(&received.to_le_bytes())
            .await
            .map_err(BulkError::write)?;
        self.send.finish().map_err(|_| BulkError::Closed)?;
        Ok(Transferred {
            header: self.header,
            checksum: received,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, size: usize) -> Vec<Block> {
        (0..n)
            .map(|i| Block {
                id: i as u64,
                bytes: Bytes::from(vec![i as u8; size]),
            })
            .collect()
    }

    #[test]
    fn headers_round_trip_and_are_checked() {
        let limits = BulkLimits::default();
        let h = BulkHeader {
            count: 3,
            block_bytes: 4096,
        };
        assert_eq!(BulkHeader::parse(&h.to_bytes(), &limits), Ok(h));
        let mut bad = h.to_bytes();
        bad[0] ^= 1;
        assert!(matches!(
            BulkHeader::parse(&bad, &limits),
            Err(BulkError::BadHeader { .. })
        ));
        let small = BulkLimits {
            max_blocks: 2,
            ..limits.clone()
        };
        assert_eq!(
            BulkHeader::parse(&h.to_bytes(), &small),
            Err(BulkError::TooManyBlocks { count: 3, limit: 2 })
        );
        let small = BulkLimits {
            max_transfer_bytes: 8192,
            ..limits
        };
        assert!(matches!(
            h.check(&small),
            Err(BulkError::TransferTooLarge { bytes: 12288, .. })
        ));
    }

    #[test]
    fn blocks_must_be_equal_and_present() {
        let limits = BulkLimits::default();
        assert_eq!(header_of(&[], &limits), Err(BulkError::Empty));
        let mut b = blocks(3, 64);
        b[2].bytes = Bytes::from(vec![0; 63]);
        assert_eq!(
            header_of(&b, &limits),
            Err(BulkError::UnequalBlocks {
                index: 2,
                len: 63,
                expected: 64
            })
        );
        assert_eq!(
            header_of(&blocks(3, 64), &limits),
            Ok(BulkHeader {
                count: 3,
                block_bytes: 64
            })
        );
    }
}
