//! Strata's control plane: openraft 0.9 (`storage-v2`) with the log, vote and state machine in
//! redb, a `RaftNetwork` over the transport crate's QUIC endpoints, and the `ClusterState` state
//! machine (members, nodes, deployments, SLO classes, routing policy) whose `apply` validates
//! every command.
//!
//! Module map: empty until the control-plane issue lands; the design is in `DESIGN.md`.
