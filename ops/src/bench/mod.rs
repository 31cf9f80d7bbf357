//! Benchmarks.
//!
//! - [`engine`] — the node engine in-process: baseline vs layer-wise on one workload.
//! - [`workload`] — Poisson arrivals with uniform prompt and output lengths.
//! - [`stats`] — percentiles, per-mode reports, the JSON document.

mod engine;
mod stats;
mod workload;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Run the node engine in-process on a long-context workload, in `baseline` (vLLM-style
    /// whole-request KV allocation) and `layerwise` (LayerKV) modes side by side, and report
    /// TTFT, its queuing share, TPOT, throughput and SLO attainment for each.
    ///
    /// Time is virtual: each step advances the clock by what it took (measured on `cpu`,
    /// modelled on `sim`), and idle gaps are skipped, so the run takes about as long as the
    /// compute it does.
    Engine(engine::EngineArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(args) => engine::run(args),
    }
}
