//! Strata's transport: the vocabulary that crosses the wire between nodes and routers.
//!
//! Module map:
//! - [`proto`] — wire vocabulary shared by nodes and routers: ids, SLO classes, cost profiles,
//!   and the messages of node ↔ router streams.
//! - [`frame`] — length-prefixed rkyv frames, received aligned and validated before use.
//! - [`stream`] — typed message streams over QUIC (`MessageSender`, `MessageReceiver`); a bad
//!   frame ends its stream with a documented error code, never the connection.
//! - [`pool`] — `ConnectionPool`: one shared QUIC connection per peer, made on first use,
//!   replaced when closed, bounded in time and in peers.
//! - [`bulk`] — bulk block streams: equal-sized KV blocks on a stream of their own, received
//!   into the caller's buffer, checked end to end by an XXH64 checksum.
//! - [`checksum`] — XXH64 (streaming), the bulk transfers' checksum.
//! - [`tls`] — the cluster CA, member identities and their roles, mutual-TLS QUIC endpoints,
//!   and who is on the other end of a connection (`peer_identity`).
//! - [`tuning`] — `TransportTuning`: datagram sizes, MTU discovery, windows, congestion
//!   control and socket buffers, with a LAN (default) and a loopback profile.
//! - [`socket`] — UDP sockets with the buffer sizes a tuning asks for, and `GsoCapped`, which
//!   keeps quinn's segmentation-offload batches under the kernel's 64 KiB limit.
//! - [`vocab`] — tokenizers (HF `tokenizer.json` or bytes), shared by nodes and routers.
//!
//! Fault injection arrives with the end-to-end issue.

pub mod bulk;
pub mod checksum;
pub mod frame;
pub mod pool;
pub mod proto;
pub mod socket;
pub mod stream;
pub mod tls;
pub mod tuning;
pub mod vocab;
