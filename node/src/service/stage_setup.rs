//! Preparing a node that is one stage of a pipeline (its config has a `[stage]` section): the
//! driver loads its layers, opens the chain of stages (waiting, bounded, until every stage
//! answers) and builds a [`PipelineExecutor`]; a worker loads its layers and waits for a chain.

use super::ServiceError;
use super::config::{ExecutorKind, NodeConfig, StageSettings};
use crate::exec::cpu::CpuExecutor;
use crate::exec::{PoolSizes, StageExecutor};
use crate::kv::KvLayout;
use crate::model::{ModelConfig, ModelSource};
use crate::pipeline::link::{ChainState, LinkLimits, NextStage, spawn_driver_link};
use crate::pipeline::worker::{StageWorker, WorkerConfig};
use crate::pipeline::{ChainLayout, PipelineExecutor};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use strata_transport::proto::StageOpen;
use strata_transport::tls::Identity;
use tokio_util::sync::CancellationToken;

fn pipeline(msg: String) -> ServiceError {
    ServiceError::Pipeline(msg)
}

fn link_limits(cfg: &NodeConfig) -> LinkLimits {
    LinkLimits {
        max_frame_bytes: cfg.limits.max_stage_frame_bytes,
        connect_timeout: Duration::from_secs(5),
        open_timeout: Duration::from_millis(cfg.limits.stage_open_timeout_ms),
    }
}

/// An endpoint for the connection to the next stage, on the listen address's IP family.
fn client_endpoint(
    identity: &Identity,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, ServiceError> {
    let any: SocketAddr = match listen {
        SocketAddr::V4(a) => SocketAddr::from((*a.ip(), 0)),
        SocketAddr::V6(a) => SocketAddr::from((*a.ip(), 0)),
    };
    Ok(identity.endpoint(any)?)
}

/// This node's stage executor: its layers of the model on the configured executor, with
/// `pools` of `layout` (whose `layers` becomes the stage's layer count).
fn stage_executor(
    cfg: &NodeConfig,
    source: &ModelSource,
    model: &ModelConfig,
    range: std::ops::Range<usize>,
    layout: KvLayout,
    pools: PoolSizes,
    progress: &mut dyn FnMut(&str),
) -> Result<Box<dyn StageExecutor>, ServiceError> {
    let layout = KvLayout {
        layers: range.len(),
        ..layout
    };
    match cfg.executor {
        ExecutorKind::Cpu => {
            progress(&format!(
                "loading layers {}..{} of {}",
                range.start, range.end, cfg.model
            ));
            let loaded = source.load(cfg.seed, range)?;
            let exec = CpuExecutor::stage(&loaded.config, loaded.weights, layout, pools)?;
            Ok(Box::new(exec))
        }
        ExecutorKind::Cuda => {
            super::gpu::stage_executor(source, model, range, cfg.seed, layout, pools, progress)
        }
        ExecutorKind::Sim => Err(pipeline(
            "pipeline stages run on cpu or cuda, not sim".into(),
        )),
    }
}

/// The chain of the driver's `own` layers and the stages `below` it, as `StageReady` names them.
fn chain_of(
    own: (u32, u32),
    below: &[(u32, u32)],
    layers: usize,
) -> Result<ChainLayout, crate::pipeline::ChainError> {
    let ranges = std::iter::once(own)
        .chain(below.iter().copied())
        .map(|(a, b)| a as usize..b as usize)
        .collect();
    ChainLayout::new(ranges, layers)
}

fn runtime() -> Result<tokio::runtime::Handle, ServiceError> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        pipeline("a pipeline stage must be prepared inside a tokio runtime (spawn_blocking)".into())
    })
}

/// The driver: opens the chain and builds its executor. Returns it with the chain's layer
/// slots (the KV layout's layer count).
#[allow(clippy::too_many_arguments)] // the pieces of `prepare` a driver needs
pub(super) fn driver(
    cfg: &NodeConfig,
    st: &StageSettings,
    source: &ModelSource,
    model: &ModelConfig,
    layout: KvLayout,
    pools: PoolSizes,
    identity: &Identity,
    progress: &mut dyn FnMut(&str),
) -> Result<(PipelineExecutor, usize), ServiceError> {
    let range = st.range();
    let layers = model.num_layers;
    if range.end >= layers {
        return Err(pipeline(format!(
            "the driver's layers {range:?} leave none of the model's {layers} to the next stage"
        )));
    }
    let (Some(addr), Some(member)) = (st.next, st.next_member.clone()) else {
        return Err(pipeline(
            "the driver needs stage.next and stage.next_member".into(),
        ));
    };
    let rt = runtime()?;
    let local = stage_executor(cfg, source, model, range.clone(), layout, pools, progress)?;
    let open = StageOpen {
        model: cfg.model_name(),
        model_layers: layers as u32,
        block_tokens: cfg.block_tokens as u32,
        gpu_blocks: pools.gpu_blocks as u64,
        host_blocks: pools.host_blocks as u64,
        staging_blocks: pools.staging_blocks as u64,
        epoch: 0,
    };
    let own = (range.start as u32, range.end as u32);
    let seen: Arc<OnceLock<Vec<(u32, u32)>>> = Arc::default();
    let check = move |below: &[(u32, u32)]| {
        chain_of(own, below, layers)
            .map_err(|e| format!("the chain's stages do not tile the model: {e}"))?;
        match seen.get() {
            None => {
                let _ = seen.set(below.to_vec());
                Ok(())
            }
            Some(f) if f == below => Ok(()),
            Some(f) => Err(format!(
                "the stages below changed from {f:?} to {below:?}; restart the driver"
            )),
        }
    };
    let limits = link_limits(cfg);
    let endpoint = rt.block_on(async { client_endpoint(identity, cfg.listen) })?;
    let next = NextStage { addr, member };
    progress(&format!(
        "opening the chain of stages at {} ({})",
        next.addr, next.member
    ));
    let link = spawn_driver_link(
        &rt,
        endpoint,
        next,
        open,
        limits,
        check,
        CancellationToken::new(),
    );
    let deadline = Instant::now() + limits.open_timeout;
    let mut state = link.state.clone();
    let mut reported = 0;
    let below = loop {
        let now = state.borrow_and_update().clone();
        match now {
            ChainState::Up { stages, .. } => break stages,
            ChainState::Connecting {
                attempts,
                last_error: Some(why),
            } if attempts != reported && (attempts == 1 || attempts % 10 == 0) => {
                reported = attempts;
                progress(&format!(
                    "waiting for the chain (attempt {attempts}): {why}"
                ));
            }
            ChainState::Connecting { .. } => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let changed = rt.block_on(tokio::time::timeout(left, state.changed()));
        if !matches!(changed, Ok(Ok(()))) {
            let why = match &*state.borrow() {
                ChainState::Connecting { last_error, .. } => last_error.clone(),
                ChainState::Up { .. } => None,
            };
            return Err(pipeline(format!(
                "the chain of stages did not open within {:?}: {}",
                limits.open_timeout,
                why.as_deref().unwrap_or("no answer")
            )));
        }
    };
    let chain = chain_of(own, &below, layers).map_err(|e| pipeline(e.to_string()))?;
    progress(&format!(
        "chain open: stages {:?}, {} layer slots",
        chain.stages(),
        chain.slots()
    ));
    let micro = st.micro_batches.unwrap_or(chain.stages().len());
    let exec = PipelineExecutor::new(
        local,
        link,
        micro,
        cfg.limits.max_stage_frame_bytes,
        Duration::from_millis(cfg.limits.stage_step_timeout_ms),
    );
    Ok((exec, chain.slots()))
}

/// A worker: loads its layers; its pools are allocated when a chain opens, at the driver's
/// sizes, up to `pools`.
#[allow(clippy::too_many_arguments)] // the pieces of `prepare` a worker needs
pub(super) fn worker(
    cfg: &NodeConfig,
    st: &StageSettings,
    source: &ModelSource,
    model: &ModelConfig,
    layout: KvLayout,
    pools: PoolSizes,
    identity: &Identity,
    progress: &mut dyn FnMut(&str),
) -> Result<Arc<StageWorker>, ServiceError> {
    let range = st.range();
    let layers = model.num_layers;
    if range.end > layers || (st.next.is_none() && range.end != layers) {
        return Err(pipeline(format!(
            "layers {range:?}: the model has {layers}, and the last stage (no next) must end there"
        )));
    }
    let rt = runtime()?;
    // Pools at this node's own budget; a chain uses up to them.
    let exec = stage_executor(cfg, source, model, range, layout, pools, progress)?;
    let endpoint = rt.block_on(async { client_endpoint(identity, cfg.listen) })?;
    let next = st.next.map(|addr| NextStage {
        addr,
        member: st.next_member.clone().unwrap_or_default(),
    });
    let wc = WorkerConfig {
        id: cfg.id.clone(),
        model: cfg.model_name(),
        model_layers: layers,
        block_tokens: cfg.block_tokens,
        next,
        budget: pools,
        limits: link_limits(cfg),
    };
    Ok(StageWorker::new(wc, exec, endpoint))
}
