//! Strata's transport: the vocabulary that crosses the wire between nodes and routers.
//!
//! Module map:
//! - [`proto`] — wire vocabulary shared by nodes and routers: ids, SLO classes, cost profiles.
//!
//! QUIC endpoints, framing and fault injection arrive with the end-to-end issue; everything here
//! is already used by the node crate.

pub mod proto;
