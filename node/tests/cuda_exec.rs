//! The cuda executor's correctness (feature `cuda`). Every test first asks [`gpu::gpu`] whether
//! GPU 0 is usable; without one it prints `skipping <test>: no usable GPU: <why>` and passes,
//! unless `STRATA_REQUIRE_GPU` is set. On the GPU machine:
//!
//! ```text
//! STRATA_REQUIRE_GPU=1 cargo test -p strata-node --features cuda --test cuda_exec -- --nocapture
//! ```
//!
//! - [`numerics`] — logits within bf16 tolerance of the cpu executor (‖Δ‖/‖ref‖ < 2e-2) at
//!   prefill and every decode step: prompt lengths 1 to 300, batches, cached prefixes, chunked
//!   prefill, GQA, head_dim 16 to 128, llama3 RoPE scaling, attention biases, block sizes.
//! - [`staged`] — the same with layers on the host tier run through staging, offloads and
//!   reloads by copies.
//! - [`checkpoint`] — the same for a checkpoint written as safetensors and loaded back.
//! - [`lossless`] — the engine's greedy tokens identical across `baseline`/`layerwise`, no,
//!   half or nearly all layers offloaded, reload or streamed decode, chunked prefill.
//! - [`sampling`] — temperature and top-p draws: seeded, spread, in the nucleus.
//! - [`stages`] — the model cut into pipeline stages, chained: the tokens of one executor.
//!
//! Helpers: [`gpu`] (the guard), [`pair`] (both executors on hand-built plans, teacher
//! forced), [`scenario`] (the engine runs of `lossless`).
#![cfg(feature = "cuda")]

#[path = "cuda_exec/checkpoint.rs"]
mod checkpoint;
#[path = "cuda_exec/gpu.rs"]
mod gpu;
#[path = "cuda_exec/lossless.rs"]
mod lossless;
#[path = "cuda_exec/numerics.rs"]
mod numerics;
#[path = "cuda_exec/pair.rs"]
mod pair;
#[path = "cuda_exec/sampling.rs"]
mod sampling;
#[path = "cuda_exec/scenario.rs"]
mod scenario;
#[path = "cuda_exec/staged.rs"]
mod staged;
#[path = "cuda_exec/stages.rs"]
mod stages;
