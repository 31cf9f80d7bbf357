//! f32 kernels of the forward pass: matmul against packed weights, RMSNorm, the SiLU gate and
//! the residual add. Parallel with rayon; the matmul runs through [`dispatch`] at the CPU's full
//! vector width.

use super::simd::{Isa, Kernel, Simd, dispatch};
use super::tile::{LANES, Strip, rows_times_panel};
use crate::model::Matrix;
use rayon::prelude::*;

/// Rows of one element-wise task: small steps stay on one thread.
const ROWS_PER_TASK: usize = 16;

/// A weight matrix `[out, in]` packed for [`matmul`] as panels of [`LANES`] outputs: panel `p`
/// holds `W[p·16 + c][i]` at `p·in·16 + i·16 + c`, zero past `out`.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pub(crate) out: usize,
    pub(crate) inp: usize,
    data: Vec<f32>,
}

impl Packed {
    /// Packs matrices of the same width stacked by rows (`[Wq; Wk; Wv]` gives one q|k|v matmul).
    /// The caller has checked that every matrix is `cols` wide.
    pub(crate) fn stack(parts: &[&Matrix]) -> Packed {
        let inp = parts.first().map_or(0, |m| m.cols);
        let rows: Vec<&[f32]> = parts
            .iter()
            .flat_map(|m| (0..m.rows).map(move |r| m.row(r)))
            .collect();
        let out = rows.len();
        let mut data = vec![0.0; out.div_ceil(LANES) * inp * LANES];
        for (o, row) in rows.iter().enumerate() {
            let panel = &mut data[(o / LANES) * inp * LANES..];
            for (i, &w) in row.iter().enumerate() {
                panel[i * LANES + o % LANES] = w;
            }
        }
        Packed { out, inp, data }
    }

    fn panels(&self) -> usize {
        self.out.div_ceil(LANES)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.inp * LANES..(p + 1) * self.inp * LANES]
    }
}

/// One task of [`matmul`]: `rows` rows of `x` times one panel, into `out` (`rows × 16`).
struct PanelTask<'a> {
    x: &'a [f32],
    inp: usize,
    rows: usize,
    panel: &'a [f32],
    out: &'a mut [f32],
}

impl Kernel for PanelTask<'_> {
    type Out = ();

    #[inline(always)]
    fn run<S: Simd>(self) {
        let strip = Strip {
            a: self.x,
            rs: self.inp,
            ks: 1,
            b: self.panel,
            ldb: LANES,
            k: self.inp,
            ldo: LANES,
            accumulate: false,
        };
        rows_times_panel::<S>(&strip, self.rows, self.out);
    }
}

/// `y[rows, w.out] = x[rows, w.in] · Wᵀ`. The work is a grid of (panel, row chunk) tasks, so a
/// decode step of a few rows still spreads over every thread.
pub(crate) fn matmul(isa: Isa, x: &[f32], rows: usize, w: &Packed, y: &mut [f32]) {
    debug_assert_eq!(x.len(), rows * w.inp);
    debug_assert_eq!(y.len(), rows * w.out);
    if rows == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let chunk = rows.div_ceil(4 * threads).next_multiple_of(8).clamp(8, 256);
    let chunks = rows.div_ceil(chunk);
    let mut scratch = vec![0.0f32; w.panels() * chunks * chunk * LANES];
    scratch
        .par_chunks_mut(chunk * LANES)
        .enumerate()
        .for_each(|(task, out)| {
            let (p, c) = (task / chunks, task % chunks);
            let r0 = c * chunk;
            let n = chunk.min(rows - r0);
            let x = &x[r0 * w.inp..(r0 + n) * w.inp];
            let panel = w.panel(p);
            dispatch(
                isa,
                PanelTask {
                    x,
                    inp: w.inp,
                    rows: n,
                    panel,
                    out: &mut out[..n * LANES],
                },
            );
        });
    let out = w.out;
    y.par_chunks_mut(out)
        .with_min_len(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(t, yrow)| {
            let (c, r) = (t / chunk, t % chunk);
            for (p, dst) in yrow.chunks_mut(LANES).enumerate() {
                let src = &scratch[((p * chunks + c) * chunk + r) * LANES..];
                dst.copy_from_slice(&src[..dst.len()]);
            }
        });
}

/// Adds `bias` to every row of `y`.
pub(crate) fn add_bias(y: &mut [f32], bias: &[f32]) {
    y.par_chunks_mut(bias.len())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
}

/// `out = x / sqrt(mean(x²) + eps) · w`, row by row (rows are `w.len()` wide).
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) {
    let n = w.len();
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(o, x)| {
            let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let inv = (1.0 / (ss / n as f64 + eps).sqrt()) as f32;
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * inv * w;
            }
        });
}

/// `out[t][i] = silu(gu[t][i]) · gu[t][ff + i]`: `gu` rows are `[gate | up]`, `2·ff` wide.
pub(crate) fn silu_gate(gu: &[f32], ff: usize, out: &mut [f32]) {
    out.par_chunks_mut(ff)
        .zip(gu.par_chunks(2 * ff))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(ff);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

/// `x += y`.
pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1024)
        .zip(y.par_chunks(1024))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x += y));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rng::Rng;

    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Matrix {
        Matrix {
            rows,
            cols,
            data: (0..rows * cols).map(|_| rng.uniform(1.0)).collect(),
        }
    }

    #[test]
    fn matmul_matches_naive() {
        let mut rng = Rng::new(11);
        for isa in Isa::available() {
            for &(rows, inp, outs) in &[
                (1, 7, 5),
                (3, 64, 16),
                (13, 33, 40),
                (70, 64, 176),
                (300, 20, 3),
            ] {
                let x = random(rows, inp, &mut rng);
                let (w1, w2) = (
                    random(outs / 2, inp, &mut rng),
                    random(outs - outs / 2, inp, &mut rng),
                );
                let packed = Packed::stack(&[&w1, &w2]);
                let mut y = vec![0.0; rows * outs];
                matmul(isa, &x.data, rows, &packed, &mut y);
                for t in 0..rows {
                    for o in 0..outs {
                        let w = if o < w1.rows {
                            w1.row(o)
                        } else {
                            w2.row(o - w1.rows)
                        };
                        let want: f64 = x
                            .row(t)
                            .iter()
                            .zip(w)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        let got = y[t * outs + o] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{} {rows}x{inp}x{outs} [{t},{o}]: {got} vs {want}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn norms_and_gate() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        assert!((out[0] - 1.2).abs() < 1e-6 && (out[1] - 3.2).abs() < 1e-6);
        let mut o = [0.0; 1];
        silu_gate(&[1.0, 2.0], 1, &mut o);
        assert!((o[0] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    }
}
