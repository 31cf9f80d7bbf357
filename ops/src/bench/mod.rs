//! Benchmarks.
//!
//! - [`engine`] — the node engine in-process: baseline vs layer-wise on one workload.
//! - [`calpoint`] — the points a calibration measured, against its fitted profile.
//! - [`gpu`] — the cuda executor on one GPU: prefill MFU, decode bandwidth, tier copies,
//!   prefills with offloaded layers, against the device's measured peaks.
//! - [`http`] — open-loop streaming load on an OpenAI-compatible HTTP endpoint.
//! - [`workload`] — Poisson arrivals with uniform prompt and output lengths.
//! - [`stats`] — percentiles, per-mode reports, the JSON document.
//! - [`raft`] — the control plane: admin write latency and leader failover.
//! - [`transport`] — QUIC vs TCP bulk throughput between two processes.

mod calpoint;
mod engine;
mod gpu;
mod http;
mod raft;
mod stats;
mod transport;
mod workload;

use clap::Subcommand;
use strata_node::model::ModelConfig;

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

/// `cfg` cut to its first `layers` layers (`--layers`), unchanged for `None`: per-layer costs
/// of a deep model measured on a few of its layers. Refuses 0 and more than the model has.
fn truncate_layers(mut cfg: ModelConfig, layers: Option<usize>) -> anyhow::Result<ModelConfig> {
    if let Some(n) = layers {
        if n == 0 || n > cfg.num_layers {
            anyhow::bail!(
                "--layers {n}: must be in 1..={} (the model's layer count)",
                cfg.num_layers
            );
        }
        cfg.num_layers = n;
    }
    Ok(cfg)
}

/// The model's name for reports, with `(N of M layers)` when `--layers` cut it.
fn model_label(model: &str, cfg: &ModelConfig, full_layers: usize) -> String {
    if cfg.num_layers == full_layers {
        model.to_string()
    } else {
        format!("{model} ({} of {full_layers} layers)", cfg.num_layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_node::model::Preset;

    #[test]
    fn layers_cut_the_model_within_its_depth() {
        let full = Preset::Llama3_70b.config();
        let cut = truncate_layers(full.clone(), Some(8)).unwrap();
        assert_eq!(cut.num_layers, 8);
        assert_eq!(cut.hidden_size, full.hidden_size);
        assert_eq!(
            model_label("llama-3-70b", &cut, 80),
            "llama-3-70b (8 of 80 layers)"
        );
        assert_eq!(truncate_layers(full.clone(), None).unwrap(), full);
        assert_eq!(model_label("llama-3-70b", &full, 80), "llama-3-70b");
        assert_eq!(truncate_layers(full.clone(), Some(80)).unwrap(), full);
        for bad in [0, 81] {
            let err = truncate_layers(full.clone(), Some(bad)).unwrap_err();
            assert!(err.to_string().contains("1..=80"), "{err}");
        }
    }
}
