//! Fitting a [`CostProfile`] from measured step times.
//!
//! Measurements are whole steps over all `layers` layers. With samples of one layer count a
//! step's fixed cost (embedding, lm_head, sampling, the final sync) and the per-layer constant
//! cannot be told apart: the fit folds both into the per-layer constant and `step_overhead_s`
//! stays 0, which is exact for a model of that depth. With decode samples of two or more
//! layer counts (a truncated model calibrated at two depths) they can: the fixed cost becomes
//! `step_overhead_s`, so the per-layer costs carry over to a model of another depth (see
//! [`fit_profile`]). Coefficients are non-negative least squares (an active-set refit that
//! drops any term that would come out negative), on relative error for prefill and decode
//! (see [`relative`]).

use strata_transport::proto::{
    CostProfile, DecodeCoeffs, PrefillCoeffs, TransferCoeffs, WideDecode,
};

/// One measured prefill: `n_new` tokens over `n_ctx` cached, over `layers` layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillSample {
    pub n_new: usize,
    pub n_ctx: usize,
    pub layers: usize,
    pub seconds: f64,
}

/// One measured decode step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeSample {
    pub batch: usize,
    pub sum_ctx: usize,
    pub layers: usize,
    pub seconds: f64,
}

/// One measured transfer between tiers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferSample {
    pub bytes: u64,
    pub seconds: f64,
}

/// Measurements that cannot be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Too few samples of a kind for its coefficients.
    #[error("{kind}: {got} samples, at least {needed} needed")]
    TooFew {
        kind: &'static str,
        got: usize,
        needed: usize,
    },
    /// A sample with a non-finite or negative time, or zero layers.
    #[error("{kind}: sample {index} is not usable")]
    BadSample { kind: &'static str, index: usize },
}

/// Solves `min ‖A x − y‖` with `x ≥ 0` for a few unknowns.
fn nnls<const K: usize>(rows: &[[f64; K]], y: &[f64]) -> [f64; K] {
    let mut active = [true; K];
    loop {
        let idx: Vec<usize> = (0..K).filter(|&k| active[k]).collect();
        let n = idx.len();
        let mut x = [0.0; K];
        if n == 0 {
            return x;
        }
        // Normal equations over the active columns, scaled for conditioning.
        let scale: Vec<f64> = idx
            .iter()
            .map(|&k| {
                rows.iter()
                    .map(|r| r[k] * r[k])
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-300)
            })
            .collect();
        let mut m = vec![vec![0.0; n + 1]; n];
        for (r, &yv) in rows.iter().zip(y) {
            for i in 0..n {
                let ai = r[idx[i]] / scale[i];
                for j in 0..n {
                    m[i][j] += ai * r[idx[j]] / scale[j];
                }
                m[i][n] += ai * yv;
            }
        }
        for (i, row) in m.iter_mut().enumerate() {
            row[i] += 1e-12;
        }
        // Gaussian elimination with partial pivoting.
        for c in 0..n {
            let p = (c..n)
                .max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))
                .unwrap_or(c);
            m.swap(c, p);
            let d = m[c][c];
            if d.abs() < 1e-300 {
                continue;
            }
            let pivot = m[c].clone();
            for (r, row) in m.iter_mut().enumerate() {
                if r != c {
                    let f = row[c] / d;
                    for (x, p) in row.iter_mut().zip(&pivot).skip(c) {
                        *x -= f * p;
                    }
                }
            }
        }
        let mut worst = None;
        for i in 0..n {
            let v = if m[i][i].abs() < 1e-300 {
                0.0
            } else {
                m[i][n] / m[i][i] / scale[i]
            };
            x[idx[i]] = v;
            if v < 0.0 && worst.is_none_or(|(_, w)| v < w) {
                worst = Some((idx[i], v));
            }
        }
        match worst {
            Some((k, _)) => active[k] = false,
            None => return x,
        }
    }
}

/// Divides each row and its target by the target (floored at a thousandth of the mean), so
/// that [`nnls`] minimizes relative rather than absolute error. Measured times span two orders
/// of magnitude (a 512-token prefill beside an 8k one) and their noise grows with them: on
/// absolute error the longest samples decide the fit alone, and on the H200 a 512-token
/// prefill of Llama-3-70B's layers came out 70% too long. Targets that are all zero are left.
fn relative<const K: usize>(rows: &mut [[f64; K]], y: &mut [f64]) {
    let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
    if mean.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return;
    }
    let floor = mean * 1e-3;
    for (row, v) in rows.iter_mut().zip(y.iter_mut()) {
        let w = 1.0 / v.max(floor);
        row.iter_mut().for_each(|x| *x *= w);
        *v *= w;
    }
}

fn check<T>(
    kind: &'static str,
    s: &[T],
    needed: usize,
    ok: impl Fn(&T) -> bool,
) -> Result<(), FitError> {
    if s.len() < needed {
        return Err(FitError::TooFew {
            kind,
            got: s.len(),
            needed,
        });
    }
    match s.iter().position(|x| !ok(x)) {
        Some(index) => Err(FitError::BadSample { kind, index }),
        None => Ok(()),
    }
}

/// Decode's terms: `(step_overhead_s, narrow, wide)`. Narrow and wide samples (below and from
/// `wide_from`) get their own constant and per-row terms and share the per-context-token one,
/// in one fit (with the step's fixed cost where the samples span two depths). A side whose
/// samples are all one batch size has no per-row term: it could not be told from the constant.
fn fit_decode(
    decode: &[DecodeSample],
    wide_from: Option<usize>,
) -> (f64, DecodeCoeffs, Option<WideDecode>) {
    let depths = decode.iter().any(|d| d.layers != decode[0].layers);
    let is_wide = |d: &DecodeSample| wide_from.is_some_and(|w| d.batch >= w);
    let varied = |wide: bool| {
        let mut batches = decode
            .iter()
            .filter(|d| is_wide(d) == wide)
            .map(|d| d.batch);
        let first = batches.next();
        batches.any(|b| Some(b) != first)
    };
    let (narrow_rows, wide_rows) = (varied(false), varied(true));
    let mut rows: Vec<[f64; 6]> = decode
        .iter()
        .map(|d| {
            let (l, b, wide) = (d.layers as f64, d.batch as f64, is_wide(d));
            let on = |yes: bool| if yes { l } else { 0.0 };
            [
                if depths { 1.0 } else { 0.0 },
                on(!wide),
                on(!wide && narrow_rows) * b,
                on(wide),
                on(wide && wide_rows) * b,
                l * d.sum_ctx as f64,
            ]
        })
        .collect();
    let mut y: Vec<f64> = decode.iter().map(|d| d.seconds).collect();
    relative(&mut rows, &mut y);
    let [s0, d0, d1, e0, e1, d2] = nnls(&rows, &y);
    let wide = match wide_from {
        Some(from) if decode.iter().any(is_wide) => Some(WideDecode {
            from_batch: from as u32,
            d0: e0,
            d1: e1,
        }),
        _ => None,
    };
    (s0, DecodeCoeffs { d0, d1, d2 }, wide)
}

/// Fits a cost profile from samples of every kind. `wide_from`: the narrowest decode batch the
/// executor computes with its wide kernels ([`WideDecode`]), if it has two kinds.
///
/// When the decode samples span two or more layer counts, decode is fitted as
/// `s0 + L·(d0 + d1·batch + d2·Σctx)` over whole-step seconds, and `s0` (the step's fixed
/// cost) is the profile's `step_overhead_s`. It is taken from decode alone: a decode step
/// lasts milliseconds, so a fixed cost of a fraction of one is a large share of it and well
/// determined, while in a prefill of tens of milliseconds it is within the noise. The lm_head
/// pass it is mostly made of reads the same weights for a prefill's one sampled row as for a
/// decode batch's rows. Prefill is then fitted per layer on each sample less `s0`.
pub fn fit_profile(
    prefill: &[PrefillSample],
    decode: &[DecodeSample],
    transfer: &[TransferSample],
    wide_from: Option<usize>,
) -> Result<CostProfile, FitError> {
    let good = |s: f64, layers: usize| s.is_finite() && s >= 0.0 && layers > 0;
    check("prefill", prefill, 3, |p| good(p.seconds, p.layers))?;
    check("decode", decode, 3, |d| good(d.seconds, d.layers))?;
    check("transfer", transfer, 2, |t| good(t.seconds, 1))?;

    let (step_overhead_s, decode_coeffs, decode_wide) = fit_decode(decode, wide_from);

    let mut rows: Vec<[f64; 3]> = prefill
        .iter()
        .map(|p| {
            let (n, c) = (p.n_new as f64, p.n_ctx as f64);
            [1.0, n, n * (c + n)]
        })
        .collect();
    let mut y: Vec<f64> = prefill
        .iter()
        .map(|p| (p.seconds - step_overhead_s).max(0.0) / p.layers as f64)
        .collect();
    relative(&mut rows, &mut y);
    let [a0, a1, a2] = nnls(&rows, &y);

    // Copies keep absolute error: their bandwidth, which the large copies decide, is what
    // the scheduler leans on (a relative fit of the cpu executor's cached small copies put
    // its 4 MiB copies at half their time).
    let rows: Vec<[f64; 2]> = transfer.iter().map(|t| [1.0, t.bytes as f64]).collect();
    let y: Vec<f64> = transfer.iter().map(|t| t.seconds).collect();
    let [t0, per_byte] = nnls(&rows, &y);
    let bw_bytes_per_s = if per_byte > 0.0 {
        1.0 / per_byte
    } else {
        f64::INFINITY
    };

    Ok(CostProfile {
        prefill: PrefillCoeffs { a0, a1, a2 },
        decode: decode_coeffs,
        decode_wide,
        transfer: TransferCoeffs { t0, bw_bytes_per_s },
        step_overhead_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth() -> CostProfile {
        CostProfile {
            prefill: PrefillCoeffs {
                a0: 1e-4,
                a1: 2e-6,
                a2: 3e-10,
            },
            decode: DecodeCoeffs {
                d0: 5e-5,
                d1: 1e-6,
                d2: 2e-9,
            },
            decode_wide: None,
            transfer: TransferCoeffs {
                t0: 1e-5,
                bw_bytes_per_s: 5e9,
            },
            step_overhead_s: 0.0,
        }
    }

    #[test]
    fn recovers_known_coefficients_from_noisy_samples() {
        let t = truth();
        let mut rng = crate::model::rng::Rng::new(3);
        let mut noise = || 1.0 + rng.uniform(0.01) as f64;
        let prefill: Vec<_> = [
            (128, 0),
            (512, 0),
            (1024, 512),
            (4096, 0),
            (2048, 4096),
            (8192, 0),
        ]
        .iter()
        .map(|&(n_new, n_ctx)| PrefillSample {
            n_new,
            n_ctx,
            layers: 4,
            seconds: 4.0 * t.prefill_layer_s(n_new, n_ctx) * noise(),
        })
        .collect();
        let decode: Vec<_> = [(1, 1000), (8, 8000), (32, 64000), (64, 200000), (16, 4000)]
            .iter()
            .map(|&(batch, sum_ctx)| DecodeSample {
                batch,
                sum_ctx,
                layers: 4,
                seconds: 4.0 * t.decode_layer_s(batch, sum_ctx) * noise(),
            })
            .collect();
        let transfer: Vec<_> = [1u64 << 14, 1 << 18, 1 << 22, 1 << 26]
            .iter()
            .map(|&bytes| TransferSample {
                bytes,
                seconds: t.transfer_s(bytes) * noise(),
            })
            .collect();
        let p = fit_profile(&prefill, &decode, &transfer, None).unwrap();
        for (n, c) in [(1000, 0), (6000, 2000)] {
            let rel = (p.prefill_layer_s(n, c) / t.prefill_layer_s(n, c) - 1.0).abs();
            assert!(rel < 0.03, "prefill {n},{c}: {rel}");
        }
        let rel = (p.decode_layer_s(20, 50000) / t.decode_layer_s(20, 50000) - 1.0).abs();
        assert!(rel < 0.03, "decode: {rel}");
        let rel = (p.transfer.bw_bytes_per_s / 5e9 - 1.0).abs();
        assert!(rel < 0.03, "bandwidth: {rel}");
    }

    /// Samples of `t` at the calibration plan's points for 4096-token prompts (32 layers),
    /// decode with 1% noise.
    fn calibration_like(
        t: &CostProfile,
    ) -> (Vec<PrefillSample>, Vec<DecodeSample>, Vec<TransferSample>) {
        let mut rng = crate::model::rng::Rng::new(5);
        let mut noise = || 1.0 + rng.uniform(0.01) as f64;
        let decode: Vec<_> = [
            (1, 512),
            (1, 4096),
            (2, 512),
            (4, 4096),
            (8, 2048),
            (16, 256),
            (32, 512),
        ]
        .iter()
        .map(|&(batch, ctx)| DecodeSample {
            batch,
            sum_ctx: batch * (ctx + 1),
            layers: 32,
            seconds: t.decode_s(batch, batch * (ctx + 1), 32) * noise(),
        })
        .collect();
        let prefill = [1, 2, 3].map(|n| PrefillSample {
            n_new: 512 * n,
            n_ctx: 0,
            layers: 32,
            seconds: t.prefill_s(512 * n, 0, 32),
        });
        let transfer = [1u64 << 20, 1 << 24].map(|bytes| TransferSample {
            bytes,
            seconds: t.transfer_s(bytes),
        });
        (prefill.to_vec(), decode, transfer.to_vec())
    }

    /// `truth()` with decode in two regimes (per layer): narrow steps cost 0.19 ms plus
    /// `narrow_d1` a row, steps from `from_batch` rows `wide_d0` plus `wide_d1` a row; both
    /// 1.4 ns per context token.
    fn split_truth(narrow_d1: f64, from_batch: u32, wide_d0: f64, wide_d1: f64) -> CostProfile {
        CostProfile {
            decode: DecodeCoeffs {
                d0: 0.19e-3,
                d1: narrow_d1,
                d2: 1.4e-9,
            },
            decode_wide: Some(WideDecode {
                from_batch,
                d0: wide_d0,
                d1: wide_d1,
            }),
            ..truth()
        }
    }

    /// |p / t − 1| for a decode step of `b` sequences of `ctx` tokens of context (32 layers).
    fn decode_off(p: &CostProfile, t: &CostProfile, b: usize, ctx: usize) -> f64 {
        let sum = b * (ctx + 1);
        (p.decode_s(b, sum, 32) / t.decode_s(b, sum, 32) - 1.0).abs()
    }

    /// Decode priced like the cuda executor's on an H100 when its GEMVs took up to 4 rows (per
    /// layer): each row a fifth of a weight pass more; cuBLAS from 5, higher at first and then
    /// nearly flat.
    /// The calibration's points (for 4096-token prompts) fitted with the split recover both
    /// regimes; one line through them misprices the narrow steps.
    #[test]
    fn a_split_decode_fit_recovers_both_kernels() {
        let t = split_truth(0.04e-3, 5, 0.3e-3, 0.004e-3);
        let (prefill, decode, transfer) = calibration_like(&t);
        let split = fit_profile(&prefill, &decode, &transfer, Some(5)).unwrap();
        let line = fit_profile(&prefill, &decode, &transfer, None).unwrap();
        assert_eq!(split.decode_wide.map(|w| w.from_batch), Some(5));
        assert_eq!(line.decode_wide, None);
        let off = |p: &CostProfile, b: usize, ctx: usize| decode_off(p, &t, b, ctx);
        for (b, ctx) in [
            (1, 8192),
            (3, 4096),
            (4, 4096),
            (5, 4096),
            (24, 2048),
            (64, 1024),
        ] {
            assert!(
                off(&split, b, ctx) < 0.03,
                "split, batch {b}: {}",
                off(&split, b, ctx)
            );
        }
        let worst_line = [2, 3, 4]
            .map(|b| off(&line, b, 4096))
            .into_iter()
            .fold(0.0, f64::max);
        assert!(worst_line > 0.05, "one line, batches 2-4: {worst_line}");
    }

    /// The cuda executor's default split: batch 1 alone on the narrow side, whose per-row term
    /// then stays 0 (it cannot be told from the constant), and 2–32 on the wide side.
    #[test]
    fn one_narrow_batch_size_has_no_per_row_term() {
        let t = split_truth(0.0, 2, 0.22e-3, 0.01e-3);
        let (prefill, decode, transfer) = calibration_like(&t);
        let p = fit_profile(&prefill, &decode, &transfer, Some(2)).unwrap();
        assert_eq!(p.decode.d1, 0.0);
        assert_eq!(p.decode_wide.map(|w| w.from_batch), Some(2));
        for (b, ctx) in [(1, 8192), (2, 4096), (4, 4096), (24, 2048)] {
            let off = decode_off(&p, &t, b, ctx);
            assert!(off < 0.03, "batch {b}: {off}");
        }
    }

    /// Samples of a model with a fixed step cost `s0` beside its layers, at `depths` layer
    /// counts, with 1% noise.
    fn samples_at(
        t: &CostProfile,
        depths: &[usize],
    ) -> (Vec<PrefillSample>, Vec<DecodeSample>, Vec<TransferSample>) {
        let mut rng = crate::model::rng::Rng::new(5);
        let mut noise = || 1.0 + rng.uniform(0.01) as f64;
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for &layers in depths {
            for (n_new, n_ctx) in [(512, 0), (2048, 0), (4096, 4096), (8192, 0), (1024, 4096)] {
                prefill.push(PrefillSample {
                    n_new,
                    n_ctx,
                    layers,
                    seconds: t.prefill_s(n_new, n_ctx, layers) * noise(),
                });
            }
            for (batch, ctx) in [(1, 1024), (1, 8192), (4, 4096), (16, 2048), (32, 1024)] {
                decode.push(DecodeSample {
                    batch,
                    sum_ctx: batch * ctx,
                    layers,
                    seconds: t.decode_s(batch, batch * ctx, layers) * noise(),
                });
            }
        }
        let transfer = [1u64 << 16, 1 << 20, 1 << 24]
            .iter()
            .map(|&bytes| TransferSample {
                bytes,
                seconds: t.transfer_s(bytes),
            })
            .collect();
        (prefill, decode, transfer)
    }

    #[test]
    fn two_depths_separate_the_step_cost_from_the_layers() {
        // A 70B-like layer (0.4 ms of weight reads per decode step) and an lm_head pass of
        // 0.5 ms per step.
        let t = CostProfile {
            prefill: PrefillCoeffs {
                a0: 4e-4,
                a1: 2.5e-6,
                a2: 4e-11,
            },
            decode: DecodeCoeffs {
                d0: 4e-4,
                d1: 2e-6,
                d2: 1e-9,
            },
            step_overhead_s: 5e-4,
            ..truth()
        };
        let (prefill, decode, transfer) = samples_at(&t, &[8, 4]);
        let p = fit_profile(&prefill, &decode, &transfer, None).unwrap();
        let rel = |a: f64, b: f64| (a / b - 1.0).abs();
        assert!(
            rel(p.step_overhead_s, 5e-4) < 0.15,
            "step overhead {}",
            p.step_overhead_s
        );
        // The full depth, which neither calibration ran: 80 layers and one step cost.
        for (batch, ctx) in [(1, 4096), (32, 4096)] {
            let (fit, real) = (
                p.decode_s(batch, batch * ctx, 80),
                t.decode_s(batch, batch * ctx, 80),
            );
            assert!(rel(fit, real) < 0.03, "decode {batch}: {fit} vs {real}");
        }
        for n in [1024, 4096] {
            let (fit, real) = (p.prefill_s(n, 0, 80), t.prefill_s(n, 0, 80));
            assert!(rel(fit, real) < 0.03, "prefill {n}: {fit} vs {real}");
        }

        // One depth cannot tell them apart: the step cost is spread over the 8 layers, and
        // a batch-1 decode of 80 layers comes out ten step costs long instead of one.
        let (prefill, decode, transfer) = samples_at(&t, &[8]);
        let one = fit_profile(&prefill, &decode, &transfer, None).unwrap();
        assert_eq!(one.step_overhead_s, 0.0);
        let (fit, real) = (one.decode_s(1, 4096, 80), t.decode_s(1, 4096, 80));
        assert!(
            rel(fit, real + 9.0 * 5e-4) < 0.03,
            "one depth: {fit} vs {real}"
        );
    }

    /// Calibration of Llama-3-70B's shape cut to 8 and 4 layers on an H200 (run 1 of
    /// docs/benchmarks/h200-70b/): `(n_new, n_ctx, layers, ms)` and `(batch, Σctx, layers, ms)`.
    const H200_70B_PREFILL: [(usize, usize, usize, f64); 10] = [
        (512, 0, 8, 11.232263),
        (2048, 0, 8, 48.52459),
        (4096, 4096, 8, 142.239441),
        (8192, 0, 8, 248.310799),
        (1024, 4096, 8, 34.558588),
        (512, 0, 4, 5.899404),
        (2048, 0, 4, 25.244338),
        (4096, 4096, 4, 70.884054),
        (8192, 0, 4, 123.659165),
        (1024, 4096, 4, 18.258533),
    ];
    const H200_70B_DECODE: [(usize, usize, usize, f64); 10] = [
        (1, 1025, 8, 4.812077),
        (1, 8193, 8, 5.170498),
        (4, 16388, 8, 8.240966),
        (16, 32784, 8, 6.385365),
        (32, 32800, 8, 6.582585),
        (1, 1025, 4, 2.725884),
        (1, 8193, 4, 2.937775),
        (4, 16388, 4, 4.655789),
        (16, 32784, 4, 3.558329),
        (32, 32800, 4, 3.653953),
    ];

    #[test]
    fn short_samples_count_as_much_as_long_ones() {
        let prefill: Vec<_> = H200_70B_PREFILL
            .iter()
            .map(|&(n_new, n_ctx, layers, ms)| PrefillSample {
                n_new,
                n_ctx,
                layers,
                seconds: ms / 1e3,
            })
            .collect();
        let decode: Vec<_> = H200_70B_DECODE
            .iter()
            .map(|&(batch, sum_ctx, layers, ms)| DecodeSample {
                batch,
                sum_ctx,
                layers,
                seconds: ms / 1e3,
            })
            .collect();
        let transfer = [
            TransferSample {
                bytes: 1 << 19,
                seconds: 21e-6,
            },
            TransferSample {
                bytes: 1 << 26,
                seconds: 1.24e-3,
            },
        ];
        let p = fit_profile(&prefill, &decode, &transfer, None).unwrap();
        // The model's form misses the GEMMs' falling efficiency past 4k tokens, so no fit is
        // exact; on absolute error the 512-token steps came out +63% and +62%.
        for s in &prefill {
            let fit = p.prefill_s(s.n_new, s.n_ctx, s.layers);
            let rel = fit / s.seconds - 1.0;
            assert!(rel.abs() < 0.2, "{s:?}: fitted {fit} ({rel:+.3})");
        }
        // Batch 4 runs slower than 16 on that executor (its GEMV path); no line fits it.
        for s in decode.iter().filter(|s| s.batch != 4) {
            let fit = p.decode_s(s.batch, s.sum_ctx, s.layers);
            let rel = fit / s.seconds - 1.0;
            assert!(rel.abs() < 0.1, "{s:?}: fitted {fit} ({rel:+.3})");
        }
    }

    #[test]
    fn coefficients_never_negative() {
        // Times that fall with size would need a negative slope.
        let prefill: Vec<_> = (1..6)
            .map(|i| PrefillSample {
                n_new: i * 100,
                n_ctx: 0,
                layers: 1,
                seconds: 1.0 / i as f64,
            })
            .collect();
        let decode: Vec<_> = (1..6)
            .map(|i| DecodeSample {
                batch: i,
                sum_ctx: i * 10,
                layers: 1,
                seconds: 1.0,
            })
            .collect();
        let transfer = [
            TransferSample {
                bytes: 10,
                seconds: 1.0,
            },
            TransferSample {
                bytes: 20,
                seconds: 1.0,
            },
        ];
        let p = fit_profile(&prefill, &decode, &transfer, None).unwrap();
        let c = [
            p.prefill.a0,
            p.prefill.a1,
            p.prefill.a2,
            p.decode.d0,
            p.decode.d1,
            p.decode.d2,
            p.transfer.t0,
        ];
        assert!(c.iter().all(|&x| x >= 0.0), "{c:?}");
        assert!((p.decode_layer_s(3, 30) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rejects_too_few_and_bad_samples() {
        let d = DecodeSample {
            batch: 1,
            sum_ctx: 1,
            layers: 1,
            seconds: 1.0,
        };
        let t = TransferSample {
            bytes: 1,
            seconds: 1.0,
        };
        assert!(matches!(
            fit_profile(&[], &[d; 3], &[t; 2], None),
            Err(FitError::TooFew {
                kind: "prefill",
                ..
            })
        ));
        let mut bad = [PrefillSample {
            n_new: 1,
            n_ctx: 0,
            layers: 1,
            seconds: 1.0,
        }; 3];
        bad[1].seconds = f64::NAN;
        assert_eq!(
            fit_profile(&bad, &[d; 3], &[t; 2], None),
            Err(FitError::BadSample {
                kind: "prefill",
                index: 1
            })
        );
    }
}
