//! Rotary position embedding: inverse frequencies with `linear` and `llama3` scaling, and the
//! rotation itself in HF's "rotate half" convention (pairs `(i, i + head_dim/2)`).

use super::config::{ModelConfig, RopeScaling};

/// Inverse frequencies, `head_dim / 2` of them, scaling applied.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let half = cfg.head_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64))
        .collect();
    match cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Precomputed cos/sin per position: `table[pos * half + i]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// A table for positions `0..max_pos`.
    pub fn new(cfg: &ModelConfig, max_pos: usize) -> Self {
        let freqs = inv_freq(cfg);
        let half = freqs.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for pos in 0..max_pos {
            for &f in &freqs {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { half, cos, sin }
    }

    /// The tables themselves, `[pos * half + i]` each (uploaded by the cuda executor).
    pub fn cos_sin(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    pub fn max_pos(&self) -> usize {
        self.cos.len().checked_div(self.half).unwrap_or(0)
    }

    /// Rotates one head vector (`2·half` values) in place for position `pos`.
    pub fn rotate(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let (cos, sin) = (
            &self.cos[pos * h..(pos + 1) * h],
            &self.sin[pos * h..(pos + 1) * h],
        );
        let (a, b) = x.split_at_mut(h);
        for i in 0..h {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * cos[i] - x1 * sin[i];
            b[i] = x1 * cos[i] + x0 * sin[i];
        }
    }
}
