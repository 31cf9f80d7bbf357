//! The model as the cpu executor runs it: weights packed for the kernels, and the forward pass of
//! a step's whole batch, layer by layer, so every item shares each pass over a layer's weights.

use super::attention::{SeqKv, Shape, attention};
use super::math::{Packed, add_assign, add_bias, matmul, rms_norm, silu_gate};
use super::simd::Isa;
use super::store::KvStore;
use crate::exec::StageInput;
use crate::model::rope::RopeTable;
use crate::model::{Matrix, ModelConfig, Weights};
use crate::sched::plan::WorkItem;
use rayon::prelude::*;

/// One decoder layer, packed.
struct Layer {
    attn_norm: Vec<f32>,
    /// `[Wq; Wk; Wv]`: one matmul gives a row `[q | k | v]`.
    wqkv: Packed,
    /// `[bq | bk | bv]`, zeros for an absent part.
    bqkv: Option<Vec<f32>>,
    wo: Packed,
    mlp_norm: Vec<f32>,
    /// `[W_gate; W_up]`: one matmul gives a row `[gate | up]`.
    w_gate_up: Packed,
    w_down: Packed,
}

/// Weights and tables of the whole model.
pub(crate) struct Model {
    pub(crate) shape: Shape,
    hidden: usize,
    ff: usize,
    vocab: usize,
    eps: f64,
    embed: Matrix,
    /// The layers `layer_range` of the model; slot `j` of a plan item is layer `start + j`.
    layers: Vec<Layer>,
    layer_range: std::ops::Range<usize>,
    final_norm: Vec<f32>,
    /// `None` unless the range ends at the model's last layer (only the last stage samples).
    output: Option<Packed>,
    rope: RopeTable,
}

/// What one step's forward pass gives.
pub(crate) struct Forward {
    /// The last stage: `[items, vocab]`, the logits of each item's last position. Any other
    /// stage: `[rows, hidden]`, the activations for the next stage.
    pub(crate) out: Vec<f32>,
    /// Bytes that staging moved across tiers.
    pub(crate) transfer_bytes: u64,
}

fn check(m: &Matrix, rows: usize, cols: usize, name: &str) -> Result<(), String> {
    if m.rows != rows || m.cols != cols || m.data.len() != rows * cols {
        return Err(format!(
            "{name} is {}x{} with {} values, expected {rows}x{cols}",
            m.rows,
            m.cols,
            m.data.len()
        ));
    }
    Ok(())
}

fn check_len(v: &[f32], len: usize, name: &str) -> Result<(), String> {
    if v.len() != len {
        return Err(format!("{name} has {} values, expected {len}", v.len()));
    }
    Ok(())
}

impl Layer {
    fn new(cfg: &ModelConfig, l: usize, w: crate::model::LayerWeights) -> Result<Layer, String> {
        let (h, q, kv, ff) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let name = |t: &str| format!("layer {l} {t}");
        check_len(&w.attn_norm, h, &name("attn_norm"))?;
        check_len(&w.mlp_norm, h, &name("mlp_norm"))?;
        check(&w.wq, q, h, &name("wq"))?;
        check(&w.wk, kv, h, &name("wk"))?;
        check(&w.wv, kv, h, &name("wv"))?;
        check(&w.wo, h, q, &name("wo"))?;
        check(&w.w_gate, ff, h, &name("w_gate"))?;
        check(&w.w_up, ff, h, &name("w_up"))?;
        check(&w.w_down, h, ff, &name("w_down"))?;
        let has_bias = w.bq.is_some() || w.bk.is_some() || w.bv.is_some();
        if cfg.attention_bias && !has_bias {
            return Err(name("has no q/k/v bias but the config says attention_bias"));
        }
        let bqkv = if has_bias {
            let mut b = Vec::with_capacity(q + 2 * kv);
            for (part, len, t) in [(&w.bq, q, "bq"), (&w.bk, kv, "bk"), (&w.bv, kv, "bv")] {
                match part {
                    Some(v) => {
                        check_len(v, len, &name(t))?;
                        b.extend_from_slice(v);
                    }
                    None => b.resize(b.len() + len, 0.0),
                }
            }
            Some(b)
        } else {
            None
        };
        Ok(Layer {
            wqkv: Packed::stack(&[&w.wq, &w.wk, &w.wv]),
            bqkv,
            wo: Packed::stack(&[&w.wo]),
            w_gate_up: Packed::stack(&[&w.w_gate, &w.w_up]),
            w_down: Packed::stack(&[&w.w_down]),
            attn_norm: w.attn_norm,
            mlp_norm: w.mlp_norm,
        })
    }
}

impl Model {
    /// Checks every tensor's shape against `cfg` and packs the weights of `weights.layer_range`
    /// (all of the model's layers, or one pipeline stage's).
    pub(crate) fn new(
        cfg: &ModelConfig,
        weights: Weights,
        block_tokens: usize,
    ) -> Result<Model, String> {
        let (h, heads, kvh, d) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        if h == 0 || cfg.vocab_size == 0 || kvh == 0 || heads % kvh != 0 {
            return Err(format!(
                "unusable shape: hidden {h}, vocab {}, {heads} heads over {kvh} kv heads",
                cfg.vocab_size
            ));
        }
        if d == 0 || d % 2 != 0 {
            return Err(format!(
                "head_dim {d} must be even and positive (RoPE pairs)"
            ));
        }
        let range = weights.layer_range.clone();
        if range.is_empty() || range.end > cfg.num_layers || weights.layers.len() != range.len() {
            return Err(format!(
                "weights hold layers {range:?} ({} of them) of a {}-layer model",
                weights.layers.len(),
                cfg.num_layers
            ));
        }
        check(&weights.embed, cfg.vocab_size, h, "embed")?;
        check_len(&weights.final_norm, h, "final_norm")?;
        let output = weights.output();
        check(output, cfg.vocab_size, h, "lm_head")?;
        let output = (range.end == cfg.num_layers).then(|| Packed::stack(&[output]));
        let layers = weights
            .layers
            .into_iter()
            .zip(range.clone())
            .map(|(w, l)| Layer::new(cfg, l, w))
            .collect::<Result<_, _>>()?;
        Ok(Model {
            shape: Shape {
                heads,
                kv_heads: kvh,
                head_dim: d,
                block_tokens,
            },
            hidden: h,
            ff: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps,
            embed: weights.embed,
            layers,
            layer_range: range,
            final_norm: weights.final_norm,
            output,
            rope: RopeTable::new(cfg, cfg.max_position_embeddings),
        })
    }

    /// Positions the RoPE table covers: a sequence is at most this long.
    pub(crate) fn max_pos(&self) -> usize {
        self.rope.max_pos()
    }

    pub(crate) fn vocab(&self) -> usize {
        self.vocab
    }

    /// The model's layers this instance computes.
    pub(crate) fn layer_range(&self) -> std::ops::Range<usize> {
        self.layer_range.clone()
    }

    pub(crate) fn hidden(&self) -> usize {
        self.hidden
    }

    /// Whether this instance ends at the model's last layer (and so produces logits).
    pub(crate) fn is_last(&self) -> bool {
        self.output.is_some()
    }

    fn q_dim(&self) -> usize {
        self.shape.heads * self.shape.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.shape.kv_heads * self.shape.head_dim
    }

    /// Runs `items` (validated against this model and `store`) through this instance's layers,
    /// from `input` (which must be `Tokens` when the range starts at layer 0, and `rows ·
    /// hidden` activations otherwise).
    pub(crate) fn forward(
        &self,
        isa: Isa,
        items: &[WorkItem],
        store: &mut KvStore,
        input: StageInput<'_>,
    ) -> Result<Forward, String> {
        let (h, ff) = (self.hidden, self.ff);
        let qkv_w = self.q_dim() + 2 * self.kv_dim();
        let mut row0 = Vec::with_capacity(items.len());
        let mut positions = Vec::new();
        for item in items {
            row0.push(positions.len());
            positions.extend((item.start_pos..).take(item.tokens.len()));
        }
        let rows = positions.len();
        let mut x = match input {
            StageInput::Tokens if self.layer_range.start == 0 => {
                let mut x = Vec::with_capacity(rows * h);
                for &t in items.iter().flat_map(|i| &i.tokens) {
                    x.extend_from_slice(self.embed.row(t as usize));
                }
                x
            }
            StageInput::Hidden(hidden) if self.layer_range.start > 0 => {
                if hidden.len() != rows * h {
                    return Err(format!(
                        "{} activation values for {rows} rows of {h}",
                        hidden.len()
                    ));
                }
                hidden.to_vec()
            }
            StageInput::Tokens => {
                return Err(format!(
                    "layers {:?} need the previous stage's activations",
                    self.layer_range
                ));
            }
            StageInput::Hidden(_) => {
                return Err("the first stage embeds token ids; it takes no activations".into());
            }
        };
        let mut normed = vec![0.0; rows * h];
        let mut qkv = vec![0.0; rows * qkv_w];
        let mut att = vec![0.0; rows * self.q_dim()];
        let mut proj = vec![0.0; rows * h];
        let mut gu = vec![0.0; rows * 2 * ff];
        let mut act = vec![0.0; rows * ff];
        let mut transfer_bytes = 0;
        // Slot `l` of each item's tables is this instance's `l`-th layer.
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, self.eps, &mut normed);
            matmul(isa, &normed, rows, &layer.wqkv, &mut qkv);
            if let Some(b) = &layer.bqkv {
                add_bias(&mut qkv, b);
            }
            self.rope_rows(&mut qkv, &positions);
            transfer_bytes += self.attend(isa, l, items, &row0, &qkv, store, &mut att);
            matmul(isa, &att, rows, &layer.wo, &mut proj);
            add_assign(&mut x, &proj);
            rms_norm(&x, &layer.mlp_norm, self.eps, &mut normed);
            matmul(isa, &normed, rows, &layer.w_gate_up, &mut gu);
            silu_gate(&gu, ff, &mut act);
            matmul(isa, &act, rows, &layer.w_down, &mut proj);
            add_assign(&mut x, &proj);
        }
        let Some(output) = &self.output else {
            return Ok(Forward {
                out: x,
                transfer_bytes,
            });
        };
        let mut last = Vec::with_capacity(items.len() * h);
        for (item, &r) in items.iter().zip(&row0) {
            let t = r + item.tokens.len() - 1;
            last.extend_from_slice(&x[t * h..(t + 1) * h]);
        }
        let mut last_normed = vec![0.0; last.len()];
        rms_norm(&last, &self.final_norm, self.eps, &mut last_normed);
        let mut logits = vec![0.0; items.len() * self.vocab];
        matmul(isa, &last_normed, items.len(), output, &mut logits);
        Ok(Forward {
            out: logits,
            transfer_bytes,
        })
    }

    /// Rotates the q and k heads of every `[q | k | v]` row for its position.
    fn rope_rows(&self, qkv: &mut [f32], positions: &[usize]) {
        let (d, heads, kvh) = (self.shape.head_dim, self.shape.heads, self.shape.kv_heads);
        let qkv_w = self.q_dim() + 2 * self.kv_dim();
        qkv.par_chunks_mut(qkv_w)
            .zip(positions.par_iter())
            .with_min_len(16)
            .for_each(|(row, &pos)| {
                for head in row[..(heads + kvh) * d].chunks_mut(d) {
                    self.rope.rotate(head, pos);
                }
            });
    }

    /// Layer `l`'s attention for every item: stages what the plan stages, writes the new K/V,
    /// attends, and copies staged blocks that got new positions back. Returns the bytes staging
    /// moved across tiers.
    #[allow(clippy::too_many_arguments)] // one layer's slice of the step's state
    fn attend(
        &self,
        isa: Isa,
        l: usize,
        items: &[WorkItem],
        row0: &[usize],
        qkv: &[f32],
        store: &mut KvStore,
        att: &mut [f32],
    ) -> u64 {
        let (bt, kv) = (self.shape.block_tokens, self.kv_dim());
        let q = self.q_dim();
        let qkv_w = q + 2 * kv;
        let need = |item: &WorkItem| (item.start_pos + item.tokens.len()).div_ceil(bt);
        let mut bytes = 0;
        // Each staged item gets its own contiguous staging range, in item order.
        let mut slots = vec![None; items.len()];
        let mut next = 0;
        for (slot, item) in slots.iter_mut().zip(items) {
            let lk = &item.layers[l];
            if lk.staged {
                bytes += store.stage_in(&lk.blocks[..need(item)], next);
                *slot = Some(next);
                next += need(item);
            }
        }
        for ((item, slot), &r) in items.iter().zip(&slots).zip(row0) {
            for (j, pos) in (item.start_pos..).take(item.tokens.len()).enumerate() {
                let row = &qkv[(r + j) * qkv_w..(r + j + 1) * qkv_w];
                let (b, off) = (pos / bt, pos % bt);
                let block = match slot {
                    Some(s) => store.staged_mut(s + b),
                    None => store.block_mut(item.layers[l].blocks[b]),
                };
                block[off * kv..(off + 1) * kv].copy_from_slice(&row[q..q + kv]);
                block[(bt + off) * kv..(bt + off + 1) * kv].copy_from_slice(&row[q + kv..]);
            }
        }
        {
            let store = &*store;
            let seqs: Vec<SeqKv<'_>> = items
                .iter()
                .zip(&slots)
                .zip(row0)
                .map(|((item, slot), &r)| SeqKv {
                    blocks: (0..need(item))
                        .map(|b| match slot {
                            Some(s) => store.staged(s + b),
                            None => store.block(item.layers[l].blocks[b]),
                        })
                        .collect(),
                    start_pos: item.start_pos,
                    row0: r,
                    rows: item.tokens.len(),
                })
                .collect();
            attention(isa, &self.shape, qkv, qkv_w, &seqs, att);
        }
        for (item, slot) in items.iter().zip(&slots) {
            if let Some(s) = slot {
                let first = item.start_pos / bt;
                bytes += store.stage_out(s + first, &item.layers[l].blocks[first..need(item)]);
            }
        }
        bytes
    }
}
