//! The scheduler.

pub mod plan;

pub use plan::{CopyOp, LayerKv, Sampling, SeqId, StepPlan, WorkItem, WorkKind};
