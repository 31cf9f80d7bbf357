//! Matrix products through cuBLAS: bf16 operands, f32 accumulation, f32 or bf16 results.
//!
//! Every product here is `Y[rows, out] (+)= X[rows, in] · W[out, in]ᵀ` on row-major data (a
//! linear layer with HF's `[out, in]` weights). In cuBLAS's column-major terms that is
//! `Yᵀ = op(W)·Xᵀ` with `W` read transposed: m = out, n = rows, k = in.

use super::driver::{Stream, dev};
use crate::exec::ExecError;
use cudarc::cublas::{result as cublas, sys};
use std::ffi::c_void;

/// The element type of a product's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Out {
    F32,
    Bf16,
}

/// A cuBLAS handle bound to the compute stream.
pub(crate) struct Blas {
    handle: sys::cublasHandle_t,
}

// SAFETY: the handle is used by one thread at a time (the executor's).
unsafe impl Send for Blas {}

impl Blas {
    pub(crate) fn new(stream: &Stream) -> Result<Blas, ExecError> {
        let handle = cublas::create_handle().map_err(|e| dev("starting cuBLAS", e))?;
        // SAFETY: live handle and stream (cuBLAS's stream type is the driver's).
        unsafe { cublas::set_stream(handle, stream.0 as sys::cudaStream_t) }
            .map_err(|e| dev("binding cuBLAS to the compute stream", e))?;
        Ok(Blas { handle })
    }

    /// `y = x · wᵀ` (`accumulate`: `y += x · wᵀ`); `x` is `[rows, k]` bf16, `w` is `[m, k]`
    /// bf16, `y` is `[rows, m]` of `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        y: u64,
        out: Out,
        x: u64,
        w: u64,
        rows: usize,
        m: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<(), ExecError> {
        if rows == 0 {
            return Ok(());
        }
        let alpha = 1.0f32;
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        let c_type = match out {
            Out::F32 => sys::cudaDataType::CUDA_R_32F,
            Out::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        };
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| ExecError::Device(format!("GEMM dimension {v} too large")))
        };
        // SAFETY: the caller passes live device buffers of the stated shapes; alpha and beta
        // are host scalars read during the call.
        unsafe {
            cublas::gemm_ex(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                dim(m)?,
                dim(rows)?,
                dim(k)?,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                dim(k)?,
                x as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                dim(k)?,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                c_type,
                dim(m)?,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| dev(&format!("GEMM {rows}x{m}x{k}"), e))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { cublas::destroy_handle(self.handle) };
    }
}
