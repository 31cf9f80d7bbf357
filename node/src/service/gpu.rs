//! The `cuda` executor's part of setting up a node (and of `strata up` and `strata bench
//! engine`, which choose it too): finding the GPU, the default budgets, and the executor with
//! its weights. In a build without the `cuda` feature [`probe`] and [`executor`] return
//! [`ServiceError::CudaNotBuilt`]; nothing else here needs a GPU.
//!
//! Budgets: `gpu_mib` defaults to [`GPU_UTILIZATION`] of the device's free memory at start
//! (split evenly when several nodes share one GPU) less what the executor reserves beside its
//! KV pools (bf16 weights, RoPE tables, the workspace of the largest step); `host_mib` to
//! [`HOST_MIB`] of pinned host memory. Neither default goes past [`useful_kv_mib`], the KV the
//! scheduler's limits let it use at once: a small model on a large GPU would otherwise get tens
//! of millions of blocks whose bookkeeping costs gigabytes of RAM and seconds at start, and pin
//! host memory nothing can fill.
//!
//! Weights ([`GpuWeights::choose`]): a model of at most
//! [`CPU_MAX_LAYER_PARAMS`](super::setup::CPU_MAX_LAYER_PARAMS) layer parameters (e.g. `tiny`)
//! loads on the host and is uploaded, so its tokens match the cpu executor's; so does any HF
//! directory, however large (slow: f32 on the host first). Larger presets draw random bf16
//! weights on the device from the seed.

use super::ServiceError;
use super::config::SchedSettings;
use super::setup::{CPU_MAX_LAYER_PARAMS, layer_params};
use crate::exec::{Executor, PoolSizes};
use crate::kv::KvLayout;
use crate::model::{ModelConfig, ModelError, ModelSource, Weights};

/// Share of the device's free memory a `cuda` node budgets for weights, workspace and KV
/// (vLLM's default); the rest is left to the CUDA context, cuBLAS and fragmentation.
pub const GPU_UTILIZATION: f64 = 0.9;
/// Host budget of a `cuda` node when `host_mib` is not given: 32 GiB of pinned host memory.
pub const HOST_MIB: u64 = 32 << 10;
/// The GPU a `cuda` node runs on (the executor takes the first one CUDA shows it; set
/// `CUDA_VISIBLE_DEVICES` to choose).
pub const ORDINAL: usize = 0;

/// The GPU a `cuda` node will run on, and what its executor will take beside the KV pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProbe {
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Device bytes the executor takes beside its KV pools.
    pub reserved_bytes: u64,
}

impl GpuProbe {
    /// The default GPU-tier budget of each of `nodes` nodes sharing this GPU, MiB: its share
    /// of [`GPU_UTILIZATION`] of the free memory, less the executor's reserve. `model` names
    /// the model in the error when nothing is left for KV.
    pub fn default_gpu_mib(&self, model: &str, nodes: usize) -> Result<u64, ServiceError> {
        let nodes = nodes.max(1);
        let share = (self.free_bytes as f64 * GPU_UTILIZATION / nodes as f64) as u64;
        match share.checked_sub(self.reserved_bytes) {
            Some(kv) if kv >= 1 << 20 => Ok(kv >> 20),
            _ => Err(ServiceError::GpuTooSmall {
                model: model.to_string(),
                device: self.name.clone(),
                reserved_mib: self.reserved_bytes.div_ceil(1 << 20),
                share_mib: share >> 20,
                free_mib: self.free_bytes >> 20,
                nodes,
            }),
        }
    }

    /// Whether a GPU-tier budget of `gpu_mib` plus the reserve fits in the free memory.
    pub fn fits(&self, gpu_mib: u64) -> bool {
        (gpu_mib << 20).saturating_add(self.reserved_bytes) <= self.free_bytes
    }
}

/// MiB of bf16 KV that `s` lets the scheduler use at once: `max_batch_seqs` sequences and the
/// staging area, each of `max_seq_tokens` (else the model's context) in every layer.
pub fn useful_kv_mib(model: &ModelConfig, s: &SchedSettings) -> u64 {
    let max_seq = s.max_seq_tokens.unwrap_or(model.max_position_embeddings) as u64;
    let token_bytes = (2 * model.kv_dim() * 2 * model.num_layers) as u64;
    ((s.max_batch_seqs as u64 + 1) * max_seq * token_bytes).div_ceil(1 << 20)
}

/// Rows of the largest step `s` lets the scheduler plan: its prefill budget (or chunk) plus
/// one decode row per running sequence. What the executor's workspace is reserved for.
pub fn max_step_rows(s: &SchedSettings) -> usize {
    s.max_prefill_tokens.max(s.prefill_chunk_tokens) + s.max_batch_seqs
}

/// Finds the GPU and checks that the CUDA libraries load; `model` and `max_rows` size the
/// executor's reserve. No GPU or no library: [`ServiceError::NoGpu`], which says what is
/// missing.
#[cfg(feature = "cuda")]
pub fn probe(model: &ModelConfig, max_rows: usize) -> Result<GpuProbe, ServiceError> {
    use crate::exec::cuda;
    let info = cuda::probe(ORDINAL).map_err(no_gpu)?;
    Ok(GpuProbe {
        ordinal: info.ordinal,
        name: info.name,
        total_bytes: info.total_bytes,
        free_bytes: info.free_bytes,
        reserved_bytes: cuda::reserved_bytes(model, max_rows),
    })
}

/// The probe's error as [`ServiceError::NoGpu`], said once: the probe's own reasons already
/// start with "no usable GPU".
#[cfg(feature = "cuda")]
fn no_gpu(e: crate::exec::ExecError) -> ServiceError {
    let reason = match e {
        crate::exec::ExecError::Device(reason) => reason,
        other => other.to_string(),
    };
    let reason = match reason.strip_prefix("no usable GPU: ") {
        Some(rest) => rest.to_string(),
        None => reason,
    };
    ServiceError::NoGpu { reason }
}

/// One pipeline stage's `cuda` executor: layers `range` of `model`, uploaded from the host
/// (small models and HF directories) or random bf16 on the device (large presets; drawn per
/// stage, so not the layers a whole-model executor would draw).
#[cfg(feature = "cuda")]
pub fn stage_executor(
    source: &ModelSource,
    model: &ModelConfig,
    range: std::ops::Range<usize>,
    seed: u64,
    layout: KvLayout,
    pools: PoolSizes,
    progress: &mut dyn FnMut(&str),
) -> Result<Box<dyn crate::exec::StageExecutor>, ServiceError> {
    use crate::exec::cuda::CudaExecutor;
    let large = layer_params(model) > CPU_MAX_LAYER_PARAMS;
    let exec = if large && matches!(source, ModelSource::Preset(_)) {
        progress(&format!(
            "drawing random bf16 weights for layers {}..{} of {source} on the GPU (seed {seed})",
            range.start, range.end
        ));
        CudaExecutor::stage_random(model, range, seed, layout, pools)?
    } else {
        progress(&format!(
            "loading layers {}..{} of {source} on the host",
            range.start, range.end
        ));
        let w = source.load(seed, range)?.weights;
        CudaExecutor::stage(model, w, layout, pools)?
    };
    Ok(Box::new(exec))
}

/// This strata was built without the `cuda` feature: [`ServiceError::CudaNotBuilt`].
#[cfg(not(feature = "cuda"))]
pub fn stage_executor(
    source: &ModelSource,
    model: &ModelConfig,
    range: std::ops::Range<usize>,
    seed: u64,
    layout: KvLayout,
    pools: PoolSizes,
    progress: &mut dyn FnMut(&str),
) -> Result<Box<dyn crate::exec::StageExecutor>, ServiceError> {
    let _ = (source, model, range, seed, layout, pools, progress);
    Err(ServiceError::CudaNotBuilt)
}

/// This strata was built without the `cuda` feature: [`ServiceError::CudaNotBuilt`].
#[cfg(not(feature = "cuda"))]
pub fn probe(model: &ModelConfig, max_rows: usize) -> Result<GpuProbe, ServiceError> {
    let _ = (model, max_rows);
    Err(ServiceError::CudaNotBuilt)
}

/// Where a `cuda` executor's weights come from.
#[derive(Debug, Clone)]
pub enum GpuWeights {
    /// Loaded on the host (f32), converted to bf16 and uploaded.
    Host(Weights),
    /// Random bf16 weights drawn on the device from `seed`.
    Random { seed: u64 },
}

impl GpuWeights {
    /// Host weights (`source.load`) for a model of at most `CPU_MAX_LAYER_PARAMS` layer
    /// parameters and for any HF directory; random ones on the device for larger presets.
    /// `model` is `source`'s config, or that of its first `model.num_layers` layers (a model
    /// cut for a benchmark): those are the layers loaded and counted. `progress` hears which,
    /// and that a large directory is slow.
    pub fn choose(
        source: &ModelSource,
        model: &ModelConfig,
        seed: u64,
        progress: &mut dyn FnMut(&str),
    ) -> Result<GpuWeights, ModelError> {
        let params = layer_params(model);
        let small = params <= CPU_MAX_LAYER_PARAMS;
        if !small && matches!(source, ModelSource::Preset(_)) {
            progress(&format!(
                "drawing random bf16 weights for {source} on the GPU (seed {seed})"
            ));
            return Ok(GpuWeights::Random { seed });
        }
        if small {
            progress(&format!("loading {source} on the host"));
        } else {
            progress(&format!(
                "loading {source} on the host ({:.0} GB in f32) to upload it in bf16: \
                 slow for a model of {params} layer parameters",
                4.0 * params as f64 / 1e9
            ));
        }
        Ok(GpuWeights::Host(
            source.load(seed, 0..model.num_layers)?.weights,
        ))
    }

    /// These weights for the first `layers` of the layers they hold (random ones need nothing
    /// cut: they are drawn for the model they are built with).
    pub fn first_layers(&self, layers: usize) -> GpuWeights {
        match self {
            GpuWeights::Host(w) => GpuWeights::Host(w.first_layers(layers)),
            GpuWeights::Random { seed } => GpuWeights::Random { seed: *seed },
        }
    }
}

/// The `cuda` executor for `model` with `pools` of `layout` (bf16: `dtype_bytes == 2`), and
/// what `calibrate` made of it first (a cost profile; `|_| Ok(())` for none).
///
/// A step of copies alone returns when its copies are done (the executor waits for them), so
/// calibration sees real transfer times.
#[cfg(feature = "cuda")]
pub fn executor<T, E: From<ServiceError>>(
    model: &ModelConfig,
    weights: GpuWeights,
    layout: KvLayout,
    pools: PoolSizes,
    calibrate: impl FnOnce(&mut dyn Executor) -> Result<T, E>,
) -> Result<(Box<dyn Executor>, T), E> {
    use crate::exec::cuda::CudaExecutor;
    let built = match weights {
        GpuWeights::Host(w) => CudaExecutor::new(model, w, layout, pools),
        GpuWeights::Random { seed } => CudaExecutor::random(model, seed, layout, pools),
    };
    let mut exec = built.map_err(|e| E::from(ServiceError::Exec(e)))?;
    let calibrated = calibrate(&mut exec)?;
    Ok((Box::new(exec), calibrated))
}

/// This strata was built without the `cuda` feature: [`ServiceError::CudaNotBuilt`].
#[cfg(not(feature = "cuda"))]
pub fn executor<T, E: From<ServiceError>>(
    model: &ModelConfig,
    weights: GpuWeights,
    layout: KvLayout,
    pools: PoolSizes,
    calibrate: impl FnOnce(&mut dyn Executor) -> Result<T, E>,
) -> Result<(Box<dyn Executor>, T), E> {
    let _ = (model, weights, layout, pools, calibrate);
    Err(ServiceError::CudaNotBuilt.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200(reserved_gib: u64) -> GpuProbe {
        GpuProbe {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            total_bytes: 143_771 << 20,
            free_bytes: 143_000 << 20,
            reserved_bytes: reserved_gib << 30,
        }
    }

    #[test]
    fn the_default_budget_is_a_share_of_free_memory_less_the_reserve() {
        let gpu = h200(16);
        let one = gpu.default_gpu_mib("llama-3-8b", 1).unwrap();
        assert_eq!(one, (143_000.0 * 0.9) as u64 - (16 << 10));
        assert!(gpu.fits(one));
        assert!(!gpu.fits(143_000));
        let two = gpu.default_gpu_mib("llama-3-8b", 2).unwrap();
        assert_eq!(two, (143_000.0 * 0.45) as u64 - (16 << 10));
        assert!(2 * two + 2 * (16 << 10) <= 143_000);
    }

    #[test]
    fn a_model_that_leaves_no_room_for_kv_names_the_numbers() {
        let err = h200(140).default_gpu_mib("llama-3-70b", 1).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ServiceError::GpuTooSmall { nodes: 1, .. }),
            "{text}"
        );
        assert!(
            text.contains("llama-3-70b") && text.contains("143360 MiB") && text.contains("H200"),
            "{text}"
        );
    }

    #[test]
    fn small_models_get_no_more_kv_than_they_can_use() {
        let tiny = crate::model::Preset::Tiny.config();
        let s = SchedSettings::default();
        // 257 sequences of 32768 tokens, 4 layers of 2 KV heads of 16 bf16 values, K and V.
        assert_eq!(useful_kv_mib(&tiny, &s), (257 * 32768 * 512) >> 20);
        let eight_b = crate::model::Preset::Llama3_8b.config();
        assert!(
            useful_kv_mib(&eight_b, &s) > super::super::setup::H200_MIB,
            "an 8B model can use a whole H200"
        );
    }

    #[test]
    fn the_largest_step_counts_prefill_and_decode_rows() {
        let s = SchedSettings {
            max_prefill_tokens: 8192,
            prefill_chunk_tokens: 0,
            max_batch_seqs: 64,
            ..SchedSettings::default()
        };
        assert_eq!(max_step_rows(&s), 8192 + 64);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_says_how_to_build_it() {
        let model = crate::model::Preset::Tiny.config();
        let err = probe(&model, 1024).unwrap_err().to_string();
        assert!(err.contains("`cuda` feature") && err.contains("cargo build --release"));
    }
}
