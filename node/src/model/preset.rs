//! Built-in model shapes. `tiny` has weights small enough for CI and `strata up`; the Llama 3
//! shapes serve benchmarks and the simulator with random weights.

use super::config::{Arch, DType, ModelConfig, RopeScaling};
use std::fmt;
use std::str::FromStr;

/// A built-in model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 4 layers, hidden 64, GQA 4:2 — real math on a laptop core in milliseconds.
    Tiny,
    /// Llama 3 8B's shape.
    Llama3_8b,
    /// Llama 3 70B's shape.
    Llama3_70b,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Llama3_8b, Preset::Llama3_70b];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Llama3_8b => "llama-3-8b",
            Preset::Llama3_70b => "llama-3-70b",
        }
    }

    pub fn config(self) -> ModelConfig {
        let llama3_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        match self {
            Preset::Tiny => ModelConfig {
                arch: Arch::Llama,
                vocab_size: 512,
                hidden_size: 64,
                intermediate_size: 176,
                num_layers: 4,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                rope_scaling: None,
                tie_word_embeddings: true,
                attention_bias: false,
                max_position_embeddings: 32_768,
                dtype: DType::F32,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
            },
            Preset::Llama3_8b => ModelConfig {
                arch: Arch::Llama,
                vocab_size: 128_256,
                hidden_size: 4096,
                intermediate_size: 14_336,
                num_layers: 32,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                rms_norm_eps: 1e-5,
                rope_theta: 500_000.0,
                rope_scaling: llama3_scaling,
                tie_word_embeddings: false,
                attention_bias: false,
                max_position_embeddings: 131_072,
                dtype: DType::BF16,
                bos_token_id: Some(128_000),
                eos_token_ids: vec![128_001, 128_009],
            },
            Preset::Llama3_70b => ModelConfig {
                hidden_size: 8192,
                intermediate_size: 28_672,
                num_layers: 80,
                num_heads: 64,
                ..Preset::Llama3_8b.config()
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!("unknown preset {s:?} (known: {})", names.join(", "))
            })
    }
}
