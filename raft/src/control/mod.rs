//! A running control-plane replica: openraft on its redb file, its QUIC endpoint serving Raft
//! RPCs, the control API and node registration, and the way it enters the cluster.
//!
//! - [`replica`] — [`Replica`]: start (`Bootstrap::Init`, `Join`, or resume from disk),
//!   the applied-state watch the data plane reads, shutdown.
//! - [`service`] — [`ControlService`]: authorization by certificate role, running requests on
//!   the leader or forwarding them there, status, node registration.
//! - [`membership`] — joins, learners, promotion, removal, leadership transfer, snapshots.
//! - [`client`] — [`ControlClient`]: the caller side, used by replicas and `strata admin`.

mod client;
mod membership;
mod replica;
mod service;

pub use client::{CallError, ClientError, ControlClient};
pub use replica::{Bootstrap, Replica, ReplicaConfig, ReplicaError};
pub use service::ControlService;
