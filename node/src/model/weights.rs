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
    /// The requested layers are outside the model.
    #[error("layers {start}..{end} are outside a model of {num_layers} layers")]
    LayerRange {
        start: usize,
        end: usize,
        num_layers: usize,
    },
}
