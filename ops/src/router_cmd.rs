//! `strata router --config FILE [--init | --join ADDR]`: a router replica — the
//! OpenAI-compatible endpoint in front of the nodes, and a voter of the Raft control plane.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use strata_raft::control::Bootstrap;
use strata_router::config::RouterConfig;
use tokio_util::sync::CancellationToken;

/// Serve the OpenAI-compatible HTTP API, place each request on the instance with the lowest
/// predicted time-to-first-token, and replicate the cluster's state with Raft.
///
/// The first replica starts the cluster with `--init`; each further one joins it with
/// `--join ADDR` (the control address of any replica). A replica restarted later needs
/// neither: it resumes from its redb file. Nodes, deployments, SLO classes and the routing
/// policy live in the replicated state: change them with `strata admin`.
///
/// The config is TOML:
///
///   id = "router-1"
///   http = "127.0.0.1:8080"          # replicas on one machine may share it (SO_REUSEPORT)
///   default_slo = "default"          # class of requests without header x-strata-slo
///   [tls]                            # written by `strata certs init`
///   dir = "certs"
///   member = "router-1"              # a certificate with the router role
///   [raft]
///   id = 1                           # unique in the cluster, never reused
///   listen = "127.0.0.1:7101"        # control endpoint: Raft, strata admin, registration
///   db = "data/router-1.redb"
///   # advertise, heartbeat_ms (50), election_timeout_min_ms (250),
///   # election_timeout_max_ms (500), snapshot_every_logs (1000)
///   [limits]                         # max_body_bytes, max_prompt_tokens, max_tokens, ...
///
/// When ready it prints `router <id> listening on http://<addr> control <addr>`. SIGTERM or
/// Ctrl-C stops it cleanly: it stops accepting, lets streams end, and exits 0.
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// The TOML config file.
    #[arg(long, env = "STRATA_ROUTER_CONFIG")]
    pub config: PathBuf,
    /// Start a new cluster with this replica as its first voter.
    #[arg(long, conflicts_with = "join")]
    pub init: bool,
    /// Join the cluster through the replica at this control address.
    #[arg(long, value_name = "ADDR")]
    pub join: Option<SocketAddr>,
}

pub fn run(args: RouterArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let cfg = RouterConfig::load(&args.config)?;
    let bootstrap = match (args.init, args.join) {
        (true, _) => Bootstrap::Init,
        (false, Some(addr)) => Bootstrap::Join(addr),
        (false, None) => Bootstrap::Resume,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let router = strata_router::server::start(cfg.clone(), bootstrap, shutdown.clone())
            .await
            .context("cannot start the router")?;
        println!(
            "router {} listening on http://{} control {}",
            cfg.id,
            router.http_addr,
            router.replica.addr()
        );
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        shutdown.cancel();
        router.join().await;
        Ok(())
    })
}
