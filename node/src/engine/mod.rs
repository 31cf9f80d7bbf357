//! The engine: scheduler + block manager + an executor, stepped by a clock it is given.
//!
//! - [`Engine`] — `submit`, `cancel`, `step(now)`.
//! - [`calibrate`] — measures an executor and fits its `CostProfile`.
//! - [`replay`] — drives an engine through a list of timed requests on a virtual clock.

pub mod calibrate;
pub mod replay;

use crate::exec::{Executor, PoolSizes};
use crate::kv::{BlockManager, KvEvent, KvLayout, Tier};
use crate::sched::{Event, Request, Scheduler, SchedulerConfig, SeqId, SubmitError};
use std::time::Duration;
use strata_transport::proto::CostProfile;

/// Sizes and policy of an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub sched: SchedulerConfig,
    pub pools: PoolSizes,
}

/// An engine that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The scheduler configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::sched::config::ConfigError),
    /// The staging area the scheduler plans with differs from the executor's.
    #[error("scheduler plans with {sched} staging blocks but the pools have {pools}")]
    Staging { sched: usize, pools: usize },
    /// A pool has no blocks.
    #[error("the {0} tier has no blocks")]
    EmptyPool(Tier),
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    pub events: Vec<Event>,
    /// How long the step took (measured or modelled by the executor).
    pub elapsed: Duration,
    pub prefills: usize,
    pub decodes: usize,
    /// Decodes that read some layer through staging (streamed from the host).
    pub streamed_decodes: usize,
    pub copies: usize,
    /// The plan's copies as the executors issue them: runs of blocks consecutive on both sides.
    pub copy_runs: usize,
    pub transfer_bytes: u64,
    /// What the scheduler's cost profile predicted for the step (`sim` takes this as its
    /// duration); beside `elapsed` it shows where a real executor departs from the model.
    pub modelled: crate::exec::sim::StepModel,
    /// Prefix-cache changes of this step, per tier (what a node publishes to routers).
    pub kv_events: Vec<KvEvent>,
}

/// See the module doc.
pub struct Engine {
    sched: Scheduler,
    kv: BlockManager,
    exec: Box<dyn Executor>,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        layout: KvLayout,
        cost: CostProfile,
        exec: Box<dyn Executor>,
    ) -> Result<Self, EngineError> {
        cfg.sched.validate()?;
        let stream = cfg
            .sched
            .stream_decode
            .enabled(exec.copies_overlap_compute());
        if cfg.sched.staging_blocks != cfg.pools.staging_blocks {
            return Err(EngineError::Staging {
                sched: cfg.sched.staging_blocks,
                pools: cfg.pools.staging_blocks,
            });
        }
        if cfg.pools.gpu_blocks == 0 {
            return Err(EngineError::EmptyPool(Tier::Gpu));
        }
        Ok(Engine {
            sched: Scheduler::new(
                cfg.sched,
                cost,
                layout,
                cfg.pools.gpu_blocks,
                cfg.pools.host_blocks,
            )
            .with_streaming(stream),
            kv: BlockManager::new(layout, cfg.pools.gpu_blocks, cfg.pools.host_blocks),
            exec,
        })
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    pub fn kv(&self) -> &BlockManager {
        &self.kv
    }

    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    /// Queues a request. Its `arrival` is the time the caller received it.
    pub fn submit(&mut self, req: Request) -> Result<(), SubmitError> {
        self.sched.handle_submit(req)
    }

    /// Cancels a request; returns its `Finished` event if it was known.
    pub fn cancel(&mut self, id: SeqId, now: Duration) -> Vec<Event> {
        self.sched.handle_cancel(id, &mut self.kv, now);
        self.sched.poll_events()
    }

    /// Runs one step starting at `now`. Events carry the time the step ended
    /// (`now + elapsed`), admissions the time it started.
    pub fn step(&mut self, now: Duration) -> StepReport {
        let mut lost = Vec::new();
        if let Some(why) = self.exec.take_kv_lost() {
            lost = self.sched.handle_kv_lost(&why, &mut self.kv, now);
            self.kv.drop_cache();
        }
        let plan = self.sched.poll_plan(&mut self.kv, now);
        let mut report = StepReport {
            prefills: plan
                .items
                .iter()
                .filter(|i| i.kind == crate::sched::WorkKind::Prefill)
                .count(),
            copies: plan.copies.len(),
            copy_runs: crate::exec::copy_runs(&plan.copies).len(),
            modelled: crate::exec::sim::model_step(self.sched.cost(), self.kv.layout(), &plan),
            ..StepReport::default()
        };
        report.decodes = plan.items.len() - report.prefills;
        report.streamed_decodes = plan
            .items
            .iter()
            .filter(|i| {
                i.kind == crate::sched::WorkKind::Decode && i.layers.iter().any(|l| l.staged)
            })
            .count();
        if plan.is_empty() {
            report.events = lost;
            report.events.extend(self.sched.poll_events());
            report.kv_events = self.kv.poll_events();
            return report;
        }
        match self.exec.execute(&plan) {
            Ok(out) => {
                let end = now + out.elapsed;
                report.elapsed = out.elapsed;
                report.transfer_bytes = out.transfer_bytes;
                report.events = self.sched.handle_output(&plan, &out, &mut self.kv, end);
            }
            Err(e) => {
                report.events = self
                    .sched
                    .handle_failure(&plan, &e.to_string(), &mut self.kv, now);
            }
        }
        if !lost.is_empty() {
            lost.append(&mut report.events);
            report.events = lost;
        }
        debug_assert_eq!(self.kv.validate(), Ok(()));
        report.kv_events = self.kv.poll_events();
        report
    }
}
