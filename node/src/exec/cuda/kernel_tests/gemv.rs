//! The fused decode GEMVs (`gemv_rms`, `gemv_rms_swiglu`) bit for bit against the unfused
//! kernels they replace, and against f64 references: the CUDA-core kernels for 1 to
//! `GEMV_ROWS` rows, then with the tensor-core ones in (2 to `TC_ROWS` rows).

use super::{
    SMALL, bits_bf16, bits_f32, down_bf16, down_f32, env, poisoned, randn, rel_err, to_bf16, up,
};
use crate::exec::cuda::kernels::gemv::TC_ROWS;
use crate::model::rng::Rng;
use half::bf16;

/// The normalized rows `bf16(x / rms(x) · g)`, computed in f64 and rounded as the kernels round.
fn normed_rows(x: &[f32], g: &[f32], rows: usize, k: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(
            xr.iter()
                .zip(g)
                .map(|(&v, &w)| bf16::from_f64(v as f64 * inv * w as f64).to_f64()),
        );
    }
    out
}

#[test]
fn gemv_rms_is_rms_norm_then_gemv_bit_for_bit_rows_in_place_or_gathered() {
    let Some(mut e) = env(SMALL) else { return };
    let mut rng = Rng::derive(15, 0);
    let eps = 1e-5f32;
    // k not a multiple of the 512 threads nor of a tensor-core group (32); 4096 (8B); 8192 × 4
    // rows needs the opt-in (64 KiB). m not a multiple of a tensor-core tile (16).
    for (k, m, tc) in [
        (200usize, 37usize, false),
        (4096, 40, false),
        (8192, 19, false),
    ]
    .into_iter()
    .chain([(200, 37, true), (4096, 40, true), (8192, 19, true)])
    {
        e.k.set_gemv_tc(tc);
        let most = e.k.gemv_rows();
        assert!(e.k.norm_gemv_fits(most, k), "{most} rows of {k} fit");
        let x = randn(&mut rng, TC_ROWS * k, 3.0);
        let g = randn(&mut rng, k, 1.5);
        let w = to_bf16(&randn(&mut rng, m * k, 1.0));
        let (xb, gb, wb) = (up(&x), up(&g), up(&w));
        let normed_ref = normed_rows(&x, &g, TC_ROWS, k, eps as f64);
        for rows in 1..=most {
            let normed = poisoned(rows * k * 2);
            e.k.rms_norm(&e.s, normed.ptr(), xb.ptr(), gb.ptr(), rows, k as i32, eps)
                .unwrap();
            let (want_f, want_b) = (poisoned(rows * m * 4), poisoned(rows * m * 2));
            e.k.gemv_bf16(
                &e.s,
                want_f.ptr(),
                normed.ptr(),
                wb.ptr(),
                rows,
                m,
                k,
                false,
                false,
            )
            .unwrap();
            e.k.gemv_bf16(
                &e.s,
                want_b.ptr(),
                normed.ptr(),
                wb.ptr(),
                rows,
                m,
                k,
                true,
                false,
            )
            .unwrap();
            let (got_f, got_b) = (poisoned(rows * m * 4), poisoned(rows * m * 2));
            e.k.gemv_rms(
                &e.s,
                got_f.ptr(),
                xb.ptr(),
                0,
                gb.ptr(),
                wb.ptr(),
                rows,
                m,
                k,
                eps,
                false,
            )
            .unwrap();
            e.k.gemv_rms(
                &e.s,
                got_b.ptr(),
                xb.ptr(),
                0,
                gb.ptr(),
                wb.ptr(),
                rows,
                m,
                k,
                eps,
                true,
            )
            .unwrap();
            e.s.sync("test").unwrap();
            let n = rows * m;
            let mut want = vec![0f64; n];
            for r in 0..rows {
                for j in 0..m {
                    want[r * m + j] = (0..k)
                        .map(|i| normed_ref[r * k + i] * w[j * k + i].to_f64())
                        .sum();
                }
            }
            let ef = rel_err(&down_f32(&got_f, n), &want, "gemv_rms f32");
            let eb = rel_err(&down_bf16(&got_b, n), &want, "gemv_rms bf16");
            assert!(
                ef < 2e-3 && eb < 5e-3,
                "k {k}, {rows} rows (tensor cores {tc}): errors {ef:e} {eb:e}"
            );
            assert_eq!(
                bits_f32(&got_f, n),
                bits_f32(&want_f, n),
                "k {k}, {rows} rows (tensor cores {tc}), f32"
            );
            assert_eq!(
                bits_bf16(&got_b, n),
                bits_bf16(&want_b, n),
                "k {k}, {rows} rows (tensor cores {tc}), bf16"
            );

            // Rows picked by index (the lm_head's): as gather_rows, rms_norm, gemv_bf16.
            let idx: Vec<i32> = (0..rows as i32)
                .map(|r| (r * 3 + 1) % TC_ROWS as i32)
                .collect();
            let ib = up(&idx);
            let gathered = poisoned(rows * k * 4);
            e.k.gather_rows(&e.s, gathered.ptr(), xb.ptr(), ib.ptr(), rows, k as i32)
                .unwrap();
            e.k.rms_norm(
                &e.s,
                normed.ptr(),
                gathered.ptr(),
                gb.ptr(),
                rows,
                k as i32,
                eps,
            )
            .unwrap();
            let (want_i, got_i) = (poisoned(n * 4), poisoned(n * 4));
            e.k.gemv_bf16(
                &e.s,
                want_i.ptr(),
                normed.ptr(),
                wb.ptr(),
                rows,
                m,
                k,
                false,
                false,
            )
            .unwrap();
            e.k.gemv_rms(
                &e.s,
                got_i.ptr(),
                xb.ptr(),
                ib.ptr(),
                gb.ptr(),
                wb.ptr(),
                rows,
                m,
                k,
                eps,
                false,
            )
            .unwrap();
            e.s.sync("test").unwrap();
            assert_eq!(
                bits_f32(&got_i, n),
                bits_f32(&want_i, n),
                "k {k}, rows {idx:?} (tensor cores {tc})"
            );
        }
    }
}

#[test]
fn gemv_rms_swiglu_is_gemv_rms_then_silu_mul_bit_for_bit() {
    let Some(mut e) = env(SMALL) else { return };
    let mut rng = Rng::derive(16, 0);
    let eps = 1e-5f32;
    for (k, ff, tc) in [
        (200usize, 37usize, false),
        (4096, 50, false),
        (8192, 19, false),
    ]
    .into_iter()
    .chain([(200, 37, true), (4096, 50, true), (8192, 19, true)])
    {
        e.k.set_gemv_tc(tc);
        let most = e.k.gemv_rows();
        assert!(e.k.norm_gemv_fits(most, k), "{most} rows of {k} fit");
        let x = randn(&mut rng, TC_ROWS * k, 3.0);
        let g = randn(&mut rng, k, 1.5);
        let w = to_bf16(&randn(&mut rng, 2 * ff * k, 1.0));
        let (xb, gb, wb) = (up(&x), up(&g), up(&w));
        let normed_ref = normed_rows(&x, &g, TC_ROWS, k, eps as f64);
        for rows in 1..=most {
            let gu = poisoned(rows * 2 * ff * 2);
            e.k.gemv_rms(
                &e.s,
                gu.ptr(),
                xb.ptr(),
                0,
                gb.ptr(),
                wb.ptr(),
                rows,
                2 * ff,
                k,
                eps,
                true,
            )
            .unwrap();
            let want_b = poisoned(rows * ff * 2);
            e.k.silu_mul(&e.s, want_b.ptr(), gu.ptr(), ff as i32, rows)
                .unwrap();
            let got = poisoned(rows * ff * 2);
            e.k.gemv_rms_swiglu(
                &e.s,
                got.ptr(),
                xb.ptr(),
                gb.ptr(),
                wb.ptr(),
                rows,
                ff,
                k,
                eps,
            )
            .unwrap();
            e.s.sync("test").unwrap();
            let dot = |r: usize, j: usize| -> f64 {
                (0..k)
                    .map(|i| normed_ref[r * k + i] * w[j * k + i].to_f64())
                    .sum()
            };
            let mut want = Vec::with_capacity(rows * ff);
            for r in 0..rows {
                for j in 0..ff {
                    let (gv, uv) = (dot(r, j), dot(r, ff + j));
                    want.push(gv / (1.0 + (-gv).exp()) * uv);
                }
            }
            let err = rel_err(&down_bf16(&got, rows * ff), &want, "gemv_rms_swiglu");
            assert!(
                err < 1e-2,
                "k {k}, {rows} rows (tensor cores {tc}): error {err:e}"
            );
            let n = rows * ff;
            assert_eq!(
                bits_bf16(&got, n),
                bits_bf16(&want_b, n),
                "k {k}, {rows} rows (tensor cores {tc})"
            );
        }
    }
}
