//! Tests of `ModelConfig` parsing and validation on real-shaped `config.json` texts.

use super::*;
use crate::model::preset::Preset;
use serde_json::Value;

const LLAMA2_7B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "tie_word_embeddings": false, "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000
}"#;

const LLAMA31_8B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256
}"#;

/// Llama 3.2 1B as transformers 5 writes it: `dtype`, `rope_parameters`, tied embeddings.
const LLAMA32_1B_TF5: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000, "dtype": "bfloat16",
  "eos_token_id": 128001, "head_dim": 64, "hidden_size": 2048, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                      "rope_type": "llama3"},
  "tie_word_embeddings": true, "transformers_version": "5.0.0", "vocab_size": 128256
}"#;

const MISTRAL_7B_V03: &str = r#"{
  "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32768
}"#;

const QWEN25_05B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896,
  "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
  "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
  "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936
}"#;

fn path() -> &'static Path {
    Path::new("/models/x/config.json")
}

fn parse(text: &str) -> Result<ModelConfig, ConfigError> {
    ModelConfig::from_json_str(text, path())
}

/// `text` with `edit` applied to its JSON object.
fn edited(text: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(text).expect("test JSON is valid");
    edit(v.as_object_mut().expect("test JSON is an object"));
    v.to_string()
}

/// Asserts the error's message names the file and `field`.
fn assert_names(err: &ConfigError, field: &str) {
    let msg = err.to_string();
    assert!(msg.contains("/models/x/config.json"), "{msg}");
    assert!(msg.contains(field), "{msg} should name {field}");
}

#[test]
fn llama2_has_no_scaling_and_full_mha() {
    let c = parse(LLAMA2_7B).expect("llama 2 parses");
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 32, 128));
    assert_eq!(
        (c.vocab_size, c.intermediate_size, c.num_layers),
        (32000, 11008, 32)
    );
    assert_eq!(c.rope_theta, 10_000.0);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.dtype, DType::F16);
    assert!(!c.attention_bias && !c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
}

#[test]
fn llama31_has_llama3_scaling_and_eos_list() {
    let c = parse(LLAMA31_8B).expect("llama 3.1 parses");
    assert_eq!(c.rope_theta, 500_000.0);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        })
    );
    assert_eq!(c.eos_token_ids, vec![128_001, 128_008, 128_009]);
    assert_eq!((c.num_kv_heads, c.kv_dim()), (8, 1024));
    assert_eq!(
        c,
        Preset::Llama3_8b
            .config()
            .with_eos(vec![128_001, 128_008, 128_009])
    );
}

impl ModelConfig {
    fn with_eos(mut self, ids: Vec<u32>) -> Self {
        self.eos_token_ids = ids;
        self
    }
}

#[test]
fn transformers5_rope_parameters() {
    let c = parse(LLAMA32_1B_TF5).expect("transformers 5 config parses");
    assert_eq!(c.rope_theta, 500_000.0);
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 32.0));
    assert_eq!((c.dtype, c.head_dim), (DType::BF16, 64));
    assert!(c.tie_word_embeddings);

    let default = edited(LLAMA32_1B_TF5, |o| {
        o["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e6});
    });
    let c = parse(&default).expect("default rope parses");
    assert_eq!((c.rope_theta, c.rope_scaling), (1e6, None));

    let linear = edited(LLAMA32_1B_TF5, |o| {
        o["rope_parameters"] = serde_json::json!({"type": "linear", "factor": 2.0});
    });
    let c = parse(&linear).expect("linear rope parses");
    assert_eq!(c.rope_theta, 10_000.0);
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
}

#[test]
fn mistral_and_model_type_fallback() {
    let c = parse(MISTRAL_7B_V03).expect("mistral parses");
    assert_eq!(
        (c.arch, c.vocab_size, c.rope_theta),
        (Arch::Mistral, 32768, 1e6)
    );
    assert!(!c.attention_bias);
    let no_arch = edited(MISTRAL_7B_V03, |o| {
        o.remove("architectures");
    });
    assert_eq!(
        parse(&no_arch).expect("model_type fallback").arch,
        Arch::Mistral
    );
}

#[test]
fn qwen2_has_bias_and_tied_embeddings() {
    let c = parse(QWEN25_05B).expect("qwen2 parses");
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.attention_bias, "qwen2 always has q/k/v bias");
    assert!(c.tie_word_embeddings);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (14, 2, 64));
    assert_eq!(c.rms_norm_eps, 1e-6);
}

#[test]
fn llama_may_set_attention_bias() {
    let text = edited(LLAMA2_7B, |o| {
        o.insert("attention_bias".into(), Value::Bool(true));
    });
    assert!(parse(&text).expect("parses").attention_bias);
}

#[test]
fn presets_validate_and_round_trip_through_hf_json() {
    for p in Preset::ALL {
        let cfg = p.config();
        cfg.validate(path()).expect("preset is valid");
        let back = parse(&cfg.to_hf_json().to_string()).expect("round trip parses");
        assert_eq!(back, cfg, "{p}");
    }
}

#[test]
fn missing_field_is_named() {
    let text = edited(LLAMA2_7B, |o| {
        o.remove("hidden_size");
    });
    let err = parse(&text).expect_err("missing hidden_size");
    assert!(matches!(&err, ConfigError::Missing { field, .. } if field == "hidden_size"));
    assert_names(&err, "hidden_size");
}

#[test]
fn wrong_type_is_named() {
    let text = edited(LLAMA2_7B, |o| {
        o["num_attention_heads"] = Value::from("32");
    });
    let err = parse(&text).expect_err("string heads");
    assert!(matches!(&err, ConfigError::Invalid { field, .. } if field == "num_attention_heads"));
    assert_names(&err, "num_attention_heads");

    let text = edited(LLAMA31_8B, |o| {
        o["rope_scaling"]["factor"] = Value::Bool(true);
    });
    assert_names(
        &parse(&text).expect_err("bool factor"),
        "rope_scaling.factor",
    );
}

#[test]
fn heads_not_divisible_is_named() {
    let text = edited(LLAMA31_8B, |o| {
        o["num_key_value_heads"] = Value::from(5);
    });
    let err = parse(&text).expect_err("32 % 5 != 0");
    assert_names(&err, "num_key_value_heads");
}

#[test]
fn validation_errors_are_named() {
    let cases: [(&str, Value); 4] = [
        ("head_dim", Value::from(65)),
        ("rms_norm_eps", Value::from(0.0)),
        ("vocab_size", Value::from(0)),
        ("eos_token_id", Value::from(40_000)),
    ];
    for (field, value) in cases {
        let text = edited(LLAMA2_7B, |o| {
            o.insert(field.into(), value);
        });
        assert_names(&parse(&text).expect_err(field), field);
    }
}

#[test]
fn unknown_rope_type_is_named() {
    let text = edited(LLAMA31_8B, |o| {
        o["rope_scaling"]["rope_type"] = Value::from("yarn");
    });
    assert_names(&parse(&text).expect_err("yarn"), "rope_scaling.rope_type");
    let text = edited(LLAMA32_1B_TF5, |o| {
        o["rope_parameters"]["rope_type"] = Value::from("dynamic");
    });
    assert_names(
        &parse(&text).expect_err("dynamic"),
        "rope_parameters.rope_type",
    );
}

#[test]
fn unsupported_arch_is_named() {
    let text = edited(LLAMA2_7B, |o| {
        o["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    });
    let err = parse(&text).expect_err("gpt2");
    assert!(matches!(&err, ConfigError::UnsupportedArch { arch, .. } if arch == "GPT2LMHeadModel"));
    assert_names(&err, "GPT2LMHeadModel");
    let text = edited(LLAMA2_7B, |o| {
        o.remove("architectures");
        o.remove("model_type");
    });
    assert_names(&parse(&text).expect_err("no arch"), "architectures");
}

#[test]
fn invalid_json_and_unreadable_file_name_the_file() {
    let err = parse("{\"vocab_size\": 3,").expect_err("truncated");
    assert!(matches!(err, ConfigError::Json { .. }));
    assert_names(&err, "JSON");
    let err = parse("[1, 2]").expect_err("not an object");
    assert_names(&err, "(root)");
    let missing = Path::new("/nonexistent/strata/config.json");
    let err = ModelConfig::from_file(missing).expect_err("no such file");
    assert!(err.to_string().contains("/nonexistent/strata/config.json"));
}

#[test]
fn unsupported_dtype_is_named() {
    let text = edited(LLAMA2_7B, |o| {
        o["torch_dtype"] = Value::from("float8_e4m3fn");
    });
    assert_names(&parse(&text).expect_err("fp8"), "torch_dtype");
}
