//! Executors: what runs a [`StepPlan`](crate::sched::StepPlan).
//!
//! - [`cpu`] — real f32 math with paged attention over the layer-wise block tables; the GPU tier
//!   is a capacity-limited pool in RAM and tier copies are real copies.
//! - [`cuda`] (feature `cuda`) — the same forward pass on an NVIDIA GPU: NVRTC kernels, cuBLAS
//!   bf16 GEMMs, a pinned host tier and copy streams ordered by per-layer events.
//! - [`sim`] — no math: durations from a `CostProfile`, tokens from a seeded hash.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod sim;

use crate::sched::plan::{CopyOp, SeqId, StepPlan};
use std::time::Duration;

/// Pool sizes an executor allocates, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    pub gpu_blocks: usize,
    pub host_blocks: usize,
    /// Blocks of the staging area used by staged layers (one buffer).
    pub staging_blocks: usize,
}

/// The result of one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// One sampled token per item, in plan order.
    pub tokens: Vec<(SeqId, u32)>,
    /// Last-position logits of the items that asked for them.
    pub logits: Vec<(SeqId, Vec<f32>)>,
    /// Time the step took: measured (`cpu`) or modelled (`sim`).
    pub elapsed: Duration,
    /// Bytes moved between tiers (copies and staging), for reports.
    pub transfer_bytes: u64,
}

/// A step that could not run. The engine fails the step's sequences and goes on.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The plan names something the executor does not have.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// The executor cannot run this model, layout or pool configuration.
    #[error("{executor} executor cannot run this configuration: {reason}")]
    Config {
        executor: &'static str,
        reason: String,
    },
    /// The executor's device failed.
    #[error("device error: {0}")]
    Device(String),
}

/// What enters a pipeline stage's forward pass: token ids (the first stage embeds them) or the
/// activations the previous stage produced, `[rows, hidden]` f32, rows in item order (every
/// token of every item).
#[derive(Debug, Clone, Copy)]
pub enum StageInput<'a> {
    Tokens,
    Hidden(&'a [f32]),
}

/// What leaves a pipeline stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    /// `[rows, hidden]` activations for the next stage.
    Hidden(Vec<f32>),
    /// The last stage: one sampled token per item and the logits asked for (as in
    /// [`StepOutput`]).
    Sampled {
        tokens: Vec<(SeqId, u32)>,
        logits: Vec<(SeqId, Vec<f32>)>,
    },
}

/// Runs one pipeline stage's layers of step plans. A plan's items carry one table per layer
/// *slot*: slot `j` is this stage's `j`-th layer (see [`pipeline`](crate::pipeline)); the
/// plan's copies run first, on this stage's own pools.
pub trait StageExecutor: Send {
    /// `cpu`, `cuda`.
    fn name(&self) -> &'static str;

    /// The model's layers this stage computes.
    fn layers(&self) -> std::ops::Range<usize>;

    /// Width of the activations between stages.
    fn hidden_size(&self) -> usize;

    /// See [`Executor::copies_overlap_compute`].
    fn copies_overlap_compute(&self) -> bool;

    /// Drops every block's contents and allocates pools of `pools` sizes (a new chain).
    fn reset_pools(&mut self, pools: PoolSizes) -> Result<(), ExecError>;

    /// Runs the plan's copies, then its items through this stage's layers. Returns the output
    /// and the bytes moved between tiers.
    fn run_stage(
        &mut self,
        plan: &StepPlan,
        input: StageInput<'_>,
    ) -> Result<(StageOutput, u64), ExecError>;
}

/// Runs step plans. Implementations own the KV memory of every tier.
pub trait Executor: Send {
    /// `cpu`, `sim`, `cuda`.
    fn name(&self) -> &'static str;

    /// Whether tier copies run beside compute (copy engines) rather than before it. Streaming
    /// offloaded layers through staging during decode only pays when they do.
    fn copies_overlap_compute(&self) -> bool;

    /// Runs one step.
    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, ExecError>;

    /// The narrowest decode batch this executor computes with other kernels than batch 1's,
    /// if it has two kinds (the cuda executor: its GEMV for one row, cuBLAS from 2 by default),
    /// so that calibration fits their costs apart (see
    /// [`WideDecode`](strata_transport::proto::WideDecode)). A pipeline reports none: its
    /// stages see micro-batches, not the step's batch.
    fn decode_wide_from(&self) -> Option<usize> {
        None
    }

    /// `Some(why)` once after the executor lost the KV memory behind its blocks (a pipeline
    /// stage restarted): every sequence holding blocks must fail and cached blocks be dropped.
    fn take_kv_lost(&mut self) -> Option<String> {
        None
    }
}

/// The plan's copies as runs `(first copy, n)` of `n` consecutive blocks on both sides, each one
/// transfer, with the effect of running the copies one by one in list order: a run never reads a
/// block an earlier copy of the same run wrote (on one tier, its source and destination ranges
/// are disjoint).
pub(crate) fn copy_runs(copies: &[CopyOp]) -> Vec<(CopyOp, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < copies.len() {
        let first = copies[i];
        let mut n = 1;
        while let Some(next) = copies.get(i + n) {
            let follows = next.src.tier == first.src.tier
                && next.dst.tier == first.dst.tier
                && next.src.index as usize == first.src.index as usize + n
                && next.dst.index as usize == first.dst.index as usize + n;
            let (s, d) = (first.src.index as usize, first.dst.index as usize);
            let disjoint = first.src.tier != first.dst.tier || s + n < d || d + n < s;
            if !(follows && disjoint) {
                break;
            }
            n += 1;
        }
        runs.push((first, n));
        i += n;
    }
    runs
}
