//! The `cpu` executor: real f32 math with paged attention over the layer-wise block tables. The
//! reference executor, and the default of `strata up`.
//!
//! - `store` — the KV memory: one pool per tier and the staging area; coalesced block copies.
//! - `validate` — a plan checked against the pools and the model before anything runs.
//! - `forward` — packed weights and the batched forward pass, layer by layer.
//! - `attention` — paged causal GQA attention, tiled, with an online softmax.
//! - `math` — matmul, RMSNorm, SiLU gate, residual add.
//! - `tile` — the register-tile micro-kernel under every matrix product.
//! - `simd` — runtime choice of AVX-512 / AVX2 / portable code for the hot kernels.
//! - [`sample`] — greedy and temperature/top-p sampling.

mod attention;
mod forward;
mod math;
pub mod sample;
mod simd;
mod store;
mod tile;
pub(crate) mod validate;

use super::{ExecError, Executor, PoolSizes, StageExecutor, StageInput, StageOutput, StepOutput};
use crate::kv::KvLayout;
use crate::model::{ModelConfig, Weights};
use crate::sched::plan::StepPlan;
use std::time::Instant;

/// Runs step plans with real math on the CPU. The GPU tier is a pool in RAM limited by its block
/// count; tier copies and staging are real copies, counted in `transfer_bytes`.
pub struct CpuExecutor {
    model: forward::Model,
    layout: KvLayout,
    store: store::KvStore,
    limits: validate::Limits,
    isa: simd::Isa,
}

impl std::fmt::Debug for CpuExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuExecutor")
            .field("limits", &self.limits)
            .field("isa", &self.isa.name())
            .finish_non_exhaustive()
    }
}

/// A model or layout the executor cannot run.
fn unusable(reason: String) -> ExecError {
    ExecError::Config {
        executor: "cpu",
        reason,
    }
}

impl CpuExecutor {
    /// Packs `weights` (all of `cfg`'s layers) and allocates `pools` blocks of `layout`, which
    /// must match `cfg` and hold f32 (`dtype_bytes == 4`).
    pub fn new(
        cfg: &ModelConfig,
        weights: Weights,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        if weights.layer_range != (0..cfg.num_layers) {
            return Err(unusable(format!(
                "weights hold layers {:?} of {}; a whole-model executor needs all of them",
                weights.layer_range, cfg.num_layers
            )));
        }
        let mut exec = Self::stage(cfg, weights, layout, pools)?;
        exec.limits.exact_layers = true;
        Ok(exec)
    }

    /// One pipeline stage: packs `weights.layer_range` of the model and allocates `pools`
    /// blocks of `layout`, whose `layers` are the chain's layer slots (at least the stage's
    /// layer count; see [`pipeline`](crate::pipeline)).
    pub fn stage(
        cfg: &ModelConfig,
        weights: Weights,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        if layout.dtype_bytes != 4 {
            return Err(unusable(format!(
                "KV blocks hold f32, layout has {}-byte elements",
                layout.dtype_bytes
            )));
        }
        let stage_layers = weights.layer_range.len();
        if layout.layers < stage_layers
            || (layout.kv_heads, layout.head_dim) != (cfg.num_kv_heads, cfg.head_dim)
            || layout.block_tokens == 0
        {
            return Err(unusable(format!(
                "layout {layout:?} does not fit {stage_layers} layers of the model's (kv_heads, head_dim) {:?}",
                (cfg.num_kv_heads, cfg.head_dim)
            )));
        }
        let model = forward::Model::new(cfg, weights, layout.block_tokens).map_err(unusable)?;
        let limits = validate::Limits {
            layers: layout.layers,
            exact_layers: false,
            vocab: model.vocab(),
            max_pos: model.max_pos(),
            block_tokens: layout.block_tokens,
            pools,
        };
        Ok(CpuExecutor {
            store: store::KvStore::new(&layout, &pools),
            layout,
            model,
            limits,
            isa: simd::Isa::detect(),
        })
    }

    /// The vector instructions the kernels run with: `avx512`, `avx2` or `portable`.
    pub fn isa(&self) -> &'static str {
        self.isa.name()
    }

    /// Validates the plan, runs its copies and its items from `input`; samples on the last
    /// stage.
    fn run(
        &mut self,
        plan: &StepPlan,
        input: StageInput<'_>,
    ) -> Result<(StageOutput, u64), ExecError> {
        validate::validate(plan, &self.limits)?;
        let mut bytes = self.store.run_copies(&plan.copies);
        if plan.items.is_empty() {
            let empty = match self.model.is_last() {
                true => StageOutput::Sampled {
                    tokens: Vec::new(),
                    logits: Vec::new(),
                },
                false => StageOutput::Hidden(Vec::new()),
            };
            return Ok((empty, bytes));
        }
        let fwd = self
            .model
            .forward(self.isa, &plan.items, &mut self.store, input)
            .map_err(ExecError::InvalidPlan)?;
        bytes += fwd.transfer_bytes;
        if !self.model.is_last() {
            return Ok((StageOutput::Hidden(fwd.out), bytes));
        }
        let vocab = self.model.vocab();
        let (mut tokens, mut logits) = (Vec::new(), Vec::new());
        for (item, row) in plan.items.iter().zip(fwd.out.chunks(vocab)) {
            tokens.push((
                item.seq,
                sample::sample(row, &item.sampling, item.output_index),
            ));
            if item.want_logits {
                logits.push((item.seq, row.to_vec()));
            }
        }
        Ok((StageOutput::Sampled { tokens, logits }, bytes))
    }
}

impl Executor for CpuExecutor {
    fn name(&self) -> &'static str {
        "cpu"
    }

    /// The cpu executor copies before it computes: nothing overlaps.
    fn copies_overlap_compute(&self) -> bool {
        false
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, ExecError> {
        let started = Instant::now();
        let (out, transfer_bytes) = self.run(plan, StageInput::Tokens)?;
        let StageOutput::Sampled { tokens, logits } = out else {
            return Err(unusable(
                "a whole-model executor must end at the last layer".into(),
            ));
        };
        Ok(StepOutput {
            tokens,
            logits,
            elapsed: started.elapsed(),
            transfer_bytes,
        })
    }
}

impl StageExecutor for CpuExecutor {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn layers(&self) -> std::ops::Range<usize> {
        self.model.layer_range()
    }

    fn hidden_size(&self) -> usize {
        self.model.hidden()
    }

    fn copies_overlap_compute(&self) -> bool {
        false
    }

    fn reset_pools(&mut self, pools: PoolSizes) -> Result<(), ExecError> {
        // Free the old pools before the new ones are allocated.
        self.store = store::KvStore::new(
            &self.layout,
            &PoolSizes {
                gpu_blocks: 0,
                host_blocks: 0,
                staging_blocks: 0,
            },
        );
        self.store = store::KvStore::new(&self.layout, &pools);
        self.limits.pools = pools;
        Ok(())
    }

    fn run_stage(
        &mut self,
        plan: &StepPlan,
        input: StageInput<'_>,
    ) -> Result<(StageOutput, u64), ExecError> {
        self.run(plan, input)
    }
}
