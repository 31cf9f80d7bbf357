//! The model: its configuration, weights and tokenizer.
//!
//! - [`config`] — `ModelConfig` parsed from HF `config.json` (Llama, Mistral, Qwen2).
//! - [`rope`] — rotary embedding frequencies, with `linear` and `llama3` scaling.
//! - [`preset`] — built-in shapes: `tiny`, `llama-3-8b`, `llama-3-70b`.
//! - [`weights`] — f32 weights in memory: seeded random, or loaded from safetensors.
//! - [`safetensors_io`] — memory-mapped safetensors reading (f32/f16/bf16) and writing.
//! - [`tokenizer`] — `tokenizer.json` through the `tokenizers` crate, or a byte tokenizer.
//! - [`rng`] — a small seeded generator for random weights and sampling.

pub mod config;
pub mod preset;
pub mod rng;
pub mod rope;
pub mod safetensors_io;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, ConfigError, DType, ModelConfig, RopeScaling};
pub use preset::Preset;
pub use tokenizer::Tokenizer;
pub use weights::{LayerWeights, Matrix, Weights, WeightsError};
