//! What the forwarder serves, followed from the control plane's applied state: a link per
//! registered node, the deployed instances and their models, the policy. Updated by one task
//! on every change of the local replica's state; requests read it and never wait on Raft.

use super::link::{LinkEnv, NodeLink, lock};
use crate::place::Placer;
use crate::view::{ClusterView, InstanceSpec};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use strata_raft::state::ClusterState;
use tokio_util::sync::CancellationToken;

/// A running link and what stops it.
struct LinkHandle {
    link: Arc<NodeLink>,
    stop: CancellationToken,
}

/// See the module doc.
#[derive(Default)]
pub struct Topology {
    links: HashMap<String, LinkHandle>,
    /// Instance id → its stage nodes in pipeline order (the driver first).
    stages: HashMap<String, Vec<String>>,
    models: BTreeSet<String>,
}

impl Topology {
    pub fn link(&self, node: &str) -> Option<&Arc<NodeLink>> {
        self.links.get(node).map(|h| &h.link)
    }

    /// The links of `instance`'s driver and of its other stage nodes (those linked).
    pub fn stage_links(&self, instance: &str) -> Option<(Arc<NodeLink>, Vec<Arc<NodeLink>>)> {
        let (driver, workers) = self.stages.get(instance)?.split_first()?;
        let workers = workers
            .iter()
            .filter_map(|n| self.link(n).cloned())
            .collect();
        Some((self.link(driver)?.clone(), workers))
    }

    pub fn has_model(&self, model: &str) -> bool {
        self.models.contains(model)
    }

    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(String::as_str)
    }

    /// Stops every link.
    pub fn stop_all(&mut self) {
        for (_, h) in self.links.drain() {
            h.stop.cancel();
        }
    }
}

/// The instances `state` deploys.
pub fn instance_specs(state: &ClusterState) -> Vec<InstanceSpec> {
    let mut specs = Vec::new();
    for d in state.deployments.values() {
        for inst in &d.instances {
            let Some(driver) = inst.stages.first() else {
                continue; // `apply` refuses empty instances
            };
            let nodes: Vec<&str> = inst.stages.iter().map(|s| s.node.as_str()).collect();
            specs.push(InstanceSpec {
                id: nodes.join("+"),
                model: d.model.clone(),
                driver: driver.node.clone(),
                workers: nodes[1..].iter().map(|n| n.to_string()).collect(),
                draining: nodes
                    .iter()
                    .any(|n| state.nodes.get(*n).is_some_and(|n| n.draining)),
            });
        }
    }
    specs
}

/// Brings `topology`, `view` and `placer` in line with `state`: starts links to new nodes (or
/// nodes whose address changed), stops links to removed ones, and replaces the instance set.
pub fn apply(
    state: &ClusterState,
    topology: &Mutex<Topology>,
    view: &Mutex<ClusterView>,
    placer: &Mutex<Placer>,
    env: &Arc<LinkEnv>,
    shutdown: &CancellationToken,
) {
    let specs = instance_specs(state);
    let mut topo = lock(topology);
    topo.links.retain(|id, h| {
        let keep = state.nodes.get(id).is_some_and(|n| n.addr == h.link.addr);
        if !keep {
            tracing::info!(node = %id, "node removed or moved: closing its link");
            h.stop.cancel();
        }
        keep
    });
    for node in state.nodes.values() {
        if topo.links.contains_key(&node.id) {
            continue;
        }
        let link = NodeLink::new(node.id.clone(), node.addr);
        let stop = shutdown.child_token();
        tokio::spawn(link.clone().run(env.clone(), stop.clone()));
        topo.links
            .insert(node.id.clone(), LinkHandle { link, stop });
    }
    topo.stages = specs
        .iter()
        .map(|s| {
            let nodes = std::iter::once(&s.driver).chain(&s.workers).cloned();
            (s.id.clone(), nodes.collect())
        })
        .collect();
    topo.models = state.deployments.keys().cloned().collect();
    let known = |node: &str| topo.link(node).and_then(|l| l.seen().info);
    lock(view).set_instances(specs.iter().cloned(), known);
    drop(topo);
    let mut placer = lock(placer);
    if placer.policy() != state.policy {
        tracing::info!(policy = %state.policy, "routing policy changed");
        placer.set_policy(state.policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_raft::state::{Deployment, Hardware, Instance, Node, Stage};

    #[test]
    fn a_pipeline_is_named_by_its_stages_driven_by_stage_0_and_drained_by_any() {
        let stage = |node: &str, layers| Stage {
            node: node.into(),
            layers,
        };
        let mut state = ClusterState::default();
        state.deployments.insert(
            "tiny".into(),
            Deployment {
                model: "tiny".into(),
                source: "tiny".into(),
                layers: 4,
                instances: vec![
                    Instance {
                        stages: vec![
                            stage("node-1", 0..2),
                            stage("node-1-s1", 2..3),
                            stage("node-1-s2", 3..4),
                        ],
                    },
                    Instance {
                        stages: vec![stage("node-2", 0..4)],
                    },
                ],
            },
        );
        state.nodes.insert(
            "node-1-s2".into(),
            Node {
                id: "node-1-s2".into(),
                addr: "127.0.0.1:7003".parse().unwrap(),
                cert_fingerprint: String::new(),
                hardware: Hardware::default(),
                draining: true,
            },
        );
        let specs = instance_specs(&state);
        assert_eq!(
            specs,
            [
                InstanceSpec {
                    id: "node-1+node-1-s1+node-1-s2".into(),
                    model: "tiny".into(),
                    driver: "node-1".into(),
                    workers: vec!["node-1-s1".into(), "node-1-s2".into()],
                    draining: true,
                },
                InstanceSpec {
                    id: "node-2".into(),
                    model: "tiny".into(),
                    driver: "node-2".into(),
                    workers: Vec::new(),
                    draining: false,
                },
            ]
        );
    }
}
