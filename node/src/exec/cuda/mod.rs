//! The `cuda` executor: the forward pass on an NVIDIA GPU through cudarc with dynamic loading (it
//! builds anywhere; it runs where a GPU and CUDA 13 libraries are).
//!
//! - `driver` — finding the GPU and its libraries, raw device and pinned host buffers, streams
//!   and events, every call's result checked.
//! - `kernels` — CUDA C source (`kernels.cu`, and `decode.cu` for the decode step's fused GEMVs
//!   and attention) compiled by NVRTC at start for the device's architecture, with the model's
//!   shape as compile-time constants; typed launches.
//! - `gemm` — bf16 matrix products with f32 accumulation through cuBLAS.
//! - `weights` — the model's weights on the device in bf16 (uploaded, or random for benchmarks).
//! - `kv` — the GPU tier, the pinned host tier, the double-buffered staging area, and the copy
//!   streams (offload and reload for the plan's copies, stage-in and stage-out for staged
//!   layers) ordered against compute by per-layer events.
//! - `forward` — one step's batched forward pass, layer by layer.
//! - `workspace` — activation buffers, grown on demand.
//! - `peaks` — the device's measured GEMM and copy rates.

mod driver;
mod forward;
mod gemm;
mod kernels;
mod kv;
mod peaks;
mod trace;
mod weights;
mod workspace;

#[cfg(test)]
mod exec_tests;
#[cfg(test)]
mod kernel_tests;

pub use peaks::{Peaks, measure_peaks};

use super::cpu::validate::{Limits, validate};
use super::{ExecError, Executor, PoolSizes, StageExecutor, StageInput, StageOutput, StepOutput};
use crate::kv::KvLayout;
use crate::model::rope::RopeTable;
use crate::model::{ModelConfig, Weights};
use crate::sched::plan::StepPlan;
use cudarc::driver::CudaContext;
use driver::{DeviceBuf, PinnedBuf, Stream};
use forward::{Dims, Events, Gpu};
use kernels::{Kernels, Shape};
use std::sync::Arc;
use std::time::Instant;
use workspace::Workspace;

/// The GPU an executor runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability, e.g. `(9, 0)` on an H200.
    pub compute_capability: (i32, i32),
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Finds GPU `ordinal` and checks that the CUDA driver, cuBLAS and NVRTC libraries load. Every
/// failure is an `ExecError` that says what is missing; nothing panics.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, ExecError> {
    driver::open(ordinal).map(|(_, info)| info)
}

fn shape_of(cfg: &ModelConfig, layout: &KvLayout) -> Shape {
    Shape {
        head_dim: cfg.head_dim,
        heads: cfg.num_heads,
        kv_heads: cfg.num_kv_heads,
        block_tokens: layout.block_tokens,
    }
}

fn dims_of(cfg: &ModelConfig, block_tokens: usize) -> Dims {
    Dims {
        hidden: cfg.hidden_size,
        ff: cfg.intermediate_size,
        vocab: cfg.vocab_size,
        layers: cfg.num_layers,
        eps: cfg.rms_norm_eps as f32,
        block_tokens,
    }
}

/// Device bytes the executor takes for `cfg` beside its KV pools: the bf16 weights, the RoPE
/// tables and a workspace for steps of up to `max_rows` tokens.
pub fn reserved_bytes(cfg: &ModelConfig, max_rows: usize) -> u64 {
    let (h, q, kv, ff) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    let layer = h * (q + 2 * kv) + q * h + 3 * h * ff;
    let embed = cfg.vocab_size * h;
    let head = if cfg.tie_word_embeddings { 0 } else { embed };
    let weights = 2 * (cfg.num_layers * layer + embed + head) as u64;
    let rope = (cfg.max_position_embeddings * cfg.head_dim * 4) as u64;
    let shape = Shape {
        head_dim: cfg.head_dim,
        heads: cfg.num_heads,
        kv_heads: cfg.num_kv_heads,
        block_tokens: 16,
    };
    let ws = Workspace::bytes_for(&dims_of(cfg, 16), &shape, max_rows.max(256));
    // cuBLAS workspaces, the CUDA context and module: a fixed allowance.
    weights + rope + ws + (1 << 30)
}

/// Runs step plans on the GPU.
pub struct CudaExecutor {
    gpu: Gpu,
    limits: Limits,
    /// Pools allocated at start (a pipeline stage's chains may use up to these).
    allocated: PoolSizes,
    /// The model's layers this executor computes (all, or one pipeline stage's).
    layer_range: std::ops::Range<usize>,
    hidden: usize,
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("device", &self.info)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn unusable(reason: String) -> ExecError {
    ExecError::Config {
        executor: "cuda",
        reason,
    }
}

/// What the executor is built from: host weights, or a seed for random ones.
enum Source<'a> {
    Host(&'a Weights),
    Random(u64),
}

impl CudaExecutor {
    /// Uploads `weights` (all of `cfg`'s layers) in bf16 and allocates `pools` blocks of
    /// `layout`, which must match `cfg` and hold bf16 (`dtype_bytes == 2`).
    pub fn new(
        cfg: &ModelConfig,
        weights: Weights,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        Self::build(cfg, Source::Host(&weights), layout, pools)
    }

    /// Like [`CudaExecutor::new`] with random bf16 weights drawn on the device from `seed`
    /// (benchmarks of large shapes: nothing is generated on the host).
    pub fn random(
        cfg: &ModelConfig,
        seed: u64,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        Self::build(cfg, Source::Random(seed), layout, pools)
    }

    /// One pipeline stage: layers `weights.layer_range` of `cfg` from host weights, with
    /// `pools` of `layout` (whose `layers` is the stage's layer count).
    pub fn stage(
        cfg: &ModelConfig,
        mut weights: Weights,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        let range = weights.layer_range.clone();
        let stage_cfg = stage_config(cfg, &range)?;
        weights.layer_range = 0..range.len();
        let mut exec = Self::build(&stage_cfg, Source::Host(&weights), layout, pools)?;
        exec.set_stage(cfg, range);
        Ok(exec)
    }

    /// One pipeline stage with random bf16 weights drawn on the device (benchmarks; the
    /// layers are not those a whole-model executor would draw from the same seed).
    pub fn stage_random(
        cfg: &ModelConfig,
        range: std::ops::Range<usize>,
        seed: u64,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        let stage_cfg = stage_config(cfg, &range)?;
        let mut exec = Self::build(&stage_cfg, Source::Random(seed), layout, pools)?;
        exec.set_stage(cfg, range);
        Ok(exec)
    }

    fn set_stage(&mut self, cfg: &ModelConfig, range: std::ops::Range<usize>) {
        self.gpu.embeds = range.start == 0;
        self.gpu.samples = range.end == cfg.num_layers;
        self.limits.exact_layers = false;
        self.allocated = self.limits.pools;
        self.layer_range = range;
    }

    fn build(
        cfg: &ModelConfig,
        source: Source<'_>,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        if layout.dtype_bytes != 2 {
            return Err(unusable(format!(
                "KV blocks hold bf16, layout has {}-byte elements",
                layout.dtype_bytes
            )));
        }
        let expected = (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim);
        if (layout.layers, layout.kv_heads, layout.head_dim) != expected {
            return Err(unusable(format!(
                "layout {layout:?} does not fit the model's (layers, kv_heads, head_dim) {expected:?}"
            )));
        }
        let shape = shape_of(cfg, &layout);
        shape.check().map_err(unusable)?;
        let (ctx, info) = driver::open(0)?;
        ctx.bind_to_thread()
            .map_err(|e| driver::dev("binding the GPU", e))?;
        let k = Kernels::load(info.compute_capability, shape)?;
        let compute = Stream::new()?;
        let w = match source {
            Source::Host(w) => weights::upload(cfg, w)?,
            Source::Random(seed) => weights::random(cfg, seed, &k, &compute)?,
        };
        let rope = RopeTable::new(cfg, cfg.max_position_embeddings);
        let (cos, sin) = rope.cos_sin();
        let cos_buf = DeviceBuf::new(cos.len() * 4, "RoPE tables")?;
        cos_buf.upload(cos, "RoPE tables")?;
        let sin_buf = DeviceBuf::new(sin.len() * 4, "RoPE tables")?;
        sin_buf.upload(sin, "RoPE tables")?;
        let dims = dims_of(cfg, layout.block_tokens);
        let gpu = Gpu {
            blas: gemm::Blas::new(&compute)?,
            offload: Stream::new()?,
            reload: Stream::new()?,
            stage_in: Stream::new()?,
            stage_out: Stream::new()?,
            w,
            kv: kv::KvMemory::new(&layout, &pools)?,
            cos: cos_buf,
            sin: sin_buf,
            ws: Workspace::new(&dims, &shape)?,
            meta_host: PinnedBuf::new(1 << 20, "step metadata")?,
            meta_dev: DeviceBuf::new(1 << 20, "step metadata")?,
            ev: Events::new(cfg.num_layers)?,
            copy_wait: vec![false; cfg.num_layers],
            in_flight: Default::default(),
            dims,
            step_started: Instant::now(),
            trace: trace::StepTrace::from_env(cfg.num_layers)?,
            embeds: true,
            samples: true,
            compute,
            k,
        };
        let limits = Limits {
            exact_layers: true,
            layers: cfg.num_layers,
            vocab: cfg.vocab_size,
            max_pos: rope.max_pos(),
            block_tokens: layout.block_tokens,
            pools,
        };
        Ok(CudaExecutor {
            gpu,
            allocated: pools,
            layer_range: 0..cfg.num_layers,
            hidden: cfg.hidden_size,
            limits,
            info,
            ctx,
        })
    }

    /// The GPU this executor runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// Waits until every copy this executor started has finished (the offloads of a step go on
    /// after `execute` returns its tokens). Benchmarks call it to time transfers.
    pub fn synchronize(&mut self) -> Result<(), ExecError> {
        self.bind()?;
        let g = &self.gpu;
        for s in [&g.compute, &g.offload, &g.reload, &g.stage_in, &g.stage_out] {
            s.sync("waiting for the GPU")?;
        }
        Ok(())
    }

    /// Transfers issued between tiers so far and their total bytes (their mean size shows how
    /// well block copies coalesce).
    pub fn transfer_stats(&self) -> (u64, u64) {
        (self.gpu.kv.transfers, self.gpu.kv.transfer_bytes)
    }

    /// Bytes of weights one forward pass reads.
    pub fn weight_bytes_per_pass(&self) -> u64 {
        self.gpu.w.bytes_per_pass()
    }

    fn bind(&self) -> Result<(), ExecError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver::dev("binding the GPU to this thread", e))
    }
}

impl Drop for CudaExecutor {
    fn drop(&mut self) {
        // Buffers are freed in the executor's context, whichever thread drops it.
        let _ = self.bind();
        let _ = self.synchronize();
    }
}

impl Executor for CudaExecutor {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// Copies run on their own streams beside compute.
    fn copies_overlap_compute(&self) -> bool {
        true
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, ExecError> {
        let started = Instant::now();
        validate(plan, &self.limits)?;
        self.bind()?;
        let (mut out, _) = self.gpu.step(plan, None)?;
        out.elapsed = started.elapsed();
        Ok(out)
    }

    fn decode_wide_from(&self) -> Option<usize> {
        self.gpu.k.decode_wide_from()
    }
}

/// `cfg` cut to the layers of one stage.
fn stage_config(
    cfg: &ModelConfig,
    range: &std::ops::Range<usize>,
) -> Result<ModelConfig, ExecError> {
    if range.is_empty() || range.end > cfg.num_layers {
        return Err(unusable(format!(
            "layers {range:?} are not a stage of a {}-layer model",
            cfg.num_layers
        )));
    }
    Ok(ModelConfig {
        num_layers: range.len(),
        ..cfg.clone()
    })
}

impl StageExecutor for CudaExecutor {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn layers(&self) -> std::ops::Range<usize> {
        self.layer_range.clone()
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn copies_overlap_compute(&self) -> bool {
        true
    }

    /// The pools were allocated at start; a chain may use up to them. Blocks keep whatever
    /// they held: the scheduler never reads a position it has not written.
    fn reset_pools(&mut self, pools: PoolSizes) -> Result<(), ExecError> {
        let a = self.allocated;
        if pools.gpu_blocks > a.gpu_blocks
            || pools.host_blocks > a.host_blocks
            || pools.staging_blocks > a.staging_blocks
        {
            return Err(unusable(format!(
                "the stage allocated {a:?} at start; the chain asks for {pools:?}"
            )));
        }
        self.limits.pools = pools;
        Ok(())
    }

    fn run_stage(
        &mut self,
        plan: &StepPlan,
        input: StageInput<'_>,
    ) -> Result<(StageOutput, u64), ExecError> {
        validate(plan, &self.limits)?;
        self.bind()?;
        let hidden = match input {
            StageInput::Tokens => None,
            StageInput::Hidden(h) => Some(h),
        };
        let (out, x) = self.gpu.step(plan, hidden)?;
        let output = match x {
            Some(x) => StageOutput::Hidden(x),
            None => StageOutput::Sampled {
                tokens: out.tokens,
                logits: out.logits,
            },
        };
        Ok((output, out.transfer_bytes))
    }
}
