//! Pipeline-parallel instances: a chain of stage nodes, each owning a contiguous range of the
//! model's layers.
//!
//! **Driver and workers.** Stage 0 is the driver: its engine runs the scheduler and the KV
//! accounting for every stage, and its executor is a [`PipelineExecutor`]: it computes its own
//! layers, sends each micro-batch's plan with the activations down the chain, and waits for the
//! last stage's sampled tokens, which every stage relays back up (`proto::stage`). The other
//! stages are [`worker`]s: no scheduler, just their layers, their own tiers and a link to the
//! next stage.
//!
//! **Layer slots.** Every stage has KV pools of the same sizes, and the driver's block manager
//! accounts for a model of `slots` layers, `slots` being the longest stage's layer count: slot
//! `j` stands for layer `first + j` of *every* stage, and block `b` of slot `j` is block `b` in
//! each stage's own pool. So a block the driver allocates is allocated on every stage at once,
//! a copy the plan lists runs on every stage (over each stage's own host link, in parallel),
//! and layer-wise admission and offload work unchanged: offloading slot `j` offloads layer
//! `first + j` on every stage. A stage shorter than `slots` leaves its last slots unused.
//!
//! **Micro-batches.** A step's items are cut into up to `micro_batches` groups of about equal
//! tokens; the driver computes group `k + 1` while stage 1 computes group `k`, and so on down
//! the chain.
//!
//! **Failure.** A broken stream or a stage's error fails the step's sequences; a chain that was
//! lost also fails every sequence holding KV and drops the prefix cache
//! ([`Executor::take_kv_lost`](crate::exec::Executor::take_kv_lost)). The driver then opens a
//! fresh chain, with backoff, and serves again once every stage answers.
//!
//! - [`chain`] — `ChainLayout`: the stages' layer ranges, checked to tile the model.
//! - [`wire`] — plans to and from their `proto::stage` form, checked on the way in.
//! - [`link`] — opening a chain and the driver's link task (async).
//! - [`driver`] — [`PipelineExecutor`], the driver's `Executor`.
//! - [`worker`] — a stage worker: serves the `Stage` stream of the stage above it.

pub mod chain;
pub mod driver;
pub mod link;
pub mod wire;
pub mod worker;

pub use chain::{ChainError, ChainLayout};
pub use driver::PipelineExecutor;
