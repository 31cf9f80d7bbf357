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

use super::{ExecError, Executor, PoolSizes, StepOutput};
use crate::kv::KvLayout;
use crate::model::{ModelConfig, Weights};
use crate::sched::plan::StepPlan;
use std::time::Instant;

/// Runs step plans with real math on the CPU. The GPU tier is a pool in RAM limited by its block
/// count; tier copies and staging are real copies, counted in `transfer_bytes`.
pub struct CpuExecutor {
    model: forward::Model,
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
        if layout.dtype_bytes != 4 {
            return Err(unusable(format!(
                "KV blocks hold f32, layout has {}-byte elements",
                layout.dtype_bytes
            )));
        }
        let expected = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim);
        if (layout.layers, layout.kv_heads, layout.head_dim) != expected || layout.block_tokens == 0
        {
            return Err(unusable(format!(
                "layout {layout:?} does not fit the model's (layers, kv_heads, head_dim) {expected:?}"
            )));
        }
        let model = forward::Model::new(cfg, weights, layout.block_tokens).map_err(unusable)?;
        let limits = validate::Limits {
            layers: model.num_layers(),
            vocab: model.vocab(),
            max_pos: model.max_pos(),
            block_tokens: layout.block_tokens,
            pools,
        };
        Ok(CpuExecutor {
            store: store::KvStore::new(&layout, &pools),
            model,
            limits,
            isa: simd::Isa::detect(),
        })
    }

    /// The vector instructions the kernels run with: `avx512`, `avx2` or `portable`.
    pub fn isa(&self) -> &'static str {
        self.isa.name()
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
        validate::validate(plan, &self.limits)?;
        let mut out = StepOutput {
            transfer_bytes: self.store.run_copies(&plan.copies),
            ..StepOutput::default()
        };
        if !plan.items.is_empty() {
            let fwd = self.model.forward(self.isa, &plan.items, &mut self.store);
            out.transfer_bytes += fwd.transfer_bytes;
            let vocab = self.model.vocab();
            for (item, logits) in plan.items.iter().zip(fwd.logits.chunks(vocab)) {
                let token = sample::sample(logits, &item.sampling, item.output_index);
                out.tokens.push((item.seq, token));
                if item.want_logits {
                    out.logits.push((item.seq, logits.to_vec()));
                }
            }
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }
}
