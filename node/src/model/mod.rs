//! The model: its configuration, weights and tokenizer.
//!
//! - [`config`] — `ModelConfig` parsed from HF `config.json` (Llama, Mistral, Qwen2); the
//!   field-by-field parsing lives in the private `hf_config`.
//! - [`rope`] — rotary embedding frequencies, with `linear` and `llama3` scaling.
//! - [`preset`] — built-in shapes: `tiny`, `llama-3-8b`, `llama-3-70b`.
//! - [`weights`] — f32 weights in memory: seeded random, or loaded from safetensors (HF
//!   tensor naming, `Weights::load`/`save`, lives in the private `hf_weights`).
//! - [`safetensors_io`] — memory-mapped safetensors reading (f32/f16/bf16) and writing.
//! - [`tokenizer`] — `tokenizer.json` through the `tokenizers` crate, or a byte tokenizer.
//! - [`source`] — `ModelSource` (a preset or a checkpoint directory) and loading a `Model`.
//! - [`rng`] — a small seeded generator for random weights and sampling.

pub mod config;
mod hf_config;
mod hf_weights;
pub mod preset;
pub mod rng;
pub mod rope;
pub mod safetensors_io;
pub mod source;
pub mod tokenizer;
pub mod weights;

#[cfg(test)]
mod testutil;

pub use config::{Arch, ConfigError, DType, ModelConfig, RopeScaling};
pub use preset::Preset;
pub use safetensors_io::Checkpoint;
pub use source::{Model, ModelError, ModelSource};
pub use tokenizer::{Tokenizer, TokenizerError};
pub use weights::{LayerWeights, Matrix, Weights, WeightsError};
