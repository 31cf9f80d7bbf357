//! The model's weights on the device: matrices in bf16 (HF `[out, in]` layout, q/k/v and
//! gate/up stacked so one GEMM computes each), norms and biases in f32.

use super::driver::{DeviceBuf, Stream};
use super::kernels::Kernels;
use crate::exec::ExecError;
use crate::model::{Matrix, ModelConfig, Weights};
use half::bf16;

/// One decoder layer.
pub(crate) struct Layer {
    pub(crate) attn_norm: DeviceBuf,
    /// `[q + 2·kv, hidden]`
    pub(crate) wqkv: DeviceBuf,
    /// `[q + 2·kv]`, zeros for an absent part; `None` when the model has no q/k/v bias.
    pub(crate) bqkv: Option<DeviceBuf>,
    /// `[hidden, q]`
    pub(crate) wo: DeviceBuf,
    pub(crate) mlp_norm: DeviceBuf,
    /// `[2·ff, hidden]`
    pub(crate) w_gate_up: DeviceBuf,
    /// `[hidden, ff]`
    pub(crate) w_down: DeviceBuf,
}

pub(crate) struct DeviceWeights {
    /// `[vocab, hidden]`
    pub(crate) embed: DeviceBuf,
    pub(crate) layers: Vec<Layer>,
    pub(crate) final_norm: DeviceBuf,
    /// `[vocab, hidden]`; `None`: tied to `embed`.
    pub(crate) lm_head: Option<DeviceBuf>,
}

impl DeviceWeights {
    pub(crate) fn lm_head(&self) -> u64 {
        self.lm_head.as_ref().unwrap_or(&self.embed).ptr()
    }

    /// Bytes of the weights one forward pass reads (every layer, the lm_head once).
    pub(crate) fn bytes_per_pass(&self) -> u64 {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.w_gate_up.bytes() + l.w_down.bytes())
            .sum();
        (per_layer + self.lm_head.as_ref().unwrap_or(&self.embed).bytes()) as u64
    }
}

fn bf16_of(parts: &[&Matrix]) -> Vec<bf16> {
    parts
        .iter()
        .flat_map(|m| m.data.iter().map(|&v| bf16::from_f32(v)))
        .collect()
}

fn upload_bf16(parts: &[&Matrix], what: &str) -> Result<DeviceBuf, ExecError> {
    let data = bf16_of(parts);
    let buf = DeviceBuf::new(data.len() * 2, what)?;
    buf.upload(&data, what)?;
    Ok(buf)
}

fn upload_f32(v: &[f32], what: &str) -> Result<DeviceBuf, ExecError> {
    let buf = DeviceBuf::new(v.len() * 4, what)?;
    buf.upload(v, what)?;
    Ok(buf)
}

fn shape_error(reason: String) -> ExecError {
    ExecError::Config {
        executor: "cuda",
        reason,
    }
}

fn check(m: &Matrix, rows: usize, cols: usize, name: &str) -> Result<(), ExecError> {
    if m.rows != rows || m.cols != cols || m.data.len() != rows * cols {
        return Err(shape_error(format!(
            "{name} is {}x{}, expected {rows}x{cols}",
            m.rows, m.cols
        )));
    }
    Ok(())
}

fn check_len(v: &[f32], len: usize, name: &str) -> Result<(), ExecError> {
    if v.len() != len {
        return Err(shape_error(format!(
            "{name} has {} values, expected {len}",
            v.len()
        )));
    }
    Ok(())
}

/// Uploads `w`, checking every tensor's shape against `cfg`.
pub(crate) fn upload(cfg: &ModelConfig, w: &Weights) -> Result<DeviceWeights, ExecError> {
    let (h, q, kv, ff, vocab) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    if w.layer_range != (0..cfg.num_layers) || w.layers.len() != cfg.num_layers {
        return Err(shape_error(format!(
            "weights hold layers {:?}; the cuda executor needs all {}",
            w.layer_range, cfg.num_layers
        )));
    }
    check(&w.embed, vocab, h, "embed")?;
    check_len(&w.final_norm, h, "final_norm")?;
    let mut layers = Vec::with_capacity(w.layers.len());
    for (l, lw) in w.layers.iter().enumerate() {
        let name = |t: &str| format!("layer {l} {t}");
        check(&lw.wq, q, h, &name("wq"))?;
        check(&lw.wk, kv, h, &name("wk"))?;
        check(&lw.wv, kv, h, &name("wv"))?;
        check(&lw.wo, h, q, &name("wo"))?;
        check(&lw.w_gate, ff, h, &name("w_gate"))?;
        check(&lw.w_up, ff, h, &name("w_up"))?;
        check(&lw.w_down, h, ff, &name("w_down"))?;
        check_len(&lw.attn_norm, h, &name("attn_norm"))?;
        check_len(&lw.mlp_norm, h, &name("mlp_norm"))?;
        let bqkv = if lw.bq.is_some() || lw.bk.is_some() || lw.bv.is_some() {
            let mut b = Vec::with_capacity(q + 2 * kv);
            for (part, len, t) in [(&lw.bq, q, "bq"), (&lw.bk, kv, "bk"), (&lw.bv, kv, "bv")] {
                match part {
                    Some(v) => {
                        check_len(v, len, &name(t))?;
                        b.extend_from_slice(v);
                    }
                    None => b.resize(b.len() + len, 0.0),
                }
            }
            Some(upload_f32(&b, &name("qkv bias"))?)
        } else if cfg.attention_bias {
            return Err(shape_error(name(
                "has no q/k/v bias but the config says attention_bias",
            )));
        } else {
            None
        };
        layers.push(Layer {
            attn_norm: upload_f32(&lw.attn_norm, &name("attn_norm"))?,
            wqkv: upload_bf16(&[&lw.wq, &lw.wk, &lw.wv], &name("wqkv"))?,
            bqkv,
            wo: upload_bf16(&[&lw.wo], &name("wo"))?,
            mlp_norm: upload_f32(&lw.mlp_norm, &name("mlp_norm"))?,
            w_gate_up: upload_bf16(&[&lw.w_gate, &lw.w_up], &name("w_gate_up"))?,
            w_down: upload_bf16(&[&lw.w_down], &name("w_down"))?,
        });
    }
    let lm_head = match &w.lm_head {
        Some(m) => {
            check(m, vocab, h, "lm_head")?;
            Some(upload_bf16(&[m], "lm_head")?)
        }
        None => None,
    };
    Ok(DeviceWeights {
        embed: upload_bf16(&[&w.embed], "embed")?,
        layers,
        final_norm: upload_f32(&w.final_norm, "final_norm")?,
        lm_head,
    })
}

/// Random weights drawn on the device: matrices uniform in ±1/√in (embeddings ±1), norms 1.
pub(crate) fn random(
    cfg: &ModelConfig,
    seed: u64,
    k: &Kernels,
    s: &Stream,
) -> Result<DeviceWeights, ExecError> {
    let (h, q, kv, ff, vocab) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let mut stream_id = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut mat = |rows: usize, cols: usize, scale: f32, what: &str| {
        let buf = DeviceBuf::new(rows * cols * 2, what)?;
        stream_id = stream_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
        k.fill_uniform(s, buf.ptr(), (rows * cols) as u64, stream_id, scale)?;
        Ok::<_, ExecError>(buf)
    };
    let ones = |n: usize, what: &str| {
        let buf = DeviceBuf::new(n * 4, what)?;
        k.fill_value(s, buf.ptr(), n as u64, 1.0)?;
        Ok::<_, ExecError>(buf)
    };
    let inv = |n: usize| 1.0 / (n as f32).sqrt();
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for _ in 0..cfg.num_layers {
        layers.push(Layer {
            attn_norm: ones(h, "attn_norm")?,
            wqkv: mat(q + 2 * kv, h, inv(h), "wqkv")?,
            bqkv: None,
            wo: mat(h, q, inv(q), "wo")?,
            mlp_norm: ones(h, "mlp_norm")?,
            w_gate_up: mat(2 * ff, h, inv(h), "w_gate_up")?,
            w_down: mat(h, ff, inv(ff), "w_down")?,
        });
    }
    let embed = mat(vocab, h, 1.0, "embed")?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(mat(vocab, h, inv(h), "lm_head")?)
    };
    let final_norm = ones(h, "final_norm")?;
    s.sync("drawing random weights")?;
    Ok(DeviceWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    })
}
