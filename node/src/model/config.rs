//! `ModelConfig`: the shape of a Llama-family decoder, parsed from HF `config.json`.

use std::path::{Path, PathBuf};

/// The architectures Strata runs. All are Llama-shaped decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    /// Qwen2: q/k/v projections carry a bias.
    Qwen2,
}

/// Element type of a checkpoint's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The shape and numerics of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
    /// The checkpoint's declared dtype (`torch_dtype` / `dtype`).
    pub dtype: DType,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// A `config.json` that cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A required field is absent.
    #[error("{path}: missing field `{field}`")]
    Missing { path: PathBuf, field: String },
    /// A field has the wrong type or an unusable value.
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    /// The architecture is not one Strata runs.
    #[error(
        "{path}: unsupported architecture {arch:?} (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
    )]
    UnsupportedArch { path: PathBuf, arch: String },
}

impl ModelConfig {
    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key (and value) projection output.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

impl ModelConfig {
    /// Reads and validates the HF `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<ModelConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ModelConfig::from_json_str(&text, path)
    }

    /// Parses and validates the text of an HF `config.json`; `path` is named in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<ModelConfig, ConfigError> {
        let cfg = super::hf_config::parse(text, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// This config as an HF `config.json` (older `rope_scaling` key); `from_json_str` reads it
    /// back to an equal config.
    pub fn to_hf_json(&self) -> serde_json::Value {
        super::hf_config::to_json(self)
    }

    /// Checks that the shape is one Strata can run. Errors name `path` and the HF field.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field: field.to_string(),
                reason,
            })
        };
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, n) in sizes {
            if n == 0 {
                return invalid(field, "must be greater than 0".into());
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            let reason = format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            );
            return invalid("num_key_value_heads", reason);
        }
        if !self.head_dim.is_multiple_of(2) {
            return invalid(
                "head_dim",
                format!("{} is odd; RoPE needs pairs", self.head_dim),
            );
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.rms_norm_eps) {
            return invalid("rms_norm_eps", format!("{} is not > 0", self.rms_norm_eps));
        }
        if !positive(self.rope_theta) {
            return invalid("rope_theta", format!("{} is not > 0", self.rope_theta));
        }
        match self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) | Some(RopeScaling::Llama3 { factor, .. })
                if !positive(factor) =>
            {
                return invalid("rope_scaling.factor", format!("{factor} is not > 0"));
            }
            Some(RopeScaling::Linear { .. }) => {}
            Some(RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
                ..
            }) => {
                if !positive(low_freq_factor) || !positive(high_freq_factor - low_freq_factor) {
                    let reason = format!(
                        "need 0 < low_freq_factor < high_freq_factor, got {low_freq_factor} and {high_freq_factor}"
                    );
                    return invalid("rope_scaling.high_freq_factor", reason);
                }
                if original_max_position_embeddings == 0 {
                    let field = "rope_scaling.original_max_position_embeddings";
                    return invalid(field, "must be greater than 0".into());
                }
            }
        }
        let ids = self.bos_token_id.iter().map(|id| ("bos_token_id", id));
        let ids = ids.chain(self.eos_token_ids.iter().map(|id| ("eos_token_id", id)));
        for (field, &id) in ids {
            if id as usize >= self.vocab_size {
                let reason = format!("{id} is outside the vocabulary of {}", self.vocab_size);
                return invalid(field, reason);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
