//! Weights in HF checkpoint layout: [`Weights::load`] of a layer range and [`Weights::save`],
//! with HF tensor names (`model.layers.{i}.self_attn.q_proj.weight`, …).

use super::config::{DType, ModelConfig};
use super::safetensors_io::{Checkpoint, TensorOut};
use super::weights::{LayerWeights, Matrix, Weights, WeightsError, check_range};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

/// The file [`Weights::save`] writes.
const SAVE_FILE: &str = "model.safetensors";

/// `[vocab, hidden, q_dim, kv_dim, intermediate]`.
fn dims(cfg: &ModelConfig) -> [usize; 5] {
    let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
    [cfg.vocab_size, h, cfg.q_dim(), cfg.kv_dim(), ff]
}

fn layer_name(i: usize, suffix: &str) -> String {
    format!("model.layers.{i}.{suffix}")
}

fn read_matrix(
    ck: &Checkpoint,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Matrix, WeightsError> {
    let data = ck.read(name, &[rows, cols])?;
    Ok(Matrix { rows, cols, data })
}

fn load_layer(ck: &Checkpoint, cfg: &ModelConfig, i: usize) -> Result<LayerWeights, WeightsError> {
    let [_, h, q, kv, ff] = dims(cfg);
    let m = |suffix: &str, rows, cols| read_matrix(ck, &layer_name(i, suffix), rows, cols);
    let v = |suffix: &str, n: usize| ck.read(&layer_name(i, suffix), &[n]);
    let bias = |suffix: &str, n: usize| cfg.attention_bias.then(|| v(suffix, n)).transpose();
    Ok(LayerWeights {
        attn_norm: v("input_layernorm.weight", h)?,
        wq: m("self_attn.q_proj.weight", q, h)?,
        wk: m("self_attn.k_proj.weight", kv, h)?,
        wv: m("self_attn.v_proj.weight", kv, h)?,
        bq: bias("self_attn.q_proj.bias", q)?,
        bk: bias("self_attn.k_proj.bias", kv)?,
        bv: bias("self_attn.v_proj.bias", kv)?,
        wo: m("self_attn.o_proj.weight", h, q)?,
        mlp_norm: v("post_attention_layernorm.weight", h)?,
        w_gate: m("mlp.gate_proj.weight", ff, h)?,
        w_up: m("mlp.up_proj.weight", ff, h)?,
        w_down: m("mlp.down_proj.weight", h, ff)?,
    })
}

impl Weights {
    /// Loads `layer_range` of the model from a safetensors file or directory in HF naming,
    /// with the embeddings, final norm and `lm_head` (ignored when the embeddings are tied).
    /// Tensors of other layers are never read.
    pub fn load(
        dir: &Path,
        cfg: &ModelConfig,
        layer_range: Range<usize>,
    ) -> Result<Weights, WeightsError> {
        check_range(cfg, &layer_range)?;
        let ck = Checkpoint::open(dir)?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = read_matrix(&ck, "model.embed_tokens.weight", v, h)?;
        let final_norm = ck.read("model.norm.weight", &[h])?;
        let lm_head = match cfg.tie_word_embeddings {
            true => None,
            false => Some(read_matrix(&ck, "lm_head.weight", v, h)?),
        };
        let layers = layer_range
            .clone()
            .map(|i| load_layer(&ck, cfg, i))
            .collect::<Result<_, _>>()?;
        Ok(Weights {
            embed,
            layers,
            layer_range,
            final_norm,
            lm_head,
        })
    }

    /// Writes the whole model to `dir/model.safetensors` (creating `dir`) in HF naming, each
    /// tensor in `dtype`. Other files in `dir` are left alone.
    pub fn save(&self, dir: &Path, cfg: &ModelConfig, dtype: DType) -> Result<(), WeightsError> {
        let path = dir.join(SAVE_FILE);
        if self.layer_range != (0..cfg.num_layers) || self.layers.len() != cfg.num_layers {
            return Err(WeightsError::PartialSave {
                start: self.layer_range.start,
                end: self.layer_range.end,
                num_layers: cfg.num_layers,
            });
        }
        let tensors = self.tensors();
        check_tensors(&tensors, cfg, &path)?;
        std::fs::create_dir_all(dir).map_err(|source| WeightsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        super::safetensors_io::write(&path, &tensors, dtype)
    }

    /// Every tensor, in HF naming, with the shape its data has in memory.
    pub(super) fn tensors(&self) -> Vec<TensorOut<'_>> {
        fn mat(name: String, m: &Matrix) -> TensorOut<'_> {
            TensorOut {
                name,
                shape: vec![m.rows, m.cols],
                data: &m.data,
            }
        }
        fn vector(name: String, v: &[f32]) -> TensorOut<'_> {
            TensorOut {
                name,
                shape: vec![v.len()],
                data: v,
            }
        }
        let mut out = vec![
            mat("model.embed_tokens.weight".into(), &self.embed),
            vector("model.norm.weight".into(), &self.final_norm),
        ];
        out.extend(
            self.lm_head
                .as_ref()
                .map(|m| mat("lm_head.weight".into(), m)),
        );
        for (i, l) in self.layer_range.clone().zip(&self.layers) {
            let n = |suffix: &str| layer_name(i, suffix);
            out.push(vector(n("input_layernorm.weight"), &l.attn_norm));
            out.push(mat(n("self_attn.q_proj.weight"), &l.wq));
            out.push(mat(n("self_attn.k_proj.weight"), &l.wk));
            out.push(mat(n("self_attn.v_proj.weight"), &l.wv));
            for (p, b) in [("q", &l.bq), ("k", &l.bk), ("v", &l.bv)] {
                let name = n(&format!("self_attn.{p}_proj.bias"));
                out.extend(b.as_deref().map(|b| vector(name, b)));
            }
            out.push(mat(n("self_attn.o_proj.weight"), &l.wo));
            out.push(vector(n("post_attention_layernorm.weight"), &l.mlp_norm));
            out.push(mat(n("mlp.gate_proj.weight"), &l.w_gate));
            out.push(mat(n("mlp.up_proj.weight"), &l.w_up));
            out.push(mat(n("mlp.down_proj.weight"), &l.w_down));
        }
        out
    }
}

/// Name → shape of every tensor a whole model of `cfg` has.
fn expected_shapes(cfg: &ModelConfig) -> HashMap<String, Vec<usize>> {
    let [v, h, q, kv, ff] = dims(cfg);
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    for i in 0..cfg.num_layers {
        let mut layer = vec![
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![ff, h]),
            ("mlp.up_proj.weight", vec![ff, h]),
            ("mlp.down_proj.weight", vec![h, ff]),
        ];
        if cfg.attention_bias {
            layer.push(("self_attn.q_proj.bias", vec![q]));
            layer.push(("self_attn.k_proj.bias", vec![kv]));
            layer.push(("self_attn.v_proj.bias", vec![kv]));
        }
        shapes.extend(
            layer
                .into_iter()
                .map(|(s, shape)| (layer_name(i, s), shape)),
        );
    }
    shapes.into_iter().collect()
}

/// Checks that `tensors` are exactly those a whole model of `cfg` has, in shape; `path` is
/// the file about to be written.
fn check_tensors(
    tensors: &[TensorOut],
    cfg: &ModelConfig,
    path: &Path,
) -> Result<(), WeightsError> {
    let expected = expected_shapes(cfg);
    let mismatch = |reason| WeightsError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    for t in tensors {
        let Some(shape) = expected.get(&t.name) else {
            return Err(mismatch(format!(
                "`{}` is not a tensor of this config",
                t.name
            )));
        };
        if *shape != t.shape {
            return Err(WeightsError::Shape {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            });
        }
    }
    // Names are unique on both sides and all of `tensors` are expected: equal counts, same set.
    if tensors.len() != expected.len() {
        let have: HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let missing = expected.keys().find(|n| !have.contains(n.as_str()));
        let name = missing.map_or("?", String::as_str);
        return Err(mismatch(format!(
            "the config calls for `{name}`, which the weights lack"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "hf_weights_tests.rs"]
mod tests;
