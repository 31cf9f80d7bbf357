//! `strata bench gpu`: the cuda executor on one GPU, against the device's measured ceilings.
//!
//! - [`cost`] — the formulas: model FLOPs of a prefill, bytes a decode step reads.
//! - [`plans`] — the step plans, built without a GPU.
//! - [`points`] — the points of a run, the blocks each needs, what fits in device memory.
//! - `measure` (feature `cuda`) — runs the points on the GPU.
//! - [`report`] — results and the JSON document; [`table`] — the printed summary.

// Without the `cuda` feature only the argument checks and the tests use the pure parts.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

mod cost;
#[cfg(feature = "cuda")]
mod measure;
mod plans;
mod points;
mod report;
mod table;
#[cfg(test)]
mod tests;

use anyhow::{Context, bail};
use plans::Order;
use points::{Offload, Point};
use std::path::PathBuf;
use strata_node::kv::KvLayout;
use strata_node::model::{ModelConfig, ModelSource};

/// KV blocks and weights are bf16 on the GPU.
const DTYPE_BYTES: usize = 2;
/// Most repeats of one point.
const MAX_REPEATS: usize = 1000;
/// Most sequences in one decode step.
const MAX_DECODE_BATCH: usize = 4096;
/// Most sequences in one streamed decode step (their layers live in pinned host memory).
const MAX_STREAMED_BATCH: usize = 64;
/// Largest copy-only plan, MiB.
const MAX_TRANSFER_MIB: usize = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct GpuArgs {
    /// Model shape: a preset (`llama-3-8b`, `llama-3-70b`, `tiny`) or a HF model directory
    /// (only its config.json is read: the weights are random bf16 drawn on the device).
    #[arg(long, default_value = "llama-3-8b")]
    model: String,
    /// Keep only the model's first N layers (with its embedding and lm_head): a model too large
    /// for the GPU, measured on a few of its layers (e.g. `--model llama-3-70b --layers 8`).
    #[arg(long)]
    layers: Option<usize>,
    /// Prefill lengths, tokens (one sequence from position 0, every layer resident).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384")]
    prefill: Vec<usize>,
    /// Decode batch sizes (one new token per sequence).
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    decode_batch: Vec<usize>,
    /// Tokens of context of every sequence of a decode step.
    #[arg(long, default_value_t = 4096)]
    decode_ctx: usize,
    /// Batch sizes of the streamed decode steps: `--decode-ctx` contexts with all but the first
    /// layer on the host tier, streamed in through the staging buffers as layer-wise mode does,
    /// each beside the same step with every layer resident.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    streamed_batch: Vec<usize>,
    /// Size of the copy-only plans (GPU → host and back), MiB.
    #[arg(long, default_value_t = 256)]
    transfer_mib: usize,
    /// Prompt of the prefills with offloaded layers (none, half, all but one staged), tokens.
    #[arg(long, default_value_t = 4096)]
    offload_prompt: usize,
    /// Timed runs of each point, after one warm-up run; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    /// Device memory left free beside weights, workspace and pools, GiB.
    #[arg(long, default_value_t = 2.0)]
    headroom_gib: f64,
    /// Seed of the random weights and of the shuffled copy order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write every measurement as JSON here (parent directories are created).
    #[arg(long)]
    json: Option<PathBuf>,
}

impl GpuArgs {
    /// Checks every value against its limit and the model's context.
    fn validate(&self, cfg: &ModelConfig) -> anyhow::Result<()> {
        let max_pos = cfg.max_position_embeddings;
        if let Some(&n) = self.prefill.iter().find(|&&n| n == 0 || n > max_pos) {
            bail!("--prefill {n}: each length must be in 1..={max_pos} (the model's context)");
        }
        if let Some(&b) = self
            .decode_batch
            .iter()
            .find(|&&b| b == 0 || b > MAX_DECODE_BATCH)
        {
            bail!("--decode-batch {b}: each batch must be in 1..={MAX_DECODE_BATCH}");
        }
        if let Some(&b) = (self.streamed_batch.iter()).find(|&&b| b == 0 || b > MAX_STREAMED_BATCH)
        {
            bail!("--streamed-batch {b}: each batch must be in 1..={MAX_STREAMED_BATCH}");
        }
        if self.decode_ctx >= max_pos {
            bail!(
                "--decode-ctx {}: context plus the new token must fit the model's {max_pos} positions",
                self.decode_ctx
            );
        }
        if self.offload_prompt == 0 || self.offload_prompt > max_pos {
            bail!(
                "--offload-prompt {}: must be in 1..={max_pos}",
                self.offload_prompt
            );
        }
        if !(1..=MAX_REPEATS).contains(&self.repeats) {
            bail!("--repeats {}: must be in 1..={MAX_REPEATS}", self.repeats);
        }
        if !(1..=MAX_TRANSFER_MIB).contains(&self.transfer_mib) {
            bail!(
                "--transfer-mib {}: must be in 1..={MAX_TRANSFER_MIB}",
                self.transfer_mib
            );
        }
        if !(1..=1024).contains(&self.block_tokens) {
            bail!("--block-tokens {}: must be in 1..=1024", self.block_tokens);
        }
        if !(self.headroom_gib.is_finite() && self.headroom_gib >= 0.0) {
            bail!("--headroom-gib {}: must be ≥ 0", self.headroom_gib);
        }
        Ok(())
    }

    /// Blocks of the copy-only plans: `--transfer-mib` worth, at least one.
    fn transfer_blocks(&self, layout: &KvLayout) -> usize {
        let bytes = self.transfer_mib as u64 * (1 << 20);
        (bytes / layout.block_bytes().max(1)).max(1) as usize
    }

    /// Every point of the run, in the order it runs.
    fn points(&self, layout: &KvLayout) -> Vec<Point> {
        let mut v: Vec<Point> = (self.prefill.iter())
            .map(|&tokens| Point::Prefill { tokens })
            .collect();
        v.extend(self.decode_batch.iter().map(|&batch| Point::Decode {
            batch,
            ctx: self.decode_ctx,
        }));
        let blocks = self.transfer_blocks(layout);
        v.extend(
            [Order::Consecutive, Order::Shuffled].map(|order| Point::Transfer { blocks, order }),
        );
        v.extend(Offload::ALL.map(|offload| Point::Offload {
            tokens: self.offload_prompt,
            offload,
        }));
        v.extend(self.streamed_batch.iter().map(|&batch| Point::Streamed {
            batch,
            ctx: self.decode_ctx,
        }));
        v
    }

    /// Blocks of each staging buffer: the offloaded prefill's prompt, or the largest streamed
    /// decode batch's contexts.
    fn staging_blocks(&self, layout: &KvLayout) -> usize {
        let streamed = self.streamed_batch.iter().copied().max().unwrap_or(0);
        (layout.blocks_for(self.offload_prompt))
            .max(streamed * layout.blocks_for(self.decode_ctx + 1))
    }

    /// Rows of the largest step: the longest prompt or the largest decode batch.
    fn max_rows(&self) -> usize {
        let prefill = self.prefill.iter().copied().max().unwrap_or(0);
        let decode = (self.decode_batch.iter().chain(&self.streamed_batch))
            .copied()
            .max()
            .unwrap_or(0);
        prefill.max(decode).max(self.offload_prompt)
    }
}

pub fn run(args: GpuArgs) -> anyhow::Result<()> {
    let source: ModelSource = args.model.parse()?;
    let whole = source
        .config()
        .with_context(|| format!("reading the shape of {}", args.model))?;
    let full_layers = whole.num_layers;
    let cfg = super::truncate_layers(whole, args.layers)?;
    args.validate(&cfg)?;
    let label = super::model_label(&args.model, &cfg, full_layers);
    measure_and_report(&args, &cfg, &label)
}

#[cfg(not(feature = "cuda"))]
fn measure_and_report(_args: &GpuArgs, _cfg: &ModelConfig, _label: &str) -> anyhow::Result<()> {
    bail!(
        "strata bench gpu needs the cuda executor, and this strata was built without the `cuda` \
         feature: rebuild with `cargo build --release -p strata-ops --features cuda`"
    )
}

/// Measures `cfg` (named `label` in the report) and prints and writes the report.
#[cfg(feature = "cuda")]
fn measure_and_report(args: &GpuArgs, cfg: &ModelConfig, label: &str) -> anyhow::Result<()> {
    let report = measure::measure(args, cfg, label)?;
    print!("{}", table::render(&report));
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
