//! The `cuda` executor: the forward pass on an NVIDIA GPU through cudarc with dynamic loading (it
//! builds anywhere; it runs where a GPU and CUDA 13 libraries are).
//!
//! - `driver` — finding the GPU and its libraries, raw device and pinned host buffers, streams
//!   and events, every call's result checked.
//! - `kernels` — CUDA C source compiled by NVRTC at start for the device's architecture, with the
//!   model's shape as compile-time constants; typed launches.
//! - `gemm` — bf16 matrix products with f32 accumulation through cuBLAS.
//! - `weights` — the model's weights on the device in bf16 (uploaded, or random for benchmarks).
//! - `kv` — the GPU tier, the pinned host tier, the double-buffered staging area, and the copy
//!   streams (offload, reload) ordered against compute by per-layer events.
//! - `forward` — one step's batched forward pass, layer by layer.

use super::{ExecError, Executor, PoolSizes, StepOutput};
use crate::kv::KvLayout;
use crate::model::{ModelConfig, Weights};
use crate::sched::plan::StepPlan;

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
    let _ = ordinal;
    Err(ExecError::Device("not yet built".into()))
}

/// Device bytes the executor takes for `cfg` beside its KV pools: the bf16 weights, the RoPE
/// tables and a workspace for steps of up to `max_rows` tokens.
pub fn reserved_bytes(cfg: &ModelConfig, max_rows: usize) -> u64 {
    let _ = (cfg, max_rows);
    0
}

/// The device's own ceilings, measured: what benchmarks quote utilization against.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Peaks {
    /// bf16 GEMM (f32 accumulation) through cuBLAS, 8192³, TFLOP/s.
    pub gemm_tflops: f64,
    /// Device-to-device copy, bytes read plus written, GB/s.
    pub device_copy_gbps: f64,
    /// Pinned host → device, one 256 MiB copy, GB/s.
    pub h2d_gbps: f64,
    /// Device → pinned host, one 256 MiB copy, GB/s.
    pub d2h_gbps: f64,
}

/// Measures [`Peaks`] on GPU `ordinal` (median of several runs each; about a second).
pub fn measure_peaks(ordinal: usize) -> Result<Peaks, ExecError> {
    let _ = ordinal;
    Err(ExecError::Device("not yet built".into()))
}

/// Runs step plans on the GPU.
pub struct CudaExecutor {
    info: DeviceInfo,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("device", &self.info)
            .finish_non_exhaustive()
    }
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
        let _ = (cfg, weights, layout, pools);
        Err(ExecError::Device("not yet built".into()))
    }

    /// Like [`CudaExecutor::new`] with random bf16 weights drawn on the device from `seed`
    /// (benchmarks of large shapes: nothing is generated on the host).
    pub fn random(
        cfg: &ModelConfig,
        seed: u64,
        layout: KvLayout,
        pools: PoolSizes,
    ) -> Result<Self, ExecError> {
        let _ = (cfg, seed, layout, pools);
        Err(ExecError::Device("not yet built".into()))
    }

    /// The GPU this executor runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// Waits until every copy this executor started has finished (the offloads of a step go on
    /// after `execute` returns its tokens). Benchmarks call it to time transfers.
    pub fn synchronize(&mut self) -> Result<(), ExecError> {
        Ok(())
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
        let _ = plan;
        Err(ExecError::Device("not yet built".into()))
    }
}
