//! Configuring a fresh `strata up` cluster through its control plane, as an operator would
//! with `strata admin`: SLO classes, the routing policy, waiting for the nodes to register,
//! and deploying the model on them as instances of one or more stages.

use crate::admin::Admin;
use anyhow::bail;
use std::time::{Duration, Instant};
use strata_raft::state::{Command, Instance, Policy};
use strata_transport::proto::SloClass;

/// How long the nodes may take to register once started.
const REGISTER_WAIT: Duration = Duration::from_secs(60);

/// What to deploy.
pub struct Plan<'a> {
    pub slo: &'a [SloClass],
    pub policy: Policy,
    pub model: &'a str,
    /// A preset name or a model directory (what nodes load and routers read tokenizers from).
    pub source: &'a str,
    pub layers: u32,
    /// Every instance's stages (node and layers) in pipeline order.
    pub instances: &'a [Instance],
}

/// Applies `plan` through `admin`.
pub async fn apply(admin: &Admin, plan: &Plan<'_>) -> anyhow::Result<()> {
    for class in plan.slo {
        admin
            .write(Command::SetSlo {
                class: class.clone(),
            })
            .await?;
    }
    admin
        .write(Command::SetPolicy {
            policy: plan.policy.to_string(),
        })
        .await?;
    let deadline = Instant::now() + REGISTER_WAIT;
    let nodes: Vec<&str> = plan
        .instances
        .iter()
        .flat_map(|i| &i.stages)
        .map(|s| s.node.as_str())
        .collect();
    loop {
        let state = admin.state().await;
        if let Ok(s) = &state
            && nodes.iter().all(|n| s.nodes.contains_key(*n))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes did not all register within {REGISTER_WAIT:?} (last read: {:?}); see their logs",
                state.map(|s| s.nodes.keys().cloned().collect::<Vec<_>>())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .write(Command::Deploy {
            model: plan.model.to_owned(),
            source: plan.source.to_owned(),
            layers: plan.layers,
            instances: plan.instances.to_vec(),
        })
        .await?;
    Ok(())
}
