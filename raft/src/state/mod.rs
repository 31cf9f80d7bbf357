//! The replicated `ClusterState`: members, nodes, deployments, SLO classes, routing policy and a
//! version. Pure and deterministic: no I/O, no clock, no randomness, only ordered maps, so every
//! replica that applies the same commands in the same order holds byte-identical state.
//!
//! Inputs go through [`ClusterState::apply`] (in `apply.rs`), which validates a [`Command`] and
//! either changes the state and bumps `version`, or returns a [`Rejected`] and leaves the state
//! untouched. [`ClusterState::validate`] checks the invariants of a whole state; tests call it
//! after every step and `apply` calls it under `debug_assert!`.

mod apply;
mod command;
#[cfg(test)]
mod tests;

pub use apply::Rejected;
pub use command::{Applied, Command};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use strata_transport::proto::SloClass;

/// Longest id or name (node, model, member, SLO class), bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most nodes a cluster registers.
pub const MAX_NODES: usize = 4096;
/// Most members (router replicas) a cluster records.
pub const MAX_MEMBERS: usize = 16;
/// Most deployed models.
pub const MAX_DEPLOYMENTS: usize = 256;
/// Most instances one model may have.
pub const MAX_INSTANCES: usize = 1024;
/// Most pipeline stages one instance may have.
pub const MAX_STAGES: usize = 64;
/// Most SLO classes.
pub const MAX_SLO_CLASSES: usize = 64;

/// Raft id of a member (router replica).
pub type MemberId = u64;

/// The whole replicated state. See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    /// Router replicas by Raft id: their names and addresses (bookkeeping; Raft's own
    /// membership decides who votes).
    pub members: BTreeMap<MemberId, Member>,
    /// Registered nodes by id.
    pub nodes: BTreeMap<String, Node>,
    /// Deployed models by name.
    pub deployments: BTreeMap<String, Deployment>,
    /// SLO classes by name.
    pub slo: BTreeMap<String, SloClass>,
    /// How routers choose among instances.
    pub policy: Policy,
    /// Successful commands applied so far.
    pub version: u64,
}

/// A router replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: MemberId,
    /// Its certificate's member name.
    pub name: String,
    /// Where its Raft RPCs are served.
    pub raft_addr: SocketAddr,
    /// Where `strata admin` reaches it.
    pub admin_addr: SocketAddr,
}

/// A node that serves model stages. Health is runtime state and lives in the router, not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: String,
    /// Its QUIC endpoint.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate, hex.
    pub cert_fingerprint: String,
    pub hardware: Hardware,
    /// No new placements; in-flight requests finish.
    pub draining: bool,
}

/// What a node runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// `cpu`, `cuda` or `sim`.
    pub executor: String,
    /// Accelerators (0 for cpu).
    pub devices: u32,
    /// Memory per accelerator, bytes.
    pub device_memory_bytes: u64,
    /// Host memory, bytes.
    pub host_memory_bytes: u64,
}

/// A deployed model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The name clients use.
    pub model: String,
    /// Where nodes load it from: a model directory or a preset name.
    pub source: String,
    /// The model's transformer layer count; every instance's stages tile `0..layers`.
    pub layers: u32,
    pub instances: Vec<Instance>,
}

/// One serving copy of a model: its stages in pipeline order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub stages: Vec<Stage>,
}

/// A contiguous range of layers on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub node: String,
    pub layers: Range<u32>,
}

/// How routers choose among instances. Mirrors the router's `Policy` by name; raft does not
/// depend on the router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    RoundRobin,
    LeastLoaded,
    PrefixAffinity,
    #[default]
    PredictedTtft,
}

impl Policy {
    /// Every policy, in declaration order.
    pub const ALL: [Policy; 4] = [
        Policy::RoundRobin,
        Policy::LeastLoaded,
        Policy::PrefixAffinity,
        Policy::PredictedTtft,
    ];

    /// The name operators and configs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastLoaded => "least_loaded",
            Policy::PrefixAffinity => "prefix_affinity",
            Policy::PredictedTtft => "predicted_ttft",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = Rejected;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Rejected::UnknownPolicy {
                policy: s.to_owned(),
            })
    }
}

/// A state that breaks an invariant: a bug in `apply`, or a corrupt snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invariant {
    /// A map entry's key differs from the id inside it.
    #[error("{what} stored under key `{key}` names itself `{id}`")]
    KeyMismatch {
        what: &'static str,
        key: String,
        id: String,
    },
    /// An entry breaks a rule `apply` enforces (unknown node, bad layout, bad SLO, …).
    #[error(transparent)]
    Rule(#[from] Rejected),
}

impl ClusterState {
    /// Checks every invariant of the whole state. The rules are the ones `apply` enforces
    /// (apart from "no new placements on draining nodes", which only binds new deployments).
    pub fn validate(&self) -> Result<(), Invariant> {
        let mut names = BTreeSet::new();
        for (key, m) in &self.members {
            if *key != m.id {
                return Err(key_mismatch("member", key, &m.id));
            }
            apply::check_name("member", &m.name)?;
            if !names.insert(m.name.as_str()) {
                return Err(Rejected::DuplicateMemberName {
                    name: m.name.clone(),
                }
                .into());
            }
        }
        let mut addrs = BTreeMap::new();
        for (key, n) in &self.nodes {
            if *key != n.id {
                return Err(key_mismatch("node", key, &n.id));
            }
            apply::check_name("node", &n.id)?;
            if let Some(other) = addrs.insert(n.addr, n.id.as_str()) {
                return Err(Rejected::DuplicateNodeAddr {
                    node: n.id.clone(),
                    addr: n.addr,
                    other: other.to_owned(),
                }
                .into());
            }
        }
        for (key, d) in &self.deployments {
            if *key != d.model {
                return Err(key_mismatch("deployment", key, &d.model));
            }
            apply::check_layout(self, &d.model, d.layers, &d.instances, false)?;
        }
        for (key, c) in &self.slo {
            if *key != c.name {
                return Err(key_mismatch("SLO class", key, &c.name));
            }
            apply::check_slo(c)?;
        }
        let limits = [
            ("members", self.members.len(), MAX_MEMBERS),
            ("nodes", self.nodes.len(), MAX_NODES),
            ("deployments", self.deployments.len(), MAX_DEPLOYMENTS),
            ("SLO classes", self.slo.len(), MAX_SLO_CLASSES),
        ];
        for (what, count, limit) in limits {
            if count > limit {
                return Err(Rejected::TooMany {
                    what: what.to_owned(),
                    count,
                    limit,
                }
                .into());
            }
        }
        Ok(())
    }

    /// The deployments that place a stage on `node`, by model name.
    pub fn deployments_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.deployments
            .values()
            .filter(move |d| {
                d.instances
                    .iter()
                    .flat_map(|i| &i.stages)
                    .any(|s| s.node == node)
            })
            .map(|d| d.model.as_str())
    }
}

fn key_mismatch(what: &'static str, key: &impl ToString, id: &impl ToString) -> Invariant {
    Invariant::KeyMismatch {
        what,
        key: key.to_string(),
        id: id.to_string(),
    }
}
