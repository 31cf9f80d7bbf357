//! A Strata node: the model, the layer-wise KV cache, the SLO-aware scheduler, the executors and
//! the engine step loop that ties them together.
//!
//! Module map:
//! - [`model`] — HF `config.json` parsing, presets, weights (safetensors, seeded random), tokenizer.
//! - [`kv`] — the layer-wise [`kv::BlockManager`]: GPU and host block pools, per-layer block
//!   tables, residency, the prefix cache; sans-IO, with its invariants in `validate()`.
//! - [`sched`] — the SLO-aware [`sched::Scheduler`] (layer-wise and baseline admission), step
//!   plans, and the fitting of a `CostProfile` from measurements.
//! - [`exec`] — the [`exec::Executor`] trait and its `cpu` (real f32 math) and `sim` (durations
//!   from a cost profile) implementations.
//! - [`engine`] — the [`engine::Engine`]: scheduler + block manager + executor, stepped by a
//!   clock it is given.
//! - [`pipeline`] — pipeline-parallel instances: the driver's `PipelineExecutor`, stage
//!   workers, and the `Stage` stream that chains them.
//! - [`service`] — the QUIC node service: `NodeConfig`, the engine on its own thread as an
//!   actor, request and subscription streams, clean shutdown.

pub mod engine;
pub mod exec;
pub mod kv;
pub mod model;
pub mod pipeline;
pub mod sched;
pub mod service;
