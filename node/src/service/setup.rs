//! Building a node's engine from its [`NodeConfig`]: model, KV layout, pools, cost profile and
//! executor. Blocking work (weights, calibration): run it off the async runtime.
//!
//! Pools: the GPU budget (`gpu_mib`) pays for the staging area first (layer-wise mode: one
//! longest sequence's blocks per layer), the rest is the GPU tier; `host_mib` is the host tier.
//! `cpu` keeps KV in f32, `sim` and `cuda` in bf16 (a GPU's serving dtype). A `cuda` node
//! probes its GPU before anything else, so a missing GPU or library is the first error; its
//! default budgets and weights are [`gpu`](super::gpu)'s.
//!
//! Cost profile: a `profile` file when given; else the analytic H200 roofline on `sim`, and on
//! `cpu` and `cuda` a quick calibration of the very executor that will serve (`cpu`: prompts up
//! to 1024 tokens, one repeat per point, well under a second for `tiny`; `cuda`: prompts up to
//! 4096 tokens, the median of three repeats).

use super::ServiceError;
use super::config::{ExecutorKind, NodeConfig};
use super::gpu::{self, GpuProbe, GpuWeights};
use crate::engine::calibrate::{CalibrationPlan, calibrate};
use crate::engine::{Engine, EngineConfig};
use crate::exec::cpu::CpuExecutor;
use crate::exec::sim::SimExecutor;
use crate::exec::{Executor, PoolSizes};
use crate::kv::KvLayout;
use crate::model::{ModelConfig, ModelSource};
use crate::sched::{Mode, SchedulerConfig, roofline};
use strata_transport::proto::{CostProfile, NodeInfo};
use strata_transport::tls::Identity;

/// GPU budget of a `cpu` node when `gpu_mib` is not given.
pub const CPU_GPU_MIB: u64 = 1024;
/// Host budget of a `cpu` node when `host_mib` is not given.
pub const CPU_HOST_MIB: u64 = 2048;
/// Device memory of an H200 as the driver reports it, MiB.
pub const H200_MIB: u64 = 143_771;
/// Share of device memory a `sim` node budgets for weights and KV (as vLLM's default).
pub const SIM_GPU_UTILIZATION: f64 = 0.9;
/// Host budget of a `sim` node when `host_mib` is not given: 256 GiB of pinned DRAM.
pub const SIM_HOST_MIB: u64 = 256 << 10;
/// Layer parameters past which the cpu executor is refused.
pub const CPU_MAX_LAYER_PARAMS: usize = 2_000_000_000;

/// What a prepared node runs.
pub enum Role {
    /// An engine: a whole model, or the driver of a pipeline.
    Engine(Box<Engine>),
    /// A pipeline stage after the first: no scheduler, its layers for the driver's chain.
    Stage(std::sync::Arc<crate::pipeline::worker::StageWorker>),
}

/// An engine built from a config, with what the service reports about it.
pub struct Prepared {
    pub config: NodeConfig,
    pub role: Role,
    pub info: NodeInfo,
    pub cost: CostProfile,
    pub identity: Identity,
    /// The GPU-tier budget after defaults, MiB (staging included).
    pub gpu_mib: u64,
    /// The host-tier budget after defaults, MiB.
    pub host_mib: u64,
    /// The GPU a `cuda` node runs on; `None` on `cpu` and `sim`.
    pub gpu: Option<GpuProbe>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("info", &self.info)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// Parameters of a model's decoder layers (attention and MLP matrices).
pub fn layer_params(cfg: &ModelConfig) -> usize {
    let (h, q, kv, ff) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    cfg.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * ff)
}

/// Bytes of a model's weights in its serving dtype (bf16 on a GPU).
fn weight_bytes(cfg: &ModelConfig, dtype_bytes: usize) -> u64 {
    let embed = cfg.vocab_size * cfg.hidden_size;
    let head = if cfg.tie_word_embeddings { 0 } else { embed };
    ((layer_params(cfg) + embed + head) * dtype_bytes) as u64
}

/// The budgets after defaults, and the GPU they were taken from.
#[derive(Debug)]
struct Budgets {
    gpu_mib: u64,
    host_mib: u64,
    gpu: Option<GpuProbe>,
}

/// The budgets of `cfg`'s executor; on `cuda` this probes the GPU (its errors come first).
fn budgets(
    cfg: &NodeConfig,
    model: &ModelConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Budgets, ServiceError> {
    let (gpu_mib, host_mib, gpu) = match cfg.executor {
        ExecutorKind::Cpu => (
            cfg.gpu_mib.unwrap_or(CPU_GPU_MIB),
            cfg.host_mib.unwrap_or(CPU_HOST_MIB),
            None,
        ),
        ExecutorKind::Sim => {
            let usable = (H200_MIB as f64 * SIM_GPU_UTILIZATION) as u64;
            let weights = weight_bytes(model, 2) >> 20;
            (
                cfg.gpu_mib
                    .unwrap_or(usable.saturating_sub(weights).max(1024)),
                cfg.host_mib.unwrap_or(SIM_HOST_MIB),
                None,
            )
        }
        ExecutorKind::Cuda => {
            let probe = gpu::probe(model, gpu::max_step_rows(&cfg.scheduler))?;
            let useful_mib = gpu::useful_kv_mib(model, &cfg.scheduler);
            let gpu_mib = match cfg.gpu_mib {
                Some(mib) => mib,
                None => probe.default_gpu_mib(&cfg.model, 1)?.min(useful_mib),
            };
            progress(&format!(
                "GPU {}: {} with {} of {} MiB free; {} MiB reserved for weights and workspace, \
                 gpu_mib = {gpu_mib}",
                probe.ordinal,
                probe.name,
                probe.free_bytes >> 20,
                probe.total_bytes >> 20,
                probe.reserved_bytes.div_ceil(1 << 20),
            ));
            if !probe.fits(gpu_mib) {
                progress("warning: gpu_mib and the reserve exceed the GPU's free memory");
            }
            let host_mib = cfg.host_mib.unwrap_or(gpu::HOST_MIB.min(useful_mib));
            (gpu_mib, host_mib, Some(probe))
        }
    };
    Ok(Budgets {
        gpu_mib,
        host_mib,
        gpu,
    })
}

fn scheduler_config(
    cfg: &NodeConfig,
    max_seq: usize,
    staging: usize,
    gpu: usize,
    layers: usize,
) -> SchedulerConfig {
    let s = &cfg.scheduler;
    SchedulerConfig {
        mode: s.mode,
        max_batch_seqs: s.max_batch_seqs,
        max_prefill_tokens: s.max_prefill_tokens,
        prefill_chunk_tokens: s.prefill_chunk_tokens,
        max_waiting: s.max_waiting,
        watermark_blocks: s.watermark_blocks.unwrap_or(layers.max(gpu / 100)),
        staging_blocks: staging,
        max_seq_tokens: max_seq,
        stream_decode: s.stream_decode,
    }
}

/// The cost profile: a file, the H200 roofline (`sim`), or a calibration of `exec` (`cpu`,
/// `cuda`).
fn cost_profile(
    cfg: &NodeConfig,
    model: &ModelConfig,
    layout: KvLayout,
    pools: PoolSizes,
    exec: Option<&mut dyn Executor>,
    progress: &mut dyn FnMut(&str),
) -> Result<CostProfile, ServiceError> {
    if let Some(path) = &cfg.profile {
        let bad = |reason: String| ServiceError::Profile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        return toml::from_str(&text).map_err(|e| bad(e.to_string()));
    }
    let Some(exec) = exec else {
        // `sim`: the profile fitted on an H200 where the repository has one, else the roofline.
        if let Some(fitted) = crate::sched::profiles::h200(&cfg.model) {
            progress(&format!(
                "cost profile: fitted on an H200 (profiles/h200-{}.toml)",
                cfg.model
            ));
            return Ok(fitted);
        }
        return Ok(roofline::profile(model, &roofline::H200, 2));
    };
    // The largest plan that fits the pools; calibration writes blocks from index 0 up, and the
    // engine's block manager starts afresh after it. A GPU is fast enough for longer prompts
    // and for the median of three runs, which its first-call costs need.
    let (prompts, repeats): (&[usize], usize) = match exec.name() {
        "cuda" => (&[4096, 1024, 256, 64], 3),
        _ => (&[1024, 256, 64], 1),
    };
    let plan = prompts
        .iter()
        .map(|&m| CalibrationPlan {
            repeats,
            ..CalibrationPlan::for_prompts(m)
        })
        .find(|p| {
            p.gpu_blocks_needed(&layout) <= pools.gpu_blocks
                && p.host_blocks_needed() <= pools.host_blocks
        });
    let Some(plan) = plan else {
        progress("pools too small to calibrate: using the H200 roofline as the cost profile");
        return Ok(roofline::profile(
            model,
            &roofline::H200,
            layout.dtype_bytes,
        ));
    };
    progress(&format!("calibrating the {} executor", exec.name()));
    let (cost, _) = calibrate(
        exec,
        layout,
        pools.gpu_blocks,
        pools.host_blocks,
        &plan,
        |_, _| {},
    )?;
    Ok(cost)
}

/// Loads the model and builds the engine `cfg` describes. `progress` hears what takes time.
pub fn prepare(cfg: NodeConfig, mut progress: impl FnMut(&str)) -> Result<Prepared, ServiceError> {
    cfg.validate()?;
    let source: ModelSource = cfg.model.parse()?;
    let model = source.config()?;
    let Budgets {
        gpu_mib,
        host_mib,
        gpu,
    } = budgets(&cfg, &model, &mut progress)?;
    let identity = Identity::load(&cfg.tls.dir, cfg.member())?;
    let layers = model.num_layers;
    let dtype_bytes = match cfg.executor {
        ExecutorKind::Cpu => 4,
        ExecutorKind::Sim | ExecutorKind::Cuda => 2,
    };
    let mut layout = KvLayout::for_model(&model, cfg.block_tokens, dtype_bytes);
    // A stage's own layers; a driver's engine accounts for the chain's layer slots.
    let layers = cfg.stage.as_ref().map_or(layers, |st| st.range().len());
    let max_seq = cfg
        .scheduler
        .max_seq_tokens
        .unwrap_or(model.max_position_embeddings);
    if max_seq > model.max_position_embeddings {
        return Err(ServiceError::ContextTooLong {
            max_seq_tokens: max_seq,
            context: model.max_position_embeddings,
        });
    }

    let block_bytes = layout.block_bytes();
    let budget = usize::try_from((gpu_mib << 20) / block_bytes).unwrap_or(usize::MAX);
    let staging = match cfg.scheduler.mode {
        Mode::Layerwise => layout.blocks_for(max_seq),
        Mode::Baseline => 0,
    };
    if budget < staging + layers {
        return Err(ServiceError::GpuBudget {
            gpu_mib,
            blocks: budget,
            block_bytes,
            staging,
            layers,
        });
    }
    let pools = PoolSizes {
        gpu_blocks: budget - staging,
        host_blocks: usize::try_from((host_mib << 20) / block_bytes).unwrap_or(usize::MAX),
        staging_blocks: staging,
    };

    let (exec, cost): (Box<dyn Executor>, CostProfile) = match cfg.executor {
        ExecutorKind::Sim => {
            let cost = cost_profile(&cfg, &model, layout, pools, None, &mut progress)?;
            let exec = SimExecutor::new(cost, layout, model.vocab_size as u32, cfg.seed);
            (Box::new(exec), cost)
        }
        _ if cfg.stage.is_some() => {
            let st = cfg.stage.clone().expect("checked by the guard");
            if !st.is_driver() {
                let worker = super::stage_setup::worker(
                    &cfg,
                    &st,
                    &source,
                    &model,
                    layout,
                    pools,
                    &identity,
                    &mut progress,
                )?;
                let info = node_info(&cfg, &model, layout, pools, max_seq, st.range().len());
                return Ok(Prepared {
                    config: cfg,
                    role: Role::Stage(worker),
                    info,
                    cost: CostProfile::default(),
                    identity,
                    gpu_mib,
                    host_mib,
                    gpu,
                });
            }
            let (mut exec, slots) = super::stage_setup::driver(
                &cfg,
                &st,
                &source,
                &model,
                layout,
                pools,
                &identity,
                &mut progress,
            )?;
            layout.layers = slots;
            let cost = cost_profile(&cfg, &model, layout, pools, Some(&mut exec), &mut progress)?;
            (Box::new(exec), cost)
        }
        ExecutorKind::Cpu => {
            let params = layer_params(&model);
            if params > CPU_MAX_LAYER_PARAMS {
                return Err(ServiceError::TooLargeForCpu {
                    model: cfg.model.clone(),
                    params,
                });
            }
            progress(&format!("loading {}", cfg.model));
            let loaded = source.load(cfg.seed, 0..layers)?;
            let mut exec = CpuExecutor::new(&loaded.config, loaded.weights, layout, pools)?;
            let cost = cost_profile(&cfg, &model, layout, pools, Some(&mut exec), &mut progress)?;
            (Box::new(exec), cost)
        }
        ExecutorKind::Cuda => {
            let weights = GpuWeights::choose(&source, &model, cfg.seed, &mut progress)?;
            progress("starting the cuda executor");
            gpu::executor(&model, weights, layout, pools, |exec| {
                cost_profile(&cfg, &model, layout, pools, Some(exec), &mut progress)
            })?
        }
    };
    let sched = scheduler_config(&cfg, max_seq, staging, pools.gpu_blocks, layout.layers);
    let engine = Engine::new(EngineConfig { sched, pools }, layout, cost, exec)?;
    let info = node_info(&cfg, &model, layout, pools, max_seq, layout.layers);
    Ok(Prepared {
        config: cfg,
        role: Role::Engine(Box::new(engine)),
        info,
        cost,
        identity,
        gpu_mib,
        host_mib,
        gpu,
    })
}

/// What the node announces: `layers` are the layers its KV accounting has (a pipeline
/// driver's layer slots; a worker's own layers).
fn node_info(
    cfg: &NodeConfig,
    model: &ModelConfig,
    layout: KvLayout,
    pools: PoolSizes,
    max_seq: usize,
    layers: usize,
) -> NodeInfo {
    NodeInfo {
        node: cfg.id.clone(),
        model: cfg.model_name(),
        executor: cfg.executor.name().into(),
        vocab_size: model.vocab_size as u32,
        num_layers: layers as u32,
        max_seq_tokens: max_seq as u32,
        block_tokens: cfg.block_tokens as u32,
        block_bytes: layout.block_bytes(),
        gpu_blocks: pools.gpu_blocks as u64,
        host_blocks: pools.host_blocks as u64,
        eos_tokens: model.eos_token_ids.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn sim_budget_is_an_h200_less_the_weights() {
        let cfg = NodeConfig {
            executor: ExecutorKind::Sim,
            model: "llama-3-8b".into(),
            ..NodeConfig::default()
        };
        let model = Preset::Llama3_8b.config();
        // Llama 3 8B: ~16 GB of bf16 weights.
        let w = weight_bytes(&model, 2) as f64 / 1e9;
        assert!((15.5..16.5).contains(&w), "{w}");
        let b = budgets(&cfg, &model, &mut |_| {}).unwrap();
        assert!((105_000..120_000).contains(&b.gpu_mib), "{}", b.gpu_mib);
        assert_eq!(b.host_mib, SIM_HOST_MIB);
        assert_eq!(b.gpu, None);
        let tiny = budgets(&NodeConfig::default(), &Preset::Tiny.config(), &mut |_| {}).unwrap();
        assert_eq!((tiny.gpu_mib, tiny.host_mib), (CPU_GPU_MIB, CPU_HOST_MIB));
    }

    /// A `cuda` node probes its GPU before it reads certificates or weights, so where there is
    /// no GPU (or no `cuda` feature) that is the error it reports.
    #[test]
    fn cuda_reports_a_missing_gpu_first() {
        let cfg = NodeConfig {
            executor: ExecutorKind::Cuda,
            tls: super::super::TlsConfig {
                dir: "no-such-certs-dir".into(),
                member: None,
            },
            ..NodeConfig::default()
        };
        let result = prepare(cfg, |_| {});
        #[cfg(not(feature = "cuda"))]
        assert!(
            matches!(result, Err(ServiceError::CudaNotBuilt)),
            "{result:?}"
        );
        #[cfg(feature = "cuda")]
        match result {
            Err(e @ ServiceError::NoGpu { .. }) => {
                let text = e.to_string();
                assert!(text.starts_with("executor cuda: no usable GPU: "), "{text}");
            }
            // A GPU is here: the probe passed and the missing certificates stopped it.
            Err(e) => eprintln!("skipped: a GPU is present (then: {e})"),
            Ok(_) => panic!("prepared a node without certificates"),
        }
    }
}
