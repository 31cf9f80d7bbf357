//! What the measurements count: the model FLOPs of a prefill and the bytes a decode step reads.
//! The formulas are printed with the results and written into the JSON document.

use serde::Serialize;
use strata_node::model::ModelConfig;

/// The model FLOPs of a prefill of `n` tokens from position 0.
pub const PREFILL_FLOPS: &str = "2·n·P + 2·V·h + 2·2·L·H·d·n(n+1)/2  (P: matrix parameters of all \
layers; one logits row; causal QKᵀ and PV)";
/// The bytes a decode step reads.
pub const DECODE_BYTES: &str = "2·(L·(P_l + 2h) + h + V·h) + b·(c+1)·L·2·H_kv·d·2  (bf16 weights \
with norms, one lm_head pass; K and V of every position)";
/// How utilization is quoted.
pub const UTILIZATION: &str = "MFU = model FLOPs / median step time / measured GEMM peak; \
decode bandwidth = bytes read / median step time, over the measured device copy rate (read+write)";

/// The shape terms of the formulas, for one model with KV and weights in `dtype_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelCost {
    pub layers: u64,
    pub hidden: u64,
    pub q_dim: u64,
    pub kv_dim: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub dtype_bytes: u64,
}

impl ModelCost {
    pub fn new(cfg: &ModelConfig, dtype_bytes: usize) -> Self {
        ModelCost {
            layers: cfg.num_layers as u64,
            hidden: cfg.hidden_size as u64,
            q_dim: cfg.q_dim() as u64,
            kv_dim: cfg.kv_dim() as u64,
            intermediate: cfg.intermediate_size as u64,
            vocab: cfg.vocab_size as u64,
            heads: cfg.num_heads as u64,
            kv_heads: cfg.num_kv_heads as u64,
            head_dim: cfg.head_dim as u64,
            dtype_bytes: dtype_bytes as u64,
        }
    }

    /// `P_l`: matrix parameters of one layer (Wq, Wk, Wv, Wo, gate, up, down).
    pub fn layer_matrix_params(&self) -> u64 {
        let h = self.hidden;
        h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h + 3 * h * self.intermediate
    }

    /// Model FLOPs of a prefill of `n` tokens from position 0: the layers' matrix products for
    /// every token, the lm_head for the one row that is sampled, and causal attention (QKᵀ and
    /// PV over `n(n+1)/2` query–key pairs per head).
    pub fn prefill_flops(&self, n: usize) -> f64 {
        let n = n as f64;
        let matrices = 2.0 * n * (self.layers * self.layer_matrix_params()) as f64;
        let logits = 2.0 * (self.vocab * self.hidden) as f64;
        let pairs = n * (n + 1.0) / 2.0;
        let attention = 2.0 * 2.0 * (self.layers * self.heads * self.head_dim) as f64 * pairs;
        matrices + logits + attention
    }

    /// Weight bytes one decode step reads: every layer's matrices and its two RMSNorm vectors,
    /// the final norm and one pass over the lm_head.
    pub fn weight_bytes(&self) -> u64 {
        let h = self.hidden;
        let layer = self.layer_matrix_params() + 2 * h;
        self.dtype_bytes * (self.layers * layer + h + self.vocab * h)
    }

    /// KV bytes a decode step of `batch` sequences at `ctx` tokens of context reads: K and V of
    /// `ctx + 1` positions (the context and the new token) in every layer.
    pub fn decode_kv_bytes(&self, batch: usize, ctx: usize) -> u64 {
        let positions = (batch * (ctx + 1)) as u64;
        positions * self.layers * 2 * self.kv_heads * self.head_dim * self.dtype_bytes
    }

    /// All bytes a decode step reads: [`weight_bytes`](Self::weight_bytes) plus
    /// [`decode_kv_bytes`](Self::decode_kv_bytes).
    pub fn decode_bytes(&self, batch: usize, ctx: usize) -> u64 {
        self.weight_bytes() + self.decode_kv_bytes(batch, ctx)
    }
}
