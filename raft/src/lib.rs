//! Strata's control plane: openraft 0.9 (`storage-v2`) with the log, vote and state machine in
//! redb, a `RaftNetwork` over the transport crate's QUIC endpoints, and the `ClusterState` state
//! machine (members, nodes, deployments, SLO classes, routing policy) whose `apply` validates
//! every command.
//!
//! Module map:
//! - `state` — `ClusterState`, the `Command`s the log carries and their deterministic `apply`
//!   (sans-IO: no clock, no I/O; rejects a bad command the same way on every replica).
//! - `store` — openraft's type config and durable storage on redb (one file per replica): the
//!   log and vote (`LogStore`), the applied state and its snapshots (`StateMachineStore`).
//! - `api` — the control API's requests and answers (`strata admin`, joins, forwarding).
//! - `control` — a running replica: Raft on redb, its control endpoint, authorization by
//!   certificate role, forwarding to the leader, membership changes, node registration.
//! - `network` — openraft's `RaftNetwork` over QUIC with mutual TLS: the caller side
//!   (`QuicNetworkFactory`) and the callee side (`serve_raft`), a stream per RPC.

pub mod api;
pub mod control;
pub mod network;
pub mod state;
pub mod store;
