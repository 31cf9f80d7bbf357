//! Which node processes `strata up` starts and which layers each runs: `--nodes N` instances,
//! each a chain of `--stages P` stage nodes over contiguous layer ranges.
//!
//! Names: instance `i` (from 1) is driven by `node-{i}` (stage 0, which serves requests);
//! its stage `k` ≥ 1 runs on `node-{i}-s{k}`. The model's layers are split evenly, the earlier
//! stages taking one more layer each while a remainder lasts. With one stage an instance is
//! the plain single-node `node-{i}` of a cluster without pipelines.

use anyhow::bail;
use std::net::SocketAddr;
use std::ops::Range;
use strata_node::pipeline::ChainLayout;
use strata_raft::state::{Instance, Stage};

/// One stage node to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    /// Its node id, certificate member name and file stem of its config and log.
    pub id: String,
    pub layers: Range<u32>,
}

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Every instance's stages in pipeline order (stage 0 drives).
    pub instances: Vec<Vec<StagePlan>>,
    /// Stages per instance.
    pub stages: usize,
}

impl Layout {
    /// `nodes` instances of `stages` stages each over a model of `layers` layers. Refuses no
    /// instance, no stage, and more stages than layers (a stage without a layer).
    pub fn new(nodes: usize, stages: usize, layers: u32, model: &str) -> anyhow::Result<Layout> {
        if nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        if stages == 0 {
            bail!("--stages must be at least 1");
        }
        if stages as u64 > u64::from(layers) {
            bail!(
                "--stages {stages} is more than the {layers} layers of `{model}`: every stage needs at least one layer"
            );
        }
        let ranges = split_layers(layers, stages as u32);
        let instances = (1..=nodes)
            .map(|i| {
                ranges
                    .iter()
                    .enumerate()
                    .map(|(k, layers)| StagePlan {
                        id: stage_id(i, k),
                        layers: layers.clone(),
                    })
                    .collect()
            })
            .collect();
        Ok(Layout { instances, stages })
    }

    /// Whether instances are pipelines (more than one stage).
    pub fn pipelined(&self) -> bool {
        self.stages > 1
    }

    /// Every stage node, instance by instance, drivers first.
    pub fn members(&self) -> impl Iterator<Item = &StagePlan> {
        self.instances.iter().flatten()
    }

    /// Node processes in all.
    pub fn processes(&self) -> usize {
        self.instances.len() * self.stages
    }

    /// Layers of the largest stage.
    pub fn max_stage_layers(&self) -> u32 {
        self.members()
            .map(|s| s.layers.len() as u32)
            .max()
            .unwrap_or(0)
    }

    /// An instance's id as routers name it: its stage nodes joined by `+`.
    pub fn instance_id(stages: &[StagePlan]) -> String {
        let ids: Vec<&str> = stages.iter().map(|s| s.id.as_str()).collect();
        ids.join("+")
    }

    /// The instances as the control plane deploys them.
    pub fn deployment(&self) -> Vec<Instance> {
        self.instances
            .iter()
            .map(|stages| Instance {
                stages: stages
                    .iter()
                    .map(|s| Stage {
                        node: s.id.clone(),
                        layers: s.layers.clone(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Node id of stage `k` of instance `i`.
fn stage_id(i: usize, k: usize) -> String {
    if k == 0 {
        format!("node-{i}")
    } else {
        format!("node-{i}-s{k}")
    }
}

/// `0..layers` in `stages` contiguous ranges, sizes differing by at most one, larger first.
/// `1 ≤ stages ≤ layers`.
pub fn split_layers(layers: u32, stages: u32) -> Vec<Range<u32>> {
    // `Layout::new` refuses no stage and more stages than layers before it asks.
    ChainLayout::even(layers as usize, stages as usize)
        .map(|c| {
            c.stages()
                .iter()
                .map(|r| r.start as u32..r.end as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// The `[stage]` section of a stage node's config: its layers and, unless it is the last
/// stage, the next stage's address and certificate member name. Empty when the instance is a
/// single node (no pipeline).
pub fn stage_section(
    layout: &Layout,
    stage: &StagePlan,
    next: Option<(SocketAddr, &str)>,
) -> String {
    if !layout.pipelined() {
        return String::new();
    }
    let mut s = format!(
        "\n[stage]\nlayers = [{}, {}]\n",
        stage.layers.start, stage.layers.end
    );
    if let Some((addr, member)) = next {
        s.push_str(&format!(
            "next = {:?}\nnext_member = {member:?}\n",
            addr.to_string()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_evenly_earlier_stages_take_the_remainder() {
        assert_eq!(split_layers(4, 1), vec![0..4; 1]);
        assert_eq!(split_layers(4, 2), [0..2, 2..4]);
        assert_eq!(split_layers(4, 3), [0..2, 2..3, 3..4]);
        assert_eq!(split_layers(4, 4), [0..1, 1..2, 2..3, 3..4]);
        assert_eq!(split_layers(80, 3), [0..27, 27..54, 54..80]);
        for layers in 1..40 {
            for stages in 1..=layers {
                let r = split_layers(layers, stages);
                assert_eq!(r.len(), stages as usize);
                assert_eq!((r[0].start, r[r.len() - 1].end), (0, layers));
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                let sizes: Vec<u32> = r.iter().map(|r| r.len() as u32).collect();
                assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
            }
        }
    }

    #[test]
    fn names_deployment_and_refusals() {
        let l = Layout::new(2, 3, 4, "tiny").unwrap();
        let ids: Vec<&str> = l.members().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "node-1",
                "node-1-s1",
                "node-1-s2",
                "node-2",
                "node-2-s1",
                "node-2-s2"
            ]
        );
        assert_eq!((l.processes(), l.max_stage_layers()), (6, 2));
        let d = l.deployment();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].stages[2].node, "node-2-s2");
        assert_eq!(d[1].stages[2].layers, 3..4);
        assert_eq!(
            Layout::instance_id(&l.instances[0]),
            "node-1+node-1-s1+node-1-s2"
        );

        let single = Layout::new(2, 1, 4, "tiny").unwrap();
        let ids: Vec<&str> = single.members().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["node-1", "node-2"]);
        assert!(!single.pipelined());
        assert_eq!(stage_section(&single, &single.instances[0][0], None), "");

        let e = Layout::new(1, 5, 4, "tiny").unwrap_err().to_string();
        assert!(e.contains("--stages 5") && e.contains("4 layers"), "{e}");
        assert!(Layout::new(1, 0, 4, "tiny").is_err());
        assert!(Layout::new(0, 1, 4, "tiny").is_err());
    }

    #[test]
    fn stage_sections_chain_to_the_next_stage() {
        let l = Layout::new(1, 2, 4, "tiny").unwrap();
        let addr: SocketAddr = "127.0.0.1:7003".parse().unwrap();
        let first = stage_section(&l, &l.instances[0][0], Some((addr, "node-1-s1")));
        let last = stage_section(&l, &l.instances[0][1], None);
        assert_eq!(
            first,
            "\n[stage]\nlayers = [0, 2]\nnext = \"127.0.0.1:7003\"\nnext_member = \"node-1-s1\"\n"
        );
        assert_eq!(last, "\n[stage]\nlayers = [2, 4]\n");
        let parsed: toml::Table = toml::from_str(&first).unwrap();
        assert_eq!(parsed["stage"]["next_member"].as_str(), Some("node-1-s1"));
    }
}
