//! The register-tile micro-kernel under every matrix product of the executor: `R × 16` outputs
//! held in registers while the inner dimension streams by, one broadcast of the left operand and
//! one 16-wide row of the right operand per step. The x86 versions use intrinsics: left to the
//! auto-vectorizer, this loop nest was sometimes vectorized across rows with gathers and
//! scatters, five times slower.

/// Columns of a tile, of a packed weight panel, and of the attention's query lanes.
pub(crate) const LANES: usize = 16;

use super::simd::Simd;

/// The operands of `out (+)= A · B` over a strip of rows and one 16-column panel:
/// `A(r, i) = a[r·rs + i·ks]` (row-major with `ks = 1`, or read transposed with `rs = 1`),
/// `B(i, c) = b[i·ldb + c]`, `out(r, c) = out[r·ldo + c]`, for `i < k`, `c < 16`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strip<'a> {
    pub(crate) a: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) ks: usize,
    pub(crate) b: &'a [f32],
    pub(crate) ldb: usize,
    pub(crate) k: usize,
    pub(crate) ldo: usize,
    /// Add to `out` instead of overwriting it.
    pub(crate) accumulate: bool,
}

impl Strip<'_> {
    /// Panics unless every index an `R`-row tile reads or writes is in bounds: the safety
    /// argument of the intrinsic kernels.
    #[inline(always)]
    pub(crate) fn check<const R: usize>(&self, out: &[f32]) {
        assert!(R > 0 && (R - 1) * self.ldo + LANES <= out.len());
        if self.k > 0 {
            assert!((R - 1) * self.rs + (self.k - 1) * self.ks < self.a.len());
            assert!((self.k - 1) * self.ldb + LANES <= self.b.len());
        }
    }

    /// The same product for the rows from `r` on.
    #[inline(always)]
    fn skip_rows(&self, r: usize) -> Strip<'_> {
        Strip {
            a: &self.a[r * self.rs..],
            ..*self
        }
    }
}

/// One `R × 16` tile in plain Rust; `FUSED` where a fused multiply-add is one instruction
/// (elsewhere `mul_add` would be a library call).
#[inline(always)]
pub(crate) fn portable<const R: usize, const FUSED: bool>(s: &Strip<'_>, out: &mut [f32]) {
    s.check::<R>(out);
    let mut acc = [[0.0f32; LANES]; R];
    if s.accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&out[r * s.ldo..r * s.ldo + LANES]);
        }
    }
    for i in 0..s.k {
        let bi = &s.b[i * s.ldb..i * s.ldb + LANES];
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = s.a[r * s.rs + i * s.ks];
            for c in 0..LANES {
                acc[c] = if FUSED {
                    x.mul_add(bi[c], acc[c])
                } else {
                    x * bi[c] + acc[c]
                };
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * s.ldo..r * s.ldo + LANES].copy_from_slice(acc);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{LANES, Strip};
    use std::arch::x86_64::*;

    /// One `R × 16` tile, one zmm register per row.
    ///
    /// # Safety
    /// The CPU has avx512f, and `s.check::<R>(out)` passed.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn avx512<const R: usize>(s: &Strip<'_>, out: &mut [f32]) {
        let (a, b, o) = (s.a.as_ptr(), s.b.as_ptr(), out.as_mut_ptr());
        // SAFETY (every access below): in bounds by `Strip::check`, which the caller ran.
        let mut acc: [__m512; R] = std::array::from_fn(|r| {
            if s.accumulate {
                unsafe { _mm512_loadu_ps(o.add(r * s.ldo)) }
            } else {
                _mm512_setzero_ps()
            }
        });
        let mut steps = |rs: usize| {
            for i in 0..s.k {
                let bi = unsafe { _mm512_loadu_ps(b.add(i * s.ldb)) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(unsafe { *a.add(r * rs + i * s.ks) });
                    *acc = _mm512_fmadd_ps(x, bi, *acc);
                }
            }
        };
        // A transposed left operand gets a copy of the loop with constant row offsets.
        if s.rs == 1 {
            steps(1)
        } else {
            steps(s.rs)
        }
        for (r, acc) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(o.add(r * s.ldo), *acc) };
        }
    }

    /// One `R × 16` tile, two ymm registers per row.
    ///
    /// # Safety
    /// The CPU has avx2 and fma, and `s.check::<R>(out)` passed.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn avx2<const R: usize>(s: &Strip<'_>, out: &mut [f32]) {
        const HALF: usize = LANES / 2;
        let (a, b, o) = (s.a.as_ptr(), s.b.as_ptr(), out.as_mut_ptr());
        // SAFETY (every access below): in bounds by `Strip::check`, which the caller ran.
        let mut acc: [[__m256; 2]; R] = std::array::from_fn(|r| {
            if s.accumulate {
                let o = unsafe { o.add(r * s.ldo) };
                unsafe { [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(HALF))] }
            } else {
                [_mm256_setzero_ps(); 2]
            }
        });
        let mut steps = |rs: usize| {
            for i in 0..s.k {
                let bi = unsafe { b.add(i * s.ldb) };
                let (b0, b1) = unsafe { (_mm256_loadu_ps(bi), _mm256_loadu_ps(bi.add(HALF))) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(unsafe { *a.add(r * rs + i * s.ks) });
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
        };
        // A transposed left operand gets a copy of the loop with constant row offsets.
        if s.rs == 1 {
            steps(1)
        } else {
            steps(s.rs)
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = unsafe { o.add(r * s.ldo) };
            unsafe {
                _mm256_storeu_ps(o, acc[0]);
                _mm256_storeu_ps(o.add(HALF), acc[1]);
            }
        }
    }
}

/// `out (+)= A · B` for `rows` rows of `s`, in tiles as tall as the flavour `S` allows.
#[inline(always)]
pub(crate) fn rows_times_panel<S: Simd>(s: &Strip<'_>, rows: usize, out: &mut [f32]) {
    let mut r = 0;
    while r < rows {
        let (st, out) = (s.skip_rows(r), &mut out[r * s.ldo..]);
        let left = rows - r;
        r += if S::MAX_ROWS >= 8 && left >= 8 {
            S::tile::<8>(&st, out);
            8
        } else if left >= 4 {
            S::tile::<4>(&st, out);
            4
        } else if left >= 2 {
            S::tile::<2>(&st, out);
            2
        } else {
            S::tile::<1>(&st, out);
            1
        };
    }
}
