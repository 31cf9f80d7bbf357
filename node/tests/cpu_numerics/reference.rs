//! The dense reference: written plainly, in f64, from the same `Weights`; no paging, no cache,
//! its own RoPE from `rope::inv_freq`, and the whole causal attention recomputed over the whole
//! sequence for every call.

use strata_node::model::{Matrix, ModelConfig, Weights, rope};

fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    x.iter().zip(w).map(|(v, &w)| v * inv * w as f64).collect()
}

/// `m · x (+ bias)` with `m` as `[out, in]`.
fn linear(m: &Matrix, x: &[f64], bias: Option<&Vec<f32>>) -> Vec<f64> {
    (0..m.rows)
        .map(|r| {
            let dot: f64 = m.row(r).iter().zip(x).map(|(&w, x)| w as f64 * x).sum();
            dot + bias.map_or(0.0, |b| b[r] as f64)
        })
        .collect()
}

/// HF "rotate half": pairs `(i, i + d/2)` turn by `pos · inv_freq[i]`.
fn rotate(head: &mut [f64], pos: usize, inv_freq: &[f64]) {
    let half = inv_freq.len();
    for (i, f) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f64 * f).sin_cos();
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = b * cos + a * sin;
    }
}

/// Logits of the last position of `tokens`, recomputed from scratch.
pub fn reference_logits(cfg: &ModelConfig, w: &Weights, tokens: &[u32]) -> Vec<f64> {
    let inv_freq = rope::inv_freq(cfg);
    let (d, heads, kv_heads) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
    let eps = cfg.rms_norm_eps;
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| w.embed.row(t as usize).iter().map(|&v| v as f64).collect())
        .collect();
    for lw in &w.layers {
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, x) in xs.iter().enumerate() {
            let h = rms_norm(x, &lw.attn_norm, eps);
            let mut q = linear(&lw.wq, &h, lw.bq.as_ref());
            let mut k = linear(&lw.wk, &h, lw.bk.as_ref());
            q.chunks_mut(d).for_each(|hd| rotate(hd, pos, &inv_freq));
            k.chunks_mut(d).for_each(|hd| rotate(hd, pos, &inv_freq));
            qs.push(q);
            ks.push(k);
            vs.push(linear(&lw.wv, &h, lw.bv.as_ref()));
        }
        for (t, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0.0; heads * d];
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let q = &qs[t][h * d..(h + 1) * d];
                let scores: Vec<f64> = (0..=t)
                    .map(|p| {
                        let k = &ks[p][g * d..(g + 1) * d];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let v: f64 = e
                        .iter()
                        .enumerate()
                        .map(|(p, e)| e * vs[p][g * d + i])
                        .sum();
                    att[h * d + i] = v / z;
                }
            }
            let o = linear(&lw.wo, &att, None);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let h = rms_norm(x, &lw.mlp_norm, eps);
            let (gate, up) = (linear(&lw.w_gate, &h, None), linear(&lw.w_up, &h, None));
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = linear(&lw.w_down, &act, None);
            x.iter_mut().zip(&down).for_each(|(x, o)| *x += o);
        }
    }
    let last = rms_norm(xs.last().expect("at least one token"), &w.final_norm, eps);
    linear(w.output(), &last, None)
}
