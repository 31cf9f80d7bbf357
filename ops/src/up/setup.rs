//! Configuring a fresh `strata up` cluster through its control plane, as an operator would
//! with `strata admin`: SLO classes, the routing policy, waiting for the nodes to register,
//! and deploying the model on them.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strata_raft::api::{ControlReply, ControlRequest};
use strata_raft::control::ControlClient;
use strata_raft::state::{ClusterState, Command, Instance, Policy, Stage};
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
    pub nodes: &'a [String],
}

/// Runs one command on the cluster through `router`, retrying while it elects a leader.
pub async fn write(
    client: &ControlClient,
    router: SocketAddr,
    command: Command,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = ControlRequest::Write {
            command: command.clone(),
        };
        match client.request(router, request).await {
            Ok(ControlReply::Written { version, .. }) => return Ok(version),
            Ok(other) => bail!("unexpected reply {other:?}"),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("control plane write"),
        }
    }
}

/// The applied state, read linearizably.
pub async fn state(client: &ControlClient, router: SocketAddr) -> anyhow::Result<ClusterState> {
    match client.request(router, ControlRequest::State).await? {
        ControlReply::State { state, .. } => Ok(*state),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Applies `plan` through `router`.
pub async fn apply(
    client: &ControlClient,
    router: SocketAddr,
    plan: &Plan<'_>,
) -> anyhow::Result<()> {
    for class in plan.slo {
        write(
            client,
            router,
            Command::SetSlo {
                class: class.clone(),
            },
        )
        .await?;
    }
    write(
        client,
        router,
        Command::SetPolicy {
            policy: plan.policy.to_string(),
        },
    )
    .await?;
    let deadline = Instant::now() + REGISTER_WAIT;
    loop {
        let state = state(client, router).await;
        if let Ok(s) = &state
            && plan.nodes.iter().all(|n| s.nodes.contains_key(n))
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
    let instances = plan
        .nodes
        .iter()
        .map(|n| Instance {
            stages: vec![Stage {
                node: n.clone(),
                layers: 0..plan.layers,
            }],
        })
        .collect();
    write(
        client,
        router,
        Command::Deploy {
            model: plan.model.to_owned(),
            source: plan.source.to_owned(),
            layers: plan.layers,
            instances,
        },
    )
    .await?;
    Ok(())
}
