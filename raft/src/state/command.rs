//! The commands the Raft log carries, and what applying one reports.

use super::{Hardware, Instance, Member, MemberId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use strata_transport::proto::SloClass;

/// A change to the [`ClusterState`](super::ClusterState), validated in `apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Registers a node, or re-registers one after a restart: same id and certificate
    /// fingerprint updates its address and hardware and keeps its draining flag.
    RegisterNode {
        id: String,
        addr: SocketAddr,
        cert_fingerprint: String,
        hardware: Hardware,
    },
    /// Forgets a node no deployment uses.
    RemoveNode { id: String },
    /// No new placements on the node; in-flight requests finish.
    Drain { id: String },
    /// Placements on the node again.
    Undrain { id: String },
    /// Deploys a model, replacing any earlier deployment of the same name.
    Deploy {
        model: String,
        /// A model directory or preset name.
        source: String,
        /// The model's layer count; every instance's stages tile `0..layers`.
        layers: u32,
        instances: Vec<Instance>,
    },
    /// Removes a model.
    Undeploy { model: String },
    /// Adds or replaces an SLO class.
    SetSlo { class: SloClass },
    /// Removes an SLO class.
    RemoveSlo { name: String },
    /// Sets the routing policy by name (`round_robin`, `least_loaded`, `prefix_affinity`,
    /// `predicted_ttft`).
    SetPolicy { policy: String },
    /// Records a router replica's name and addresses.
    AddMember { member: Member },
    /// Forgets a router replica's record.
    RemoveMember { id: MemberId },
}

/// A command that took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The state's version after this command.
    pub version: u64,
}
