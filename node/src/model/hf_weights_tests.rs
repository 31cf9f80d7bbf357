//! Tests of loading and saving weights in HF safetensors layout.

use super::*;
use crate::model::preset::Preset;
use crate::model::safetensors_io::{self, INDEX_FILE};
use crate::model::testutil::TempDir;
use crate::model::weights::{Weights, WeightsError};

/// Tiny, with Qwen2-style biases and an untied `lm_head`: every tensor kind.
fn full_cfg() -> ModelConfig {
    ModelConfig {
        attention_bias: true,
        tie_word_embeddings: false,
        ..Preset::Tiny.config()
    }
}

fn saved(cfg: &ModelConfig, dtype: DType, tag: &str) -> (TempDir, Weights) {
    let tmp = TempDir::new(tag);
    let w = Weights::random(cfg, 7, 0..cfg.num_layers).expect("random");
    w.save(tmp.path(), cfg, dtype).expect("save");
    (tmp, w)
}

#[test]
fn f32_save_load_is_exact() {
    for cfg in [Preset::Tiny.config(), full_cfg()] {
        let (tmp, w) = saved(&cfg, DType::F32, "w-f32");
        let back = Weights::load(tmp.path(), &cfg, 0..cfg.num_layers).expect("load");
        assert_eq!(back, w);
        assert_eq!(back.lm_head.is_none(), cfg.tie_word_embeddings);
    }
}

#[test]
fn half_precision_save_load_is_within_rounding() {
    let cfg = full_cfg();
    for (dtype, rel) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
        let (tmp, w) = saved(&cfg, dtype, "w-half");
        let back = Weights::load(tmp.path(), &cfg, 0..cfg.num_layers).expect("load");
        let (a, b) = (w.tensors(), back.tensors());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
            for (p, q) in x.data.iter().zip(y.data) {
                assert!(
                    (p - q).abs() <= p.abs() * rel + 2f32.powi(-25),
                    "{}",
                    x.name
                );
            }
        }
    }
}

#[test]
fn stage_load_equals_the_same_layers_of_a_full_load() {
    let cfg = full_cfg();
    let (tmp, _) = saved(&cfg, DType::BF16, "w-stage");
    let full = Weights::load(tmp.path(), &cfg, 0..4).expect("full");
    let stage = Weights::load(tmp.path(), &cfg, 1..3).expect("stage");
    assert_eq!(stage.layer_range, 1..3);
    assert_eq!(stage.layers, full.layers[1..3]);
    assert_eq!(
        (&stage.embed, &stage.final_norm),
        (&full.embed, &full.final_norm)
    );
    assert_eq!(stage.lm_head, full.lm_head);
}

/// Two shards with an index; layer 0's `q_proj` has a wrong shape. A stage of layers 1..3
/// never reads it; a full load names it.
#[test]
fn sharded_checkpoint_and_a_stage_that_skips_a_bad_layer() {
    let cfg = Preset::Tiny.config();
    let w = Weights::random(&cfg, 3, 0..4).expect("random");
    let tmp = TempDir::new("w-shards");
    let bad = [0.5f32; 6];
    let mut first = Vec::new();
    let mut second = Vec::new();
    for t in w.tensors() {
        if t.name == "model.layers.0.self_attn.q_proj.weight" {
            second.push(TensorOut {
                shape: vec![2, 3],
                data: &bad,
                ..t
            });
        } else if t.name.starts_with("model.layers.0.") || t.name.starts_with("model.layers.1.") {
            second.push(t);
        } else {
            first.push(t);
        }
    }
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut map = serde_json::Map::new();
    for (file, tensors) in files.iter().zip([&first, &second]) {
        safetensors_io::write(&tmp.path().join(file), tensors, DType::F16).expect("shard");
        for t in tensors.iter() {
            map.insert(t.name.clone(), serde_json::Value::from(*file));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(tmp.path().join(INDEX_FILE), index.to_string()).expect("index");

    let stage = Weights::load(tmp.path(), &cfg, 1..4).expect("stage skips layer 0");
    assert_eq!(stage.layers.len(), 3);
    let err = Weights::load(tmp.path(), &cfg, 0..4).expect_err("layer 0 is bad");
    assert!(
        matches!(&err, WeightsError::Shape { tensor, expected, found, .. }
        if tensor == "model.layers.0.self_attn.q_proj.weight"
            && expected == &[64, 64] && found == &[2, 3])
    );
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn missing_tensors_are_named() {
    let (tmp, _) = saved(&Preset::Tiny.config(), DType::F32, "w-missing");
    let untied = ModelConfig {
        tie_word_embeddings: false,
        ..Preset::Tiny.config()
    };
    let err = Weights::load(tmp.path(), &untied, 0..4).expect_err("no lm_head");
    assert!(
        matches!(&err, WeightsError::MissingTensor { tensor, .. } if tensor == "lm_head.weight")
    );
    let biased = ModelConfig {
        attention_bias: true,
        ..Preset::Tiny.config()
    };
    let err = Weights::load(tmp.path(), &biased, 0..4).expect_err("no bias");
    assert!(
        err.to_string()
            .contains("model.layers.0.self_attn.q_proj.bias"),
        "{err}"
    );
}

#[test]
fn tied_config_ignores_a_present_lm_head() {
    let (tmp, w) = saved(&full_cfg(), DType::F32, "w-tied");
    let tied = ModelConfig {
        tie_word_embeddings: true,
        ..full_cfg()
    };
    let back = Weights::load(tmp.path(), &tied, 0..4).expect("load");
    assert_eq!((back.lm_head, back.embed), (None, w.embed));
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    let (tmp, _) = saved(&Preset::Tiny.config(), DType::F32, "w-shape");
    let wider = ModelConfig {
        intermediate_size: 200,
        ..Preset::Tiny.config()
    };
    let err = Weights::load(tmp.path(), &wider, 0..4).expect_err("shape");
    let msg = err.to_string();
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight"), "{msg}");
    assert!(
        msg.contains("[176, 64]") && msg.contains("[200, 64]"),
        "{msg}"
    );
}

#[test]
fn bad_ranges_and_partial_saves_are_refused() {
    let cfg = Preset::Tiny.config();
    let tmp = TempDir::new("w-range");
    let err = Weights::load(tmp.path(), &cfg, 2..5).expect_err("past the end");
    assert!(matches!(
        err,
        WeightsError::LayerRange {
            end: 5,
            num_layers: 4,
            ..
        }
    ));
    let stage = Weights::random(&cfg, 1, 1..3).expect("stage");
    let err = stage
        .save(tmp.path(), &cfg, DType::F32)
        .expect_err("partial");
    assert!(matches!(err, WeightsError::PartialSave { .. }));
    let w = Weights::random(&cfg, 1, 0..4).expect("whole");
    let err = w
        .save(tmp.path(), &full_cfg(), DType::F32)
        .expect_err("config mismatch");
    assert!(matches!(err, WeightsError::Mismatch { .. }), "{err}");
}
