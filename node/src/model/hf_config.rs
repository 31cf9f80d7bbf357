//! Parsing of HF `config.json` into a [`ModelConfig`]: field by field, so that every error names
//! the file and the field at fault.
//!
//! `null` counts as absent (HF writes `"rope_scaling": null`). Fields Strata does not model
//! (`sliding_window`, `use_cache`, …) are ignored.

use super::config::{Arch, ConfigError, DType, ModelConfig, RopeScaling};
use serde_json::{Map, Value};
use std::path::Path;

/// A JSON object read for one file, with typed getters that name the field in their errors.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    /// Prefix for nested objects, e.g. `rope_scaling.`.
    prefix: String,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn invalid(&self, field: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: self.name(field),
            reason,
        }
    }

    fn missing(&self, field: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            field: self.name(field),
        }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn opt_u64(&self, field: &str) -> Result<Option<u64>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    self.invalid(field, format!("expected a non-negative integer, found {v}"))
                })
            })
            .transpose()
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        self.opt_u64(field)?
            .map(|n| {
                usize::try_from(n).map_err(|_| self.invalid(field, format!("{n} is too large")))
            })
            .transpose()
    }

    fn usize(&self, field: &str) -> Result<usize, ConfigError> {
        self.opt_usize(field)?.ok_or_else(|| self.missing(field))
    }

    fn token_id(&self, field: &str, v: &Value) -> Result<u32, ConfigError> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.invalid(field, format!("expected a token id, found {v}")))
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.invalid(field, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    fn f64(&self, field: &str) -> Result<f64, ConfigError> {
        self.opt_f64(field)?.ok_or_else(|| self.missing(field))
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.invalid(field, format!("expected a boolean, found {v}")))
            })
            .transpose()
    }

    fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ConfigError> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.invalid(field, format!("expected a string, found {v}")))
            })
            .transpose()
    }

    fn opt_object(&self, field: &str) -> Result<Option<Fields<'a>>, ConfigError> {
        self.get(field)
            .map(|v| match v {
                Value::Object(obj) => Ok(Fields {
                    obj,
                    path: self.path,
                    prefix: format!("{}.", self.name(field)),
                }),
                other => Err(self.invalid(field, format!("expected an object, found {other}"))),
            })
            .transpose()
    }
}

/// Parses the text of a `config.json` read from `path` (named in errors). Does not validate.
pub(super) fn parse(text: &str, path: &Path) -> Result<ModelConfig, ConfigError> {
    let root: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Object(obj) = &root else {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "(root)".into(),
            reason: format!("expected an object, found {}", kind(&root)),
        });
    };
    let f = Fields {
        obj,
        path,
        prefix: String::new(),
    };
    let arch = arch(&f)?;
    let hidden_size = f.usize("hidden_size")?;
    let num_heads = f.usize("num_attention_heads")?;
    let head_dim = match f.opt_usize("head_dim")? {
        Some(d) => d,
        None if num_heads > 0 && hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
        None => {
            return Err(f.invalid(
                "hidden_size",
                format!(
                    "{hidden_size} is not divisible by num_attention_heads {num_heads} and head_dim is absent"
                ),
            ));
        }
    };
    let (rope_theta, rope_scaling) = rope(&f)?;
    let attention_bias = arch == Arch::Qwen2 || f.opt_bool("attention_bias")?.unwrap_or(false);
    let dtype = match (f.opt_str("dtype")?, f.opt_str("torch_dtype")?) {
        (Some(s), _) => dtype(&f, "dtype", s)?,
        (None, Some(s)) => dtype(&f, "torch_dtype", s)?,
        (None, None) => DType::BF16,
    };
    let bos_token_id = f
        .get("bos_token_id")
        .map(|v| f.token_id("bos_token_id", v))
        .transpose()?;
    let eos_token_ids = match f.get("eos_token_id") {
        None => Vec::new(),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|v| f.token_id("eos_token_id", v))
            .collect::<Result<_, _>>()?,
        Some(v) => vec![f.token_id("eos_token_id", v)?],
    };
    Ok(ModelConfig {
        arch,
        vocab_size: f.usize("vocab_size")?,
        hidden_size,
        intermediate_size: f.usize("intermediate_size")?,
        num_layers: f.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: f.f64("rms_norm_eps")?,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        max_position_embeddings: f.usize("max_position_embeddings")?,
        dtype,
        bos_token_id,
        eos_token_ids,
    })
}

fn arch_from(name: &str) -> Option<Arch> {
    match name {
        "LlamaForCausalLM" | "llama" => Some(Arch::Llama),
        "MistralForCausalLM" | "mistral" => Some(Arch::Mistral),
        "Qwen2ForCausalLM" | "qwen2" => Some(Arch::Qwen2),
        _ => None,
    }
}

/// `architectures` (the first supported entry), else (absent or empty) `model_type`.
fn arch(f: &Fields<'_>) -> Result<Arch, ConfigError> {
    let unsupported = |arch: &str| ConfigError::UnsupportedArch {
        path: f.path.to_path_buf(),
        arch: arch.to_string(),
    };
    if let Some(v) = f.get("architectures") {
        let names: Vec<&str> = match v {
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => vec![s.as_str()],
            other => {
                let reason = format!("expected an array of strings, found {}", kind(other));
                return Err(f.invalid("architectures", reason));
            }
        };
        if !names.is_empty() {
            return names
                .iter()
                .find_map(|n| arch_from(n))
                .ok_or_else(|| unsupported(&names.join(", ")));
        }
    }
    match f.opt_str("model_type")? {
        Some(t) => arch_from(t).ok_or_else(|| unsupported(t)),
        None => Err(f.missing("architectures")),
    }
}

fn dtype(f: &Fields<'_>, field: &str, s: &str) -> Result<DType, ConfigError> {
    match s {
        "float32" => Ok(DType::F32),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        other => Err(f.invalid(
            field,
            format!("unsupported dtype {other:?} (float32, float16, bfloat16 are)"),
        )),
    }
}

/// `rope_theta` and scaling: transformers 5's `rope_parameters` wins over the older
/// top-level `rope_theta` + `rope_scaling`.
fn rope(f: &Fields<'_>) -> Result<(f64, Option<RopeScaling>), ConfigError> {
    let top_theta = f.opt_f64("rope_theta")?.unwrap_or(10_000.0);
    if let Some(p) = f.opt_object("rope_parameters")? {
        let theta = p.opt_f64("rope_theta")?.unwrap_or(top_theta);
        return Ok((theta, scaling(&p)?));
    }
    match f.opt_object("rope_scaling")? {
        Some(s) => Ok((top_theta, scaling(&s)?)),
        None => Ok((top_theta, None)),
    }
}

/// One scaling object: `rope_type` (or the older `type`) picks the variant.
fn scaling(s: &Fields<'_>) -> Result<Option<RopeScaling>, ConfigError> {
    let (field, ty) = match (s.opt_str("rope_type")?, s.opt_str("type")?) {
        (Some(t), _) => ("rope_type", t),
        (None, Some(t)) => ("type", t),
        (None, None) => ("rope_type", "default"),
    };
    match ty {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: s.f64("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: s.f64("factor")?,
            low_freq_factor: s.f64("low_freq_factor")?,
            high_freq_factor: s.f64("high_freq_factor")?,
            original_max_position_embeddings: s.usize("original_max_position_embeddings")?,
        })),
        other => Err(s.invalid(
            field,
            format!("unsupported RoPE type {other:?} (default, linear, llama3 are)"),
        )),
    }
}

/// The HF `config.json` of `cfg`; [`parse`] reads it back to an equal config.
pub(super) fn to_json(cfg: &ModelConfig) -> Value {
    let (arch, model_type) = match cfg.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let rope_scaling = match cfg.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => {
            serde_json::json!({ "rope_type": "linear", "factor": factor })
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => Value::from(*one),
        many => Value::from(many.to_vec()),
    };
    let dtype = match cfg.dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    };
    serde_json::json!({
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "max_position_embeddings": cfg.max_position_embeddings,
        "torch_dtype": dtype,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
    })
}
