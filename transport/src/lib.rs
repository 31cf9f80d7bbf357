//! Strata's transport: the vocabulary that crosses the wire between nodes and routers.
//!
//! Module map:
//! - [`proto`] — wire vocabulary shared by nodes and routers: ids, SLO classes, cost profiles,
//!   and the messages of node ↔ router streams.
//! - [`frame`] — length-prefixed rkyv frames, received aligned and validated before use.
//! - [`tls`] — the cluster CA, member identities, and mutual-TLS QUIC endpoints.
//! - [`tuning`] — `TransportTuning`: datagram sizes, MTU discovery, windows, congestion
//!   control and socket buffers, with a LAN (default) and a loopback profile.
//! - [`socket`] — UDP sockets with the buffer sizes a tuning asks for.
//! - [`vocab`] — tokenizers (HF `tokenizer.json` or bytes), shared by nodes and routers.
//!
//! The connection pool, bulk block streams and fault injection arrive with the end-to-end issue.

pub mod frame;
pub mod proto;
pub mod socket;
pub mod tls;
pub mod tuning;
pub mod vocab;
