//! `ClusterState::apply`: every command is checked against the current state first, and only a
//! command that passes every check changes anything. A rejection depends only on the state and
//! the command, so every replica rejects the same commands with the same error.

use super::{
    Applied, ClusterState, Command, Deployment, Instance, MAX_DEPLOYMENTS, MAX_INSTANCES,
    MAX_MEMBERS, MAX_NAME_BYTES, MAX_NODES, MAX_SLO_CLASSES, MAX_STAGES, Member, MemberId, Node,
    Policy,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use strata_transport::proto::{SloClass, SloError};

/// Why a command was not applied. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejected {
    /// An id or name is empty or too long.
    #[error("{what} name {name:?} must be 1 to {max} bytes")]
    BadName {
        what: String,
        name: String,
        max: usize,
    },
    /// A limit on the state's size would be exceeded.
    #[error("too many {what}: {count} (limit {limit})")]
    TooMany {
        what: String,
        count: usize,
        limit: usize,
    },
    /// No node has this id.
    #[error("unknown node `{node}`")]
    UnknownNode { node: String },
    /// A node with this id is registered with another certificate.
    #[error("node `{node}` is already registered with certificate {existing}, not {given}")]
    DuplicateNode {
        node: String,
        existing: String,
        given: String,
    },
    /// Another node already has this address.
    #[error("node `{node}`: address {addr} belongs to node `{other}`")]
    DuplicateNodeAddr {
        node: String,
        addr: SocketAddr,
        other: String,
    },
    /// A certificate fingerprint that is empty or too long.
    #[error("node `{node}`: bad certificate fingerprint {fingerprint:?}")]
    BadFingerprint { node: String, fingerprint: String },
    /// The node still serves a deployment.
    #[error("node `{node}` serves model `{model}`; undeploy or redeploy it first")]
    NodeInUse { node: String, model: String },
    /// A new deployment places a stage on a draining node.
    #[error("model `{model}`: node `{node}` is draining")]
    NodeDraining { model: String, node: String },
    /// No model of this name is deployed.
    #[error("unknown model `{model}`")]
    UnknownModel { model: String },
    /// A model with no layers.
    #[error("model `{model}`: layer count must be positive")]
    NoLayers { model: String },
    /// A deployment with no instances.
    #[error("model `{model}`: no instances")]
    NoInstances { model: String },
    /// An instance with no stages.
    #[error("model `{model}`: instance {instance} has no stages")]
    EmptyInstance { model: String, instance: usize },
    /// A stage with an empty or reversed layer range.
    #[error("model `{model}`: instance {instance} stage {stage}: empty layer range {start}..{end}")]
    EmptyStage {
        model: String,
        instance: usize,
        stage: usize,
        start: u32,
        end: u32,
    },
    /// A stage starts after the previous one ends: layers `expected..start` are missing.
    #[error(
        "model `{model}`: instance {instance} stage {stage} starts at layer {start}, leaving a gap from {expected}"
    )]
    LayerGap {
        model: String,
        instance: usize,
        stage: usize,
        expected: u32,
        start: u32,
    },
    /// A stage starts before the previous one ends.
    #[error(
        "model `{model}`: instance {instance} stage {stage} starts at layer {start}, overlapping layers up to {expected}"
    )]
    LayerOverlap {
        model: String,
        instance: usize,
        stage: usize,
        expected: u32,
        start: u32,
    },
    /// The last stage does not end at the model's layer count.
    #[error("model `{model}`: instance {instance} covers layers 0..{end}, the model has {layers}")]
    LayersNotCovered {
        model: String,
        instance: usize,
        end: u32,
        layers: u32,
    },
    /// One instance places two stages on the same node.
    #[error("model `{model}`: instance {instance} uses node `{node}` twice")]
    NodeTwiceInInstance {
        model: String,
        instance: usize,
        node: String,
    },
    /// An SLO class with a latency target that is not positive and finite. `value` is the
    /// target as text (`NaN` and infinities have no JSON number).
    #[error("SLO class `{name}`: {field} must be a positive number of milliseconds, got {value}")]
    BadSloTarget {
        name: String,
        field: String,
        value: String,
    },
    /// No SLO class of this name.
    #[error("unknown SLO class `{name}`")]
    UnknownSlo { name: String },
    /// A routing policy name that is not one of the four.
    #[error(
        "unknown routing policy `{policy}` (round_robin, least_loaded, prefix_affinity, predicted_ttft)"
    )]
    UnknownPolicy { policy: String },
    /// A member with this Raft id is already recorded.
    #[error("member {id} is already recorded")]
    DuplicateMember { id: MemberId },
    /// Another member already has this name.
    #[error("member name `{name}` is already used")]
    DuplicateMemberName { name: String },
    /// No member with this Raft id.
    #[error("unknown member {id}")]
    UnknownMember { id: MemberId },
}

impl ClusterState {
    /// Validates `cmd` and applies it. On `Err` the state is exactly as before.
    pub fn apply(&mut self, cmd: Command) -> Result<Applied, Rejected> {
        self.check(&cmd)?;
        self.commit(cmd);
        self.version += 1;
        debug_assert_eq!(self.validate(), Ok(()), "apply broke an invariant");
        Ok(Applied {
            version: self.version,
        })
    }

    /// Every check `cmd` must pass; reads the state only.
    fn check(&self, cmd: &Command) -> Result<(), Rejected> {
        match cmd {
            Command::RegisterNode {
                id,
                addr,
                cert_fingerprint,
                ..
            } => {
                check_name("node", id)?;
                if cert_fingerprint.is_empty() || cert_fingerprint.len() > MAX_NAME_BYTES {
                    return Err(Rejected::BadFingerprint {
                        node: id.clone(),
                        fingerprint: cert_fingerprint.clone(),
                    });
                }
                match self.nodes.get(id) {
                    Some(n) if n.cert_fingerprint != *cert_fingerprint => {
                        return Err(Rejected::DuplicateNode {
                            node: id.clone(),
                            existing: n.cert_fingerprint.clone(),
                            given: cert_fingerprint.clone(),
                        });
                    }
                    Some(_) => {}
                    None => check_count("nodes", self.nodes.len() + 1, MAX_NODES)?,
                }
                if let Some(other) = self.nodes.values().find(|n| n.addr == *addr && n.id != *id) {
                    return Err(Rejected::DuplicateNodeAddr {
                        node: id.clone(),
                        addr: *addr,
                        other: other.id.clone(),
                    });
                }
                Ok(())
            }
            Command::RemoveNode { id } => {
                self.node(id)?;
                if let Some(model) = self.deployments_on(id).next() {
                    return Err(Rejected::NodeInUse {
                        node: id.clone(),
                        model: model.to_owned(),
                    });
                }
                Ok(())
            }
            Command::Drain { id } | Command::Undrain { id } => self.node(id).map(drop),
            Command::Deploy {
                model,
                layers,
                instances,
                source,
            } => {
                check_name("model", model)?;
                if source.len() > 4096 {
                    return Err(Rejected::BadName {
                        what: "model source".into(),
                        name: source.clone(),
                        max: 4096,
                    });
                }
                if !self.deployments.contains_key(model) {
                    check_count("deployments", self.deployments.len() + 1, MAX_DEPLOYMENTS)?;
                }
                check_layout(self, model, *layers, instances, true)
            }
            Command::Undeploy { model } => {
                if self.deployments.contains_key(model) {
                    Ok(())
                } else {
                    Err(Rejected::UnknownModel {
                        model: model.clone(),
                    })
                }
            }
            Command::SetSlo { class } => {
                check_slo(class)?;
                if !self.slo.contains_key(&class.name) {
                    check_count("SLO classes", self.slo.len() + 1, MAX_SLO_CLASSES)?;
                }
                Ok(())
            }
            Command::RemoveSlo { name } => {
                if self.slo.contains_key(name) {
                    Ok(())
                } else {
                    Err(Rejected::UnknownSlo { name: name.clone() })
                }
            }
            Command::SetPolicy { policy } => policy.parse::<Policy>().map(drop),
            Command::AddMember { member } => {
                check_name("member", &member.name)?;
                if self.members.contains_key(&member.id) {
                    return Err(Rejected::DuplicateMember { id: member.id });
                }
                if self.members.values().any(|m| m.name == member.name) {
                    return Err(Rejected::DuplicateMemberName {
                        name: member.name.clone(),
                    });
                }
                check_count("members", self.members.len() + 1, MAX_MEMBERS)
            }
            Command::RemoveMember { id } => {
                if self.members.contains_key(id) {
                    Ok(())
                } else {
                    Err(Rejected::UnknownMember { id: *id })
                }
            }
        }
    }

    /// Applies a command that passed `check`.
    fn commit(&mut self, cmd: Command) {
        match cmd {
            Command::RegisterNode {
                id,
                addr,
                cert_fingerprint,
                hardware,
            } => {
                let draining = self.nodes.get(&id).is_some_and(|n| n.draining);
                self.nodes.insert(
                    id.clone(),
                    Node {
                        id,
                        addr,
                        cert_fingerprint,
                        hardware,
                        draining,
                    },
                );
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(&id);
            }
            Command::Drain { id } => self.set_draining(&id, true),
            Command::Undrain { id } => self.set_draining(&id, false),
            Command::Deploy {
                model,
                source,
                layers,
                instances,
            } => {
                self.deployments.insert(
                    model.clone(),
                    Deployment {
                        model,
                        source,
                        layers,
                        instances,
                    },
                );
            }
            Command::Undeploy { model } => {
                self.deployments.remove(&model);
            }
            Command::SetSlo { class } => {
                self.slo.insert(class.name.clone(), class);
            }
            Command::RemoveSlo { name } => {
                self.slo.remove(&name);
            }
            Command::SetPolicy { policy } => {
                // `check` parsed it already; keep the old policy rather than panic if not.
                if let Ok(p) = policy.parse() {
                    self.policy = p;
                }
            }
            Command::AddMember { member } => {
                let Member { id, .. } = member;
                self.members.insert(id, member);
            }
            Command::RemoveMember { id } => {
                self.members.remove(&id);
            }
        }
    }

    fn node(&self, id: &str) -> Result<&Node, Rejected> {
        self.nodes.get(id).ok_or_else(|| Rejected::UnknownNode {
            node: id.to_owned(),
        })
    }

    fn set_draining(&mut self, id: &str, draining: bool) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.draining = draining;
        }
    }
}

pub(super) fn check_name(what: &str, name: &str) -> Result<(), Rejected> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Rejected::BadName {
            what: what.to_owned(),
            name: name.to_owned(),
            max: MAX_NAME_BYTES,
        });
    }
    Ok(())
}

fn check_count(what: &str, count: usize, limit: usize) -> Result<(), Rejected> {
    if count > limit {
        return Err(Rejected::TooMany {
            what: what.to_owned(),
            count,
            limit,
        });
    }
    Ok(())
}

pub(super) fn check_slo(class: &SloClass) -> Result<(), Rejected> {
    check_name("SLO class", &class.name)?;
    class.validate().map_err(|e| match e {
        SloError::BadTarget { name, field, value } => Rejected::BadSloTarget {
            name,
            field: field.to_owned(),
            value: value.to_string(),
        },
    })
}

/// Checks that `instances` is a valid layout of a `layers`-layer model on `state`'s nodes: at
/// least one instance, each a non-empty list of stages on distinct, known nodes whose layer
/// ranges tile `0..layers` in order. `new` also refuses draining nodes.
pub(super) fn check_layout(
    state: &ClusterState,
    model: &str,
    layers: u32,
    instances: &[Instance],
    new: bool,
) -> Result<(), Rejected> {
    let model_owned = || model.to_owned();
    if layers == 0 {
        return Err(Rejected::NoLayers {
            model: model_owned(),
        });
    }
    if instances.is_empty() {
        return Err(Rejected::NoInstances {
            model: model_owned(),
        });
    }
    check_count("instances", instances.len(), MAX_INSTANCES)?;
    for (i, inst) in instances.iter().enumerate() {
        if inst.stages.is_empty() {
            return Err(Rejected::EmptyInstance {
                model: model_owned(),
                instance: i,
            });
        }
        check_count("stages", inst.stages.len(), MAX_STAGES)?;
        let mut used = BTreeSet::new();
        let mut expected = 0;
        for (s, stage) in inst.stages.iter().enumerate() {
            let node = state.node(&stage.node)?;
            if new && node.draining {
                return Err(Rejected::NodeDraining {
                    model: model_owned(),
                    node: node.id.clone(),
                });
            }
            if !used.insert(stage.node.as_str()) {
                return Err(Rejected::NodeTwiceInInstance {
                    model: model_owned(),
                    instance: i,
                    node: stage.node.clone(),
                });
            }
            let (start, end) = (stage.layers.start, stage.layers.end);
            if start >= end {
                return Err(Rejected::EmptyStage {
                    model: model_owned(),
                    instance: i,
                    stage: s,
                    start,
                    end,
                });
            }
            if start > expected {
                return Err(Rejected::LayerGap {
                    model: model_owned(),
                    instance: i,
                    stage: s,
                    expected,
                    start,
                });
            }
            if start < expected {
                return Err(Rejected::LayerOverlap {
                    model: model_owned(),
                    instance: i,
                    stage: s,
                    expected,
                    start,
                });
            }
            expected = end;
        }
        if expected != layers {
            return Err(Rejected::LayersNotCovered {
                model: model_owned(),
                instance: i,
                end: expected,
                layers,
            });
        }
    }
    Ok(())
}
