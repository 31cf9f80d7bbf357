//! `strata router --config FILE`: the OpenAI-compatible endpoint in front of the nodes.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use strata_router::config::RouterConfig;
use tokio_util::sync::CancellationToken;

/// Serve the OpenAI-compatible HTTP API and place each request on the instance with the
/// lowest predicted time-to-first-token.
///
/// The config is TOML:
///
///   id = "router-1"
///   http = "127.0.0.1:8080"          # port 0: any free port (printed when ready)
///   policy = "predicted_ttft"        # or round_robin, least_loaded, prefix_affinity
///   [tls]                            # written by `strata certs init`
///   dir = "certs"
///   member = "router-1"
///   [[nodes]]
///   id = "node-1"
///   addr = "127.0.0.1:7001"
///   [[models]]
///   name = "tiny"
///   instances = [["node-1"]]         # each instance: its stage nodes, driver first
///   # dir = "/models/x"              # tokenizer.json + tokenizer_config.json (chat template)
///   [[slo]]                          # classes a request names with header x-strata-slo
///   name = "interactive"
///   ttft_ms = 1000
///   tpot_ms = 50
///   priority = 1
///   [limits]                         # max_body_bytes, max_prompt_tokens, max_tokens, ...
///
/// When ready it prints `router <id> listening on http://<addr>`. SIGTERM or Ctrl-C stops it
/// cleanly: it stops accepting, lets streams end, and exits 0.
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// The TOML config file.
    #[arg(long, env = "STRATA_ROUTER_CONFIG")]
    pub config: PathBuf,
}

pub fn run(args: RouterArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let cfg = RouterConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let router = strata_router::server::start(cfg.clone(), shutdown.clone())
            .await
            .context("cannot start the router")?;
        println!("router {} listening on http://{}", cfg.id, router.http_addr);
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
