//! Strata's router: the OpenAI-compatible HTTP API (`http`), the cluster view built from the
//! local Raft replica and node load reports (`view`), the TTFT predictor (`predict`), placement
//! policies with early rejection (`place`) and forwarding with failover (`forward`).
//!
//! Module map: empty until the end-to-end issue lands; the design is in `DESIGN.md`. The router
//! knows nodes only through the wire vocabulary of `strata-transport`, never through the node
//! crate.
