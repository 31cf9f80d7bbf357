//! The decode GEMVs and which kernel takes a step of a few rows. By default the CUDA-core
//! kernel of `decode.cu` takes one-row steps and cuBLAS every wider one ([`Kernels::gemv_fits`]
//! says no): on an H100 at 4096 tokens of context, cuBLAS took 2, 3, 4 and 8 rows in 7.56,
//! 7.96, 8.27 and 9.78 ms, the CUDA-core kernels 2–4 rows in 7.60, 9.62 and 12.03 ms, and the
//! tensor-core ones of `gemv_tc.cu` 2, 3, 4 and 8 rows in 8.88, 9.54, 10.13 and 12.85 ms
//! (`docs/benchmarks/gpu/small-batch-h100-5.log`).
//!
//! Two variables choose otherwise, for measuring one choice against another on a GPU:
//! `STRATA_GEMV_ROWS=n` lets the GEMV kernels take up to `n` rows (at most [`GEMV_ROWS`], or
//! [`TC_ROWS`] with the tensor-core kernels in), and `STRATA_GEMV_TC=1` gives steps of 2 or
//! more rows to the tensor-core kernels (then up to [`TC_ROWS`] rows unless capped),
//! `STRATA_GEMV_TC=all` one-row steps too.

use super::{Kernels, NORM_THREADS, NORM_WARPS, launch_early};
use crate::exec::ExecError;
use crate::exec::cuda::driver::Stream;
use cudarc::driver::sys;
use std::ffi::c_void;

/// The most rows of the CUDA-core GEMV kernels (`GEMV_ROWS` in `decode.cu`).
pub(crate) const GEMV_ROWS: usize = 4;
/// The rows the GEMV kernels take by default: one (cuBLAS is faster from two; module doc).
const DEFAULT_ROWS: usize = 1;
/// The most rows of the tensor-core GEMV kernels (`TC_ROWS` in `gemv_tc.cu`).
pub(crate) const TC_ROWS: usize = 8;
/// Output rows per tensor-core CTA (one m16n8k16 tile).
const TC_TILE: usize = 16;
/// Padding after each normalized row in the fused tensor-core kernels' shared memory.
const TC_XPAD: usize = 32;

/// The GEMV kernels and the choices between them.
pub(crate) struct GemvKernels {
    simt: sys::CUfunction,
    simt_rms: sys::CUfunction,
    simt_rms_swiglu: sys::CUfunction,
    tc: sys::CUfunction,
    tc_rms: sys::CUfunction,
    tc_rms_swiglu: sys::CUfunction,
    /// Dynamic shared memory a fused CUDA-core CTA may take (its normalized rows).
    simt_smem_max: usize,
    /// The same for a fused tensor-core CTA.
    tc_smem_max: usize,
    /// The fewest rows the tensor-core kernels take (usize::MAX: none).
    tc_from: usize,
    /// The most rows a step computes with a GEMV kernel; more go through cuBLAS.
    rows: usize,
}

impl GemvKernels {
    /// Looks the kernels up with `f`; `tc_capable`: the device has bf16 mma (sm_80 on).
    pub(super) fn load(
        f: &dyn Fn(&str) -> Result<sys::CUfunction, ExecError>,
        smem_optin: &dyn Fn(sys::CUfunction, &str) -> Result<usize, ExecError>,
        tc_capable: bool,
    ) -> Result<GemvKernels, ExecError> {
        let (simt_rms, simt_rms_swiglu) = (f("gemv_rms")?, f("gemv_rms_swiglu")?);
        let (tc_rms, tc_rms_swiglu) = (f("gemv_rms_tc")?, f("gemv_rms_swiglu_tc")?);
        let simt_smem_max =
            smem_optin(simt_rms, "gemv_rms")?.min(smem_optin(simt_rms_swiglu, "gemv_rms_swiglu")?);
        let tc_smem_max = smem_optin(tc_rms, "gemv_rms_tc")?
            .min(smem_optin(tc_rms_swiglu, "gemv_rms_swiglu_tc")?);
        let tc_from = if tc_capable {
            tc_from_env()?
        } else {
            usize::MAX
        };
        let (most, default) = if tc_from <= TC_ROWS {
            (TC_ROWS, TC_ROWS)
        } else {
            (GEMV_ROWS, DEFAULT_ROWS)
        };
        Ok(GemvKernels {
            simt: f("gemv_bf16")?,
            simt_rms,
            simt_rms_swiglu,
            tc: f("gemv_tc")?,
            tc_rms,
            tc_rms_swiglu,
            simt_smem_max,
            tc_smem_max,
            tc_from,
            rows: rows_from_env(most, default)?,
        })
    }

    fn tc_takes(&self, rows: usize) -> bool {
        rows >= self.tc_from
    }

    /// Dynamic shared memory of a fused kernel for `rows` normalized rows of `k`.
    fn norm_smem(&self, rows: usize, k: usize) -> usize {
        if self.tc_takes(rows) {
            rows * (k + TC_XPAD) * 2
        } else {
            rows * k * 2
        }
    }
}

/// `STRATA_GEMV_TC`: `0` (the default: never), `1` (the tensor-core kernels from 2 rows) or
/// `all` (from 1 row), as the fewest rows they take.
fn tc_from_env() -> Result<usize, ExecError> {
    match std::env::var("STRATA_GEMV_TC") {
        Err(_) => Ok(usize::MAX),
        Ok(v) => match v.trim() {
            "0" => Ok(usize::MAX),
            "1" => Ok(2),
            "all" => Ok(1),
            _ => Err(ExecError::Device(format!(
                "STRATA_GEMV_TC={v:?}: expected 0, 1 or all"
            ))),
        },
    }
}

/// `STRATA_GEMV_ROWS` (0 to `most`, else `default`): the most rows a step computes with the
/// GEMV kernels, for measuring them against cuBLAS at small batches.
fn rows_from_env(most: usize, default: usize) -> Result<usize, ExecError> {
    match std::env::var("STRATA_GEMV_ROWS") {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n <= most => Ok(n),
            _ => Err(ExecError::Device(format!(
                "STRATA_GEMV_ROWS={v:?}: expected a number of rows from 0 to {most}"
            ))),
        },
    }
}

impl Kernels {
    /// Whether a GEMV kernel takes `rows` rows of `k` (else cuBLAS computes the product).
    pub(crate) fn gemv_fits(&self, rows: usize, k: usize) -> bool {
        rows <= self.gemv.rows && k.is_multiple_of(8)
    }

    /// Whether `gemv_rms` and `gemv_rms_swiglu` take `rows` rows of `k` (the normalized rows
    /// fit in shared memory).
    pub(crate) fn norm_gemv_fits(&self, rows: usize, k: usize) -> bool {
        let most = if self.gemv.tc_takes(rows) {
            self.gemv.tc_smem_max
        } else {
            self.gemv.simt_smem_max
        };
        self.gemv_fits(rows, k) && self.gemv.norm_smem(rows, k) <= most
    }

    /// The narrowest decode batch that goes through cuBLAS rather than the GEMV kernels (none
    /// when every batch does). With the tensor-core kernels in, the change from the CUDA-core
    /// kernel to them at 2 rows is not a regime of its own here.
    pub(crate) fn decode_wide_from(&self) -> Option<usize> {
        (self.gemv.rows > 0).then_some(self.gemv.rows + 1)
    }

    /// The most rows the GEMV kernels take as loaded (tests cover each).
    #[cfg(test)]
    pub(crate) fn gemv_rows(&self) -> usize {
        self.gemv.rows
    }

    /// Keeps the tensor-core kernels out (`false`) or lets them in, as `STRATA_GEMV_TC` does;
    /// the rows the GEMV kernels take become that choice's most.
    #[cfg(test)]
    pub(crate) fn set_gemv_tc(&mut self, on: bool) {
        (self.gemv.tc_from, self.gemv.rows) = if on {
            (2, TC_ROWS)
        } else {
            (usize::MAX, GEMV_ROWS)
        };
    }

    /// `y (+)= x · wᵀ` for `rows` rows where [`Kernels::gemv_fits`]; `k` a multiple of 8.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv_bf16(
        &self,
        s: &Stream,
        y: u64,
        x: u64,
        w: u64,
        rows: usize,
        m: usize,
        k: usize,
        out_bf16: bool,
        accumulate: bool,
    ) -> Result<(), ExecError> {
        debug_assert!(self.gemv_fits(rows, k));
        let tc = self.gemv.tc_takes(rows);
        let (f, name, grid, block) = if tc {
            (self.gemv.tc, "gemv_tc", m.div_ceil(TC_TILE), NORM_THREADS)
        } else {
            (self.gemv.simt, "gemv_bf16", m.div_ceil(8), 256)
        };
        let (rows, m_, k_) = (rows as i32, m as i32, k as i32);
        let (ob, acc) = (out_bf16 as i32, accumulate as i32);
        launch_early(
            self.early,
            f,
            name,
            (grid as u32, 1, 1),
            block,
            0,
            s,
            args!(y, x, w, rows, m_, k_, ob, acc),
        )
    }

    /// `y = rms_norm(x) · wᵀ` for `rows` rows of the f32 residual `x` (rows `row_idx[..rows]`
    /// of it when `row_idx` is not 0), in one kernel: bit for bit (`gather_rows`,) `rms_norm`
    /// then `gemv_bf16` (no accumulate). Only where [`Kernels::norm_gemv_fits`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv_rms(
        &self,
        s: &Stream,
        y: u64,
        x: u64,
        row_idx: u64,
        norm_w: u64,
        w: u64,
        rows: usize,
        m: usize,
        k: usize,
        eps: f32,
        out_bf16: bool,
    ) -> Result<(), ExecError> {
        let kernels = [
            (self.gemv.tc_rms, "gemv_rms_tc"),
            (self.gemv.simt_rms, "gemv_rms"),
        ];
        let (rows_, m_, k_, ob) = (rows as i32, m as i32, k as i32, out_bf16 as i32);
        let args = args!(y, x, row_idx, norm_w, w, rows_, m_, k_, eps, ob);
        self.launch_norm(s, kernels, rows, m, k, args)
    }

    /// `act = silu(g) · u` with `[g | u] = rms_norm(x) · w_gate_upᵀ` rounded to bf16 (`w_gate_up`
    /// is `[2·ff, k]`), in one kernel: bit for bit `gemv_rms` into bf16 then `silu_mul`. Only
    /// where [`Kernels::norm_gemv_fits`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemv_rms_swiglu(
        &self,
        s: &Stream,
        act: u64,
        x: u64,
        norm_w: u64,
        w_gate_up: u64,
        rows: usize,
        ff: usize,
        k: usize,
        eps: f32,
    ) -> Result<(), ExecError> {
        let kernels = [
            (self.gemv.tc_rms_swiglu, "gemv_rms_swiglu_tc"),
            (self.gemv.simt_rms_swiglu, "gemv_rms_swiglu"),
        ];
        let (rows_, ff_, k_) = (rows as i32, ff as i32, k as i32);
        let args = args!(act, x, norm_w, w_gate_up, rows_, ff_, k_, eps);
        self.launch_norm(s, kernels, rows, ff, k, args)
    }

    /// Launches a fused norm-and-GEMV kernel over `m` outputs: `kernels[0]` (tensor cores)
    /// where it takes `rows` rows, else `kernels[1]` (CUDA cores), with the normalized rows'
    /// shared memory.
    fn launch_norm(
        &self,
        s: &Stream,
        kernels: [(sys::CUfunction, &str); 2],
        rows: usize,
        m: usize,
        k: usize,
        args: &mut [*mut c_void],
    ) -> Result<(), ExecError> {
        debug_assert!(self.norm_gemv_fits(rows, k));
        let tc = self.gemv.tc_takes(rows);
        let ((f, name), grid) = if tc {
            (kernels[0], m.div_ceil(TC_TILE))
        } else {
            (kernels[1], m.div_ceil(NORM_WARPS))
        };
        let smem = self.gemv.norm_smem(rows, k) as u32;
        launch_early(
            self.early,
            f,
            name,
            (grid as u32, 1, 1),
            NORM_THREADS,
            smem,
            s,
            args,
        )
    }
}
