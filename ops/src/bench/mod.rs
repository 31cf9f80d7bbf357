//! Benchmarks.
//!
//! - [`engine`] — the node engine in-process: baseline vs layer-wise on one workload.
//! - [`gpu`] — the cuda executor on one GPU: prefill MFU, decode bandwidth, tier copies,
//!   prefills with offloaded layers, against the device's measured peaks.
//! - [`http`] — open-loop streaming load on an OpenAI-compatible HTTP endpoint.
//! - [`workload`] — Poisson arrivals with uniform prompt and output lengths.
//! - [`stats`] — percentiles, per-mode reports, the JSON document.
//! - [`raft`] — the control plane: admin write latency and leader failover.
//! - [`transport`] — QUIC vs TCP bulk throughput between two processes.

mod engine;
mod gpu;
mod http;
mod raft;
mod stats;
mod transport;
mod workload;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Run the node engine in-process on a long-context workload, in `baseline` (vLLM-style
    /// whole-request KV allocation) and `layerwise` (LayerKV) modes side by side, and report
    /// TTFT, its queuing share, TPOT, throughput and SLO attainment for each.
    ///
    /// Time is virtual: each step advances the clock by what it took (measured on `cpu` and
    /// `cuda`, modelled on `sim`), and idle gaps are skipped, so the run takes about as long as the
    /// compute it does.
    Engine(engine::EngineArgs),
    /// Measure the cuda executor on GPU 0 against the device's own measured peaks.
    ///
    /// With random bf16 weights of the model's shape: prefill time and model FLOP utilization,
    /// decode step time and memory bandwidth, GPU↔host block copies (consecutive and shuffled),
    /// and prefills with offloaded layers. Needs the `cuda` feature (on by default) and a GPU;
    /// docs/benchmarks/gpu.md gives every formula.
    Gpu(gpu::GpuArgs),
    /// Send open-loop Poisson load of streaming completions to an OpenAI-compatible endpoint
    /// (a Strata router, or any other server) and report TTFT, TPOT, end-to-end latency,
    /// throughput, SLO attainment, goodput, 429s, and how the router spread the requests.
    #[command(after_long_help = http::HELP)]
    Http(http::HttpArgs),
    /// Start router replicas and measure the Raft control plane: admin write latency (through
    /// the leader and through a forwarding follower) and leader failover time (SIGKILL of the
    /// leader → the next committed admin write), with the killed replica restarted each trial.
    Raft(raft::RaftArgs),
    /// Move `--gib` GiB between two processes on loopback over QUIC (the cluster's
    /// mutual-TLS endpoints) and over plain TCP in one run; print both rates and their ratio.
    Transport(transport::TransportArgs),
    /// The receiving process of `bench transport` (started by it).
    #[command(hide = true)]
    TransportPeer(transport::PeerArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(args) => engine::run(args),
        BenchCommand::Gpu(args) => gpu::run(args),
        BenchCommand::Http(args) => http::run(args),
        BenchCommand::Raft(args) => raft::run(args),
        BenchCommand::Transport(args) => transport::run(args),
        BenchCommand::TransportPeer(args) => transport::peer(args),
    }
}
