//! `strata node --config FILE`: one node of a cluster — a model on an executor behind a QUIC
//! endpoint that routers connect to with mutual TLS.

use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use strata_node::service::{NodeConfig, NodeService, prepare};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

const CONFIG_HELP: &str = "\
CONFIG (TOML; every key is optional, the defaults are shown):

  id = \"node-1\"                # the node's id in the cluster
  listen = \"127.0.0.1:7001\"    # UDP address of the QUIC endpoint; port 0 picks a free one
  model = \"tiny\"               # a preset (tiny, llama-3-8b, llama-3-70b) or an HF checkpoint dir
  # model_name = \"tiny\"        # the name routers use (default: preset or directory name)
  executor = \"cpu\"             # cpu: real f32 math with the model's weights
                               # cuda: bf16 math on the first NVIDIA GPU (CUDA_VISIBLE_DEVICES
                               #   picks it; CUDA 13 libraries are loaded at start). Weights:
                               #   the model's own up to 2e9 layer parameters and for any HF
                               #   directory (slow when large), random on the GPU for larger
                               #   presets. Needs a strata built with the `cuda` feature (on
                               #   by default; --no-default-features removes it)
                               # sim: step times from a cost model, in real time, no weights
  # gpu_mib = 1024             # GPU-tier budget (default: 1024 on cpu; on sim an H200's
                               #   90% of 140 GiB less the weights; on cuda 90% of the GPU's
                               #   free memory less the weights and step workspace, and no
                               #   more than max_batch_seqs + 1 sequences of max_seq_tokens)
  # host_mib = 2048            # host-tier budget (default: 2048 on cpu, 262144 on sim,
                               #   32768 of pinned memory on cuda, capped like gpu_mib)
  block_tokens = 16            # tokens per KV block
  # profile = \"cost.toml\"      # cost profile (default: calibrated at start on cpu and cuda,
                               #   the analytic H200 roofline on sim)
  load_report_ms = 100         # load report interval to subscribed routers
  seed = 0                     # random weights of presets, sim tokens
  routers = []                 # routers' control (QUIC) addresses to register with, tried in
                               #   turn until one accepts, e.g. [\"10.0.0.1:7100\"]; empty:
                               #   do not register (needs a certificate with role node)
  # advertise = \"10.0.0.11:7001\" # the address routers dial (default: the bound listen
                               #   address; required when listen is 0.0.0.0 and routers is set)

  [tls]                        # files written by `strata certs init`
  dir = \"certs\"                # holds ca.pem, <member>.pem, <member>.key
  # member = \"node-1\"          # default: id

  [scheduler]
  mode = \"layerwise\"           # layerwise (LayerKV) or baseline (vLLM-style)
  max_batch_seqs = 256
  max_prefill_tokens = 16384
  prefill_chunk_tokens = 0     # 0: a whole prompt per step
  max_waiting = 4096           # more waiting requests are rejected (QueueFull)
  # max_seq_tokens = 32768     # prompt + output (default: the model's context)
  # watermark_blocks = 64      # default: max(layers, 1% of the GPU tier)
  stream_decode = \"auto\"       # auto, always, never

  [limits]
  max_connections = 256
  max_streams_per_connection = 1024
  max_frame_bytes = 4194304
  first_frame_timeout_ms = 10000
  shutdown_grace_ms = 5000     # on SIGTERM, in-flight requests may finish this long
  max_logprobs = 20

EXAMPLE:

  strata certs init --dir certs --routers router-1 --nodes node-1
  printf 'id = \"node-1\"\\nlisten = \"127.0.0.1:7001\"\\n[tls]\\ndir = \"certs\"\\n' > node-1.toml
  strata node --config node-1.toml

When ready it prints one line to stdout:  node <id> serving <model> on <addr>
Logs go to stderr (RUST_LOG, default info). SIGTERM or Ctrl-C shut it down cleanly.";

/// Run a node: serve a model to routers over QUIC with mutual TLS.
#[derive(Debug, clap::Args)]
#[command(after_long_help = CONFIG_HELP)]
pub struct NodeArgs {
    /// The node's TOML config (see `strata node --help` for the keys).
    #[arg(long, env = "STRATA_NODE_CONFIG")]
    config: PathBuf,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    crate::logging::init();
    let cfg = NodeConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("node")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM right after the ready line must shut down cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let id = cfg.id.clone();
    let started = Instant::now();
    eprintln!(
        "node {id}: preparing {} on the {} executor",
        cfg.model,
        cfg.executor.name()
    );
    let progress_id = id.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        prepare(cfg, |msg| eprintln!("node {progress_id}: {msg}"))
    })
    .await
    .context("the preparation task failed")??;
    eprintln!(
        "node {id}: prepared in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let token = CancellationToken::new();
    let service: NodeService = prepared.serve(token.clone()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "node {id} serving {} on {}",
            service.info().model,
            service.local_addr()
        )?;
        out.flush()?;
    }
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("Ctrl-C: shutting down"),
    }
    service.shutdown().await?;
    Ok(())
}
