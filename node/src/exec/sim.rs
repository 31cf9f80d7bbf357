//! The simulated executor: no math. A step takes the time the `CostProfile` predicts; tokens
//! come from a seeded hash of (sequence, output index), so runs are reproducible.
//!
//! Transfers (tier copies and staged host reads) run on copy engines beside compute, so a step
//! takes `max(compute, transfers)`.

use super::{ExecError, Executor, StepOutput};
use crate::kv::{KvLayout, Tier};
use crate::model::rng::Rng;
use crate::sched::plan::{StepPlan, WorkKind};
use std::time::Duration;
use strata_transport::proto::CostProfile;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct SimExecutor {
    cost: CostProfile,
    layout: KvLayout,
    vocab_size: u32,
    seed: u64,
}

impl SimExecutor {
    pub fn new(cost: CostProfile, layout: KvLayout, vocab_size: u32, seed: u64) -> Self {
        SimExecutor {
            cost,
            layout,
            vocab_size: vocab_size.max(1),
            seed,
        }
    }
}

impl Executor for SimExecutor {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn copies_overlap_compute(&self) -> bool {
        true
    }

    /// Where its profile prices wide decode steps apart, so calibrating it recovers both.
    fn decode_wide_from(&self) -> Option<usize> {
        self.cost.decode_wide.map(|w| w.from_batch as usize)
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, ExecError> {
        let layers = self.layout.layers;
        if let Some(item) = plan.items.iter().find(|i| i.layers.len() != layers) {
            return Err(ExecError::InvalidPlan(format!(
                "{} has {} layer tables for {layers} layers",
                item.seq,
                item.layers.len()
            )));
        }
        let model = model_step(&self.cost, &self.layout, plan);
        let tokens = plan
            .items
            .iter()
            .map(|item| {
                let mut r = Rng::derive(self.seed ^ item.seq.0, item.output_index as u64);
                (item.seq, (r.next_u64() % u64::from(self.vocab_size)) as u32)
            })
            .collect();
        Ok(StepOutput {
            tokens,
            logits: Vec::new(),
            elapsed: model.elapsed(),
            transfer_bytes: model.transfer_bytes,
        })
    }
}

/// What the cost profile says a plan costs, with copies on engines beside compute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepModel {
    /// Seconds of compute: prefills, the batched decode, the step's fixed cost.
    pub compute_s: f64,
    /// Bytes that cross tiers: the plan's copies and the host blocks of staged layers.
    pub transfer_bytes: u64,
    /// The part of `transfer_bytes` that the plan's copies move.
    pub copy_bytes: u64,
    /// Runs of host blocks consecutive in the pool that staged layers stream (each is one
    /// transfer, as the executors issue them): how fragmented streamed sequences are.
    pub stream_runs: usize,
    /// Seconds those bytes take.
    pub transfer_s: f64,
}

impl StepModel {
    /// The step's duration: compute and transfers overlap.
    pub fn elapsed(&self) -> Duration {
        Duration::from_secs_f64(self.compute_s.max(self.transfer_s))
    }
}

/// Models `plan` with `cost` (what the `sim` executor takes as a step's duration, and what the
/// engine reports beside a real executor's measured time).
pub fn model_step(cost: &CostProfile, layout: &KvLayout, plan: &StepPlan) -> StepModel {
    let layers = layout.layers;
    let block_bytes = layout.block_bytes();
    let mut compute_s = if plan.items.is_empty() {
        0.0
    } else {
        cost.step_overhead_s
    };
    let (mut batch, mut sum_ctx) = (0usize, 0usize);
    let mut transfer_bytes = 0u64;
    let mut stream_runs = 0;
    for item in &plan.items {
        match item.kind {
            WorkKind::Prefill => {
                compute_s += layers as f64 * cost.prefill_layer_s(item.tokens.len(), item.start_pos)
            }
            WorkKind::Decode => {
                batch += 1;
                sum_ctx += item.start_pos + 1;
            }
        }
        for layer in item.layers.iter().filter(|l| l.staged) {
            let host = layer.blocks.iter().filter(|b| b.tier == Tier::Host).count();
            transfer_bytes += host as u64 * block_bytes;
            stream_runs += host_runs(&layer.blocks);
        }
    }
    compute_s += layers as f64 * cost.decode_layer_s(batch, sum_ctx);
    let crossing = plan
        .copies
        .iter()
        .filter(|c| c.src.tier != c.dst.tier)
        .count();
    let copy_bytes = crossing as u64 * block_bytes;
    transfer_bytes += copy_bytes;
    StepModel {
        compute_s,
        transfer_bytes,
        copy_bytes,
        stream_runs,
        transfer_s: cost.transfer_s(transfer_bytes),
    }
}

/// Runs of host blocks with consecutive indices in `blocks` (in table order).
fn host_runs(blocks: &[crate::kv::BlockId]) -> usize {
    let starts = blocks.iter().enumerate().filter(|(i, b)| {
        b.tier == Tier::Host
            && (*i == 0 || {
                let p = blocks[i - 1];
                p.tier != Tier::Host || p.index + 1 != b.index
            })
    });
    starts.count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockId;

    #[test]
    fn host_runs_split_at_gaps_and_gpu_blocks() {
        let (h, g) = (BlockId::host, BlockId::gpu);
        assert_eq!(host_runs(&[]), 0);
        assert_eq!(host_runs(&[g(0), g(1)]), 0);
        assert_eq!(host_runs(&[h(0), h(1), h(2)]), 1);
        // h0 h1 | g2 | h2 | h4 h5 | h3: a GPU block, a gap and a step back each start a run.
        assert_eq!(host_runs(&[h(0), h(1), g(2), h(2), h(4), h(5), h(3)]), 4);
    }
}
