//! `strata admin`: the operator's CLI for the control plane. It talks to any router replica's
//! control address over QUIC with mutual TLS, presenting a certificate with the admin role;
//! replicas forward what needs the leader. Human tables by default, `--json` for machines.
//!
//! - [`render`] — tables.

mod render;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_raft::api::{ControlReply, ControlRequest};
use strata_raft::control::{CallError, ControlClient};
use strata_raft::state::{ClusterState, Command, Instance, Member, Stage};
use strata_transport::proto::SloClass;
use strata_transport::tls::Identity;

/// Inspect and change a running cluster: members and leader, nodes, deployments, SLO classes,
/// the routing policy.
///
/// Which cluster: `--router ADDR` (a replica's control address; repeat it to list several),
/// or else the `cluster.json` that `strata up` wrote in `--data-dir`. Requests go to the first
/// replica that answers; during an election they are retried for up to `--wait` seconds.
///
/// Credential: a certificate with the admin role (`strata certs init --admins NAME`), from
/// `--certs` and `--member`. Without one the cluster refuses and says why.
///
/// Examples:
///   strata admin status
///   strata admin drain node-1
///   strata admin deploy tiny --instance node-1 --instance node-2
///   strata admin deploy llama-3-70b --instance node-1:0-40,node-2:40-80
///   strata admin slo set gold --ttft-ms 500 --tpot-ms 50 --priority 2
///   strata admin leader transfer 2
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// A replica's control address (repeatable). Default: the routers in cluster.json.
    #[arg(
        long,
        global = true,
        env = "STRATA_ADMIN_ROUTER",
        value_delimiter = ','
    )]
    pub router: Vec<SocketAddr>,
    /// The directory of `strata up` (for cluster.json and its certificates).
    #[arg(long, global = true, default_value = ".strata")]
    pub data_dir: PathBuf,
    /// Certificate directory. Default: the one cluster.json names, else DATA_DIR/certs.
    #[arg(long, global = true, env = "STRATA_ADMIN_CERTS")]
    pub certs: Option<PathBuf>,
    /// Member name of the admin certificate in the certificate directory.
    #[arg(
        long,
        global = true,
        default_value = "admin",
        env = "STRATA_ADMIN_MEMBER"
    )]
    pub member: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to keep retrying while the cluster has no leader or a replica is unreachable.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub wait: f64,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Members, leader, term, commit index, and nodes with health, load and tier usage.
    Status {
        /// This replica's own view, without asking the leader (works with no leader).
        #[arg(long)]
        local: bool,
    },
    /// Registered nodes with health, load and tier usage.
    Nodes,
    /// Stop placing new requests on a node; requests in flight finish.
    Drain { node: String },
    /// Place requests on a drained node again.
    Undrain { node: String },
    /// Forget a node that no deployment uses.
    Remove { node: String },
    /// Deploy a model: each `--instance` is one serving copy, a node id, or a pipeline of
    /// stages `NODE:FIRST-END,NODE:FIRST-END` covering layers 0..LAYERS.
    Deploy {
        /// The name clients use.
        model: String,
        /// What nodes load: a preset or a model directory. Default: MODEL.
        #[arg(long)]
        source: Option<String>,
        /// The model's layer count. Default: read from the preset or the directory's
        /// config.json.
        #[arg(long)]
        layers: Option<u32>,
        /// One instance (repeatable).
        #[arg(long = "instance", required = true)]
        instances: Vec<String>,
    },
    /// Remove a deployed model.
    Undeploy { model: String },
    /// SLO classes requests name with header x-strata-slo.
    #[command(subcommand)]
    Slo(SloCommand),
    /// The routing policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Router replicas (Raft members).
    #[command(subcommand)]
    Members(MembersCommand),
    /// Raft leadership.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Build a snapshot of the replicated state on the leader now (the log behind it is then
    /// purged by policy).
    Snapshot,
}

#[derive(Debug, Subcommand)]
pub enum SloCommand {
    /// Every class.
    List,
    /// Add or replace a class.
    Set {
        name: String,
        /// Time-to-first-token target, milliseconds.
        #[arg(long)]
        ttft_ms: f64,
        /// Time-per-output-token target, milliseconds.
        #[arg(long)]
        tpot_ms: f64,
        /// Higher is scheduled first.
        #[arg(long, default_value_t = 0)]
        priority: u8,
    },
    /// Remove a class.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the routing policy.
    Show,
    /// Set it: predicted_ttft, round_robin, least_loaded or prefix_affinity.
    Set { policy: String },
}

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Every replica, voter or learner.
    List,
    /// Add a replica as a learner (it replicates, does not vote); `promote` makes it a voter.
    Add {
        /// Its Raft id (unique, never reused).
        id: u64,
        /// Its certificate's member name.
        #[arg(long)]
        name: String,
        /// Its control address.
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a replica from Raft and forget it.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Show the leader.
    Show,
    /// Hand leadership to voter ID.
    Transfer { id: u64 },
}

/// The parts of cluster.json this CLI reads.
#[derive(Debug, Deserialize)]
struct ClusterFile {
    routers: Vec<ClusterRouter>,
    #[serde(default)]
    certs: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct ClusterRouter {
    admin: SocketAddr,
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(admin(args))
}

/// A connection to the cluster: the client and the replicas to try, in order.
pub struct Admin {
    client: ControlClient,
    routers: Vec<SocketAddr>,
    wait: Duration,
}

impl Admin {
    /// A client with `identity` that asks `routers` in turn, retrying for up to `wait`.
    pub fn new(
        identity: &Identity,
        routers: Vec<SocketAddr>,
        wait: Duration,
    ) -> anyhow::Result<Admin> {
        let first = *routers.first().context("no router replicas to ask")?;
        let client = ControlClient::connect_as(identity, first, Duration::from_secs(10))?;
        Ok(Admin {
            client,
            routers,
            wait,
        })
    }

    /// Sends `request`, trying each replica in turn, retrying transient failures until
    /// `wait` has passed.
    pub async fn request(&self, request: ControlRequest) -> Result<ControlReply, CallError> {
        let deadline = Instant::now() + self.wait;
        let mut backoff = Duration::from_millis(25);
        loop {
            let mut last = None;
            for &router in &self.routers {
                match self.client.request(router, request.clone()).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) if e.is_transient() => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            let e = last.expect("at least one router is configured");
            if Instant::now() + backoff > deadline {
                return Err(e);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Applies one command; the state's version after it.
    pub async fn write(&self, command: Command) -> anyhow::Result<ControlReply> {
        Ok(self.request(ControlRequest::Write { command }).await?)
    }

    /// The applied state, read linearizably.
    pub async fn state(&self) -> anyhow::Result<ClusterState> {
        match self.request(ControlRequest::State).await? {
            ControlReply::State { state, .. } => Ok(*state),
            other => bail!("unexpected reply {other:?}"),
        }
    }
}

/// Connects as `args` say.
pub fn connect(args: &AdminArgs) -> anyhow::Result<Admin> {
    let file = args.data_dir.join("cluster.json");
    let cluster: Option<ClusterFile> = match std::fs::read(&file) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", file.display()))?,
        ),
        Err(_) => None,
    };
    let routers = if !args.router.is_empty() {
        args.router.clone()
    } else if let Some(c) = &cluster {
        c.routers.iter().map(|r| r.admin).collect()
    } else {
        bail!(
            "which cluster? pass --router ADDR (a replica's control address), or --data-dir of a `strata up` cluster ({} does not exist)",
            file.display()
        );
    };
    let certs = args
        .certs
        .clone()
        .or_else(|| cluster.as_ref().and_then(|c| c.certs.clone()))
        .unwrap_or_else(|| args.data_dir.join("certs"));
    let identity = Identity::load(&certs, &args.member).with_context(|| {
        format!(
            "loading the admin certificate `{}` from {} (make one with `strata certs init --admins NAME`)",
            args.member,
            certs.display()
        )
    })?;
    Admin::new(
        &identity,
        routers,
        Duration::from_secs_f64(args.wait.max(0.0)),
    )
}

async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let admin = connect(&args)?;
    let json = args.json;
    let reply = match args.command {
        AdminCommand::Status { local } => admin.request(ControlRequest::Status { local }).await?,
        AdminCommand::Nodes => {
            admin
                .request(ControlRequest::Status { local: false })
                .await?
        }
        AdminCommand::Members(MembersCommand::List) | AdminCommand::Leader(LeaderCommand::Show) => {
            admin
                .request(ControlRequest::Status { local: false })
                .await?
        }
        AdminCommand::Slo(SloCommand::List) | AdminCommand::Policy(PolicyCommand::Show) => {
            admin.request(ControlRequest::State).await?
        }
        AdminCommand::Drain { ref node } => {
            admin.write(Command::Drain { id: node.clone() }).await?
        }
        AdminCommand::Undrain { ref node } => {
            admin.write(Command::Undrain { id: node.clone() }).await?
        }
        AdminCommand::Remove { ref node } => {
            admin
                .write(Command::RemoveNode { id: node.clone() })
                .await?
        }
        AdminCommand::Deploy {
            ref model,
            ref source,
            layers,
            ref instances,
        } => {
            let source = source.clone().unwrap_or_else(|| model.clone());
            let layers = match layers {
                Some(l) => l,
                None => layers_of(&source)?,
            };
            let instances = instances
                .iter()
                .map(|spec| parse_instance(spec, layers))
                .collect::<anyhow::Result<_>>()?;
            admin
                .write(Command::Deploy {
                    model: model.clone(),
                    source,
                    layers,
                    instances,
                })
                .await?
        }
        AdminCommand::Undeploy { ref model } => {
            admin
                .write(Command::Undeploy {
                    model: model.clone(),
                })
                .await?
        }
        AdminCommand::Slo(SloCommand::Set {
            ref name,
            ttft_ms,
            tpot_ms,
            priority,
        }) => {
            let class = SloClass {
                name: name.clone(),
                ttft_ms,
                tpot_ms,
                priority,
            };
            admin.write(Command::SetSlo { class }).await?
        }
        AdminCommand::Slo(SloCommand::Remove { ref name }) => {
            admin
                .write(Command::RemoveSlo { name: name.clone() })
                .await?
        }
        AdminCommand::Policy(PolicyCommand::Set { ref policy }) => {
            admin
                .write(Command::SetPolicy {
                    policy: policy.clone(),
                })
                .await?
        }
        AdminCommand::Members(MembersCommand::Add { id, ref name, addr }) => {
            let member = Member {
                id,
                name: name.clone(),
                raft_addr: addr,
                admin_addr: addr,
            };
            admin.request(ControlRequest::AddLearner { member }).await?
        }
        AdminCommand::Members(MembersCommand::Promote { id }) => {
            admin.request(ControlRequest::Promote { id }).await?
        }
        AdminCommand::Members(MembersCommand::Remove { id }) => {
            admin.request(ControlRequest::RemoveMember { id }).await?
        }
        AdminCommand::Leader(LeaderCommand::Transfer { id }) => {
            admin
                .request(ControlRequest::TransferLeader { to: id })
                .await?
        }
        AdminCommand::Snapshot => admin.request(ControlRequest::Snapshot).await?,
    };
    let view = render::View::of(&args.command);
    println!("{}", render::render(view, &reply, json)?);
    Ok(())
}

/// The layer count of a preset or a model directory.
fn layers_of(source: &str) -> anyhow::Result<u32> {
    let src: strata_node::model::ModelSource = source
        .parse()
        .map_err(|e| anyhow::anyhow!("--source {source:?}: {e}; or give --layers"))?;
    let cfg = src
        .config()
        .map_err(|e| anyhow::anyhow!("--source {source:?}: {e}; or give --layers"))?;
    Ok(cfg.num_layers as u32)
}

/// `node-1` (all layers), or `node-1:0-40,node-2:40-80`.
fn parse_instance(spec: &str, layers: u32) -> anyhow::Result<Instance> {
    let mut stages = Vec::new();
    for part in spec.split(',') {
        let stage = match part.split_once(':') {
            None => Stage {
                node: part.to_string(),
                layers: 0..layers,
            },
            Some((node, range)) => {
                let (a, b) = range
                    .split_once('-')
                    .with_context(|| format!("stage {part:?}: expected NODE:FIRST-END"))?;
                Stage {
                    node: node.to_string(),
                    layers: a.parse().with_context(|| format!("stage {part:?}"))?
                        ..b.parse().with_context(|| format!("stage {part:?}"))?,
                }
            }
        };
        if stage.node.is_empty() {
            bail!("instance {spec:?}: empty node name");
        }
        stages.push(stage);
    }
    Ok(Instance { stages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_parse_as_single_nodes_or_pipelines() {
        let one = parse_instance("node-1", 32).unwrap();
        assert_eq!(
            one.stages,
            vec![Stage {
                node: "node-1".into(),
                layers: 0..32
            }]
        );
        let two = parse_instance("a:0-40,b:40-80", 80).unwrap();
        assert_eq!(
            two.stages[1],
            Stage {
                node: "b".into(),
                layers: 40..80
            }
        );
        assert!(parse_instance("a:0", 80).is_err());
        assert!(parse_instance("a:x-3", 80).is_err());
        assert!(parse_instance(":0-3", 80).is_err());
    }
}
