//! Model weights in memory, as f32, in HF layout (a linear layer's matrix is `[out, in]`).

use std::ops::Range;
use std::path::PathBuf;

/// A row-major matrix: `rows` × `cols`, `data.len() == rows * cols`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// One decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// `[num_heads·head_dim, hidden]`
    pub wq: Matrix,
    /// `[num_kv_heads·head_dim, hidden]`
    pub wk: Matrix,
    pub wv: Matrix,
    /// Qwen2's q/k/v biases; `None` for Llama and Mistral.
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// `[hidden, num_heads·head_dim]`
    pub wo: Matrix,
    pub mlp_norm: Vec<f32>,
    /// `[intermediate, hidden]`
    pub w_gate: Matrix,
    pub w_up: Matrix,
    /// `[hidden, intermediate]`
    pub w_down: Matrix,
}

/// The weights of a model, or of the layers `layer_range` of it (a pipeline stage).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// `[vocab, hidden]`
    pub embed: Matrix,
    /// The layers in `layer_range`, in order.
    pub layers: Vec<LayerWeights>,
    pub layer_range: Range<usize>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when the embeddings are tied.
    pub lm_head: Option<Matrix>,
}

/// Weights that cannot be loaded. Every variant names the file, and the tensor where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    /// A tensor the model needs is in no file.
    #[error("{dir}: missing tensor `{tensor}`")]
    MissingTensor { dir: PathBuf, tensor: String },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype Strata cannot read.
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype} (f32, f16, bf16 are)")]
    DType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A directory holds no `*.safetensors` file.
    #[error("{dir}: no *.safetensors file")]
    NoCheckpoint { dir: PathBuf },
    /// Only a whole model can be saved, not a pipeline stage.
    #[error("cannot save layers {start}..{end} of {num_layers}: save needs the whole model")]
    PartialSave {
        start: usize,
        end: usize,
        num_layers: usize,
    },
    /// The weights in memory do not have the tensors the config calls for.
    #[error("{path}: weights do not match the config: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    /// The requested layers are outside the model.
    #[error("layers {start}..{end} are outside a model of {num_layers} layers")]
    LayerRange {
        start: usize,
        end: usize,
        num_layers: usize,
    },
}

use super::config::ModelConfig;
use super::rng::Rng;

impl Matrix {
    /// Uniform in ±1/√cols: keeps activations of a deep random model in a sane range.
    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Matrix {
        let scale = 1.0 / (cols as f32).sqrt();
        Matrix {
            rows,
            cols,
            data: (0..rows * cols).map(|_| rng.uniform(scale)).collect(),
        }
    }
}

fn random_norm(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| 1.0 + rng.uniform(0.1)).collect()
}

impl Weights {
    /// The first `n` of the layers held (all of them if there are fewer), with the embedding,
    /// final norm and lm_head: the weights of the model cut to fewer layers, for benchmarks.
    pub fn first_layers(&self, n: usize) -> Weights {
        let n = n.min(self.layers.len());
        Weights {
            embed: self.embed.clone(),
            layers: self.layers[..n].to_vec(),
            layer_range: self.layer_range.start..self.layer_range.start + n,
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.clone(),
        }
    }

    /// Seeded random weights for `layer_range` of the model. Each layer draws from its own
    /// stream, so a pipeline stage gets the same layers as the whole model.
    pub fn random(
        cfg: &ModelConfig,
        seed: u64,
        layer_range: Range<usize>,
    ) -> Result<Weights, WeightsError> {
        check_range(cfg, &layer_range)?;
        let (h, q, kv, ff) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let mut top = Rng::derive(seed, u64::MAX);
        let embed = Matrix::random(cfg.vocab_size, h, &mut top);
        let final_norm = random_norm(h, &mut top);
        let lm_head =
            (!cfg.tie_word_embeddings).then(|| Matrix::random(cfg.vocab_size, h, &mut top));
        let layers = layer_range
            .clone()
            .map(|l| {
                let mut r = Rng::derive(seed, l as u64);
                let bias = |n: usize, r: &mut Rng| {
                    cfg.attention_bias
                        .then(|| (0..n).map(|_| r.uniform(0.1)).collect())
                };
                LayerWeights {
                    attn_norm: random_norm(h, &mut r),
                    wq: Matrix::random(q, h, &mut r),
                    wk: Matrix::random(kv, h, &mut r),
                    wv: Matrix::random(kv, h, &mut r),
                    bq: bias(q, &mut r),
                    bk: bias(kv, &mut r),
                    bv: bias(kv, &mut r),
                    wo: Matrix::random(h, q, &mut r),
                    mlp_norm: random_norm(h, &mut r),
                    w_gate: Matrix::random(ff, h, &mut r),
                    w_up: Matrix::random(ff, h, &mut r),
                    w_down: Matrix::random(h, ff, &mut r),
                }
            })
            .collect();
        Ok(Weights {
            embed,
            layers,
            layer_range,
            final_norm,
            lm_head,
        })
    }

    /// The output projection: `lm_head`, or the embeddings when tied.
    pub fn output(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

pub(super) fn check_range(
    cfg: &ModelConfig,
    layer_range: &Range<usize>,
) -> Result<(), WeightsError> {
    if layer_range.start > layer_range.end || layer_range.end > cfg.num_layers {
        return Err(WeightsError::LayerRange {
            start: layer_range.start,
            end: layer_range.end,
            num_layers: cfg.num_layers,
        });
    }
    Ok(())
}
