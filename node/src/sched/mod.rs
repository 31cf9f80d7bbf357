//! The SLO-aware scheduler and what it produces.
//!
//! - [`config`] — `SchedulerConfig` and the two admission [`Mode`]s.
//! - [`request`] — `Request`, `FinishReason`, `SubmitError`.
//! - [`plan`] — `StepPlan`: the copies and work items of one step (the executor's contract).
//! - [`event`] — what happened to sequences: admitted, token, finished.
//! - [`residency`] — which layers of a prefill stay resident.
//! - [`scheduler`] — the [`Scheduler`] itself; its admission checks in `scheduler::admission`.
//! - [`fit`] — fitting a `CostProfile` from measured step times.
//! - [`roofline`] — an analytic `CostProfile` from a shape and measured machine ceilings.

pub mod config;
pub mod event;
pub mod fit;
pub mod plan;
pub mod profiles;
pub mod request;
pub mod residency;
pub mod roofline;
pub mod scheduler;

pub use config::{Mode, SchedulerConfig, StreamDecode};
pub use event::Event;
pub use plan::{CopyOp, LayerKv, Sampling, SeqId, StepPlan, WorkItem, WorkKind};
pub use request::{FinishReason, Request, SubmitError};
pub use scheduler::{AdmissionStops, Scheduler};
