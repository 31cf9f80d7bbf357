//! The kernels of `kernels.cu`, compiled by NVRTC at start into machine code for the device's
//! own architecture (`sm_90` on an H200) with the model's shape as constants, and their typed
//! launches. Every launch's result is checked.

use super::driver::{Stream, dev};
use crate::exec::ExecError;
use cudarc::driver::{result, sys};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{CString, c_void};

const SOURCE: &str = include_str!("kernels.cu");

/// The shape the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) head_dim: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) block_tokens: usize,
}

impl Shape {
    /// Refuses shapes the kernels do not cover, saying why.
    pub(crate) fn check(&self) -> Result<(), String> {
        let d = self.head_dim;
        if !(d.is_multiple_of(16) && (16..=128).contains(&d) && (d / 8).is_power_of_two()) {
            return Err(format!(
                "head_dim {d}: the cuda kernels take 16, 32, 64 or 128"
            ));
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} heads do not share {} kv heads evenly",
                self.heads, self.kv_heads
            ));
        }
        if self.block_tokens == 0 {
            return Err("block_tokens must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub(crate) fn qkv_width(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}

/// One step item's place in the activations and the block tables, as the kernels read it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ItemMeta {
    pub(crate) row0: i32,
    pub(crate) rows: i32,
    pub(crate) start_pos: i32,
    /// First entry of the item's blocks in each layer's table.
    pub(crate) toff: i32,
}

/// Table entries with this bit set name a staging slot; without it, a GPU-pool block.
pub(crate) const STAGED: u32 = 0x8000_0000;
/// Steps of at most this many rows multiply by the weights with `gemv_bf16` (as in the source).
pub(crate) const GEMV_ROWS: usize = 4;
/// Query rows per prefill-attention CTA.
pub(crate) const PREFILL_ROWS: usize = 64;

/// The compiled module and its functions.
pub(crate) struct Kernels {
    module: sys::CUmodule,
    fill_uniform: sys::CUfunction,
    fill_value: sys::CUfunction,
    embed_gather: sys::CUfunction,
    gather_rows: sys::CUfunction,
    rms_norm: sys::CUfunction,
    rope_qkv: sys::CUfunction,
    kv_write: sys::CUfunction,
    silu_mul: sys::CUfunction,
    attn_prefill: sys::CUfunction,
    gemv_bf16: sys::CUfunction,
    attn_decode: sys::CUfunction,
    attn_decode_reduce: sys::CUfunction,
    argmax_rows: sys::CUfunction,
    sample_top_p: sys::CUfunction,
    pub(crate) shape: Shape,
}

// SAFETY: module and function handles are usable from any thread with the context current.
unsafe impl Send for Kernels {}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

fn compile(arch: (i32, i32), shape: &Shape) -> Result<Vec<u8>, ExecError> {
    let src = CString::new(SOURCE).expect("kernel source has no NUL");
    let name = CString::new("strata_kernels.cu").expect("no NUL");
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| dev("NVRTC", e))?;
    let opts = vec![
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "--std=c++17".into(),
        "--use_fast_math".into(),
        format!("-DHEAD_DIM={}", shape.head_dim),
        format!("-DHEADS={}", shape.heads),
        format!("-DKV_HEADS={}", shape.kv_heads),
        format!("-DBLOCK_TOKENS={}", shape.block_tokens),
    ];
    // SAFETY: `prog` is live until destroyed below; buffers are sized by NVRTC's own answers.
    unsafe {
        let compiled = nvrtc::compile_program(prog, &opts);
        let res = match compiled {
            Err(e) => {
                let log = nvrtc::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log
                    .iter()
                    .map(|&c| c as u8)
                    .take_while(|&c| c != 0)
                    .collect();
                Err(ExecError::Device(format!(
                    "compiling the kernels for sm_{}{}: {e}\n{}",
                    arch.0,
                    arch.1,
                    String::from_utf8_lossy(&log)
                )))
            }
            Ok(()) => {
                let mut size = 0usize;
                nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| dev("NVRTC cubin size", e))
                    .and_then(|()| {
                        let mut cubin = vec![0u8; size];
                        nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut _)
                            .result()
                            .map(|()| cubin)
                            .map_err(|e| dev("NVRTC cubin", e))
                    })
            }
        };
        let _ = nvrtc::destroy_program(prog);
        res
    }
}

impl Kernels {
    /// Compiles and loads the kernels for the current context's device.
    pub(crate) fn load(arch: (i32, i32), shape: Shape) -> Result<Kernels, ExecError> {
        shape.check().map_err(|reason| ExecError::Config {
            executor: "cuda",
            reason,
        })?;
        let cubin = compile(arch, &shape)?;
        // SAFETY: a complete cubin image from NVRTC.
        let module = unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
            .map_err(|e| dev("loading the kernels", e))?;
        let f = |name: &str| {
            // SAFETY: `module` is loaded; names are the kernels' extern "C" names.
            unsafe { result::module::get_function(module, CString::new(name).expect("no NUL")) }
                .map_err(|e| dev(&format!("kernel {name}"), e))
        };
        Ok(Kernels {
            fill_uniform: f("fill_uniform")?,
            fill_value: f("fill_value")?,
            embed_gather: f("embed_gather")?,
            gather_rows: f("gather_rows")?,
            rms_norm: f("rms_norm")?,
            rope_qkv: f("rope_qkv")?,
            kv_write: f("kv_write")?,
            silu_mul: f("silu_mul")?,
            attn_prefill: f("attn_prefill")?,
            gemv_bf16: f("gemv_bf16")?,
            attn_decode: f("attn_decode")?,
            attn_decode_reduce: f("attn_decode_reduce")?,
            argmax_rows: f("argmax_rows")?,
            sample_top_p: f("sample_top_p")?,
            module,
            shape,
        })
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        // SAFETY: loaded once, unloaded once.
        let _ = unsafe { result::module::unload(self.module) };
    }
}

/// Launches `f` with `args` (pointers to each argument's value, alive for the call).
fn launch(
    f: sys::CUfunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    stream: &Stream,
    args: &mut [*mut c_void],
) -> Result<(), ExecError> {
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    // SAFETY: the typed wrappers below pass exactly the kernel's parameters, in order, as
    // pointers to values of the kernel's types; device pointers are live buffers.
    unsafe { result::launch_kernel(f, grid, (block, 1, 1), 0, stream.0, args) }
        .map_err(|e| dev(&format!("launching {name}"), e))
}

macro_rules! args {
    ($($a:ident),*) => { &mut [$(&$a as *const _ as *mut c_void),*] };
}

fn grid_for(n: u64, block: u32) -> u32 {
    n.div_ceil(block as u64).clamp(1, 65_535 * 16) as u32
}

/// Typed launches. Pointers are device addresses (`u64`).
#[allow(clippy::too_many_arguments)] // each mirrors its kernel's parameter list
impl Kernels {
    pub(crate) fn fill_uniform(
        &self,
        s: &Stream,
        out: u64,
        n: u64,
        seed: u64,
        scale: f32,
    ) -> Result<(), ExecError> {
        launch(
            self.fill_uniform,
            "fill_uniform",
            (grid_for(n, 256), 1, 1),
            256,
            s,
            args!(out, n, seed, scale),
        )
    }

    pub(crate) fn fill_value(&self, s: &Stream, out: u64, n: u64, v: f32) -> Result<(), ExecError> {
        launch(
            self.fill_value,
            "fill_value",
            (grid_for(n, 256), 1, 1),
            256,
            s,
            args!(out, n, v),
        )
    }

    pub(crate) fn embed_gather(
        &self,
        s: &Stream,
        out: u64,
        embed: u64,
        tokens: u64,
        rows: usize,
        hidden: i32,
    ) -> Result<(), ExecError> {
        launch(
            self.embed_gather,
            "embed_gather",
            (rows as u32, 1, 1),
            256,
            s,
            args!(out, embed, tokens, hidden),
        )
    }

    pub(crate) fn gather_rows(
        &self,
        s: &Stream,
        out: u64,
        x: u64,
        rows_idx: u64,
        n: usize,
        hidden: i32,
    ) -> Result<(), ExecError> {
        launch(
            self.gather_rows,
            "gather_rows",
            (n as u32, 1, 1),
            256,
            s,
            args!(out, x, rows_idx, hidden),
        )
    }

    pub(crate) fn rms_norm(
        &self,
        s: &Stream,
        out: u64,
        x: u64,
        w: u64,
        rows: usize,
        hidden: i32,
        eps: f32,
    ) -> Result<(), ExecError> {
        launch(
            self.rms_norm,
            "rms_norm",
            (rows as u32, 1, 1),
            512,
            s,
            args!(out, x, w, hidden, eps),
        )
    }

    pub(crate) fn rope_qkv(
        &self,
        s: &Stream,
        qkv: u64,
        bias: u64,
        positions: u64,
        cos: u64,
        sin: u64,
        q: u64,
        rows: usize,
    ) -> Result<(), ExecError> {
        launch(
            self.rope_qkv,
            "rope_qkv",
            (rows as u32, 1, 1),
            256,
            s,
            args!(qkv, bias, positions, cos, sin, q),
        )
    }

    pub(crate) fn kv_write(
        &self,
        s: &Stream,
        qkv: u64,
        row_item: u64,
        items: u64,
        table: u64,
        pool: u64,
        staging: u64,
        rows: usize,
    ) -> Result<(), ExecError> {
        launch(
            self.kv_write,
            "kv_write",
            (rows as u32, 1, 1),
            256,
            s,
            args!(qkv, row_item, items, table, pool, staging),
        )
    }

    pub(crate) fn silu_mul(
        &self,
        s: &Stream,
        act: u64,
        gu: u64,
        ff: i32,
        rows: usize,
    ) -> Result<(), ExecError> {
        let n = rows as u64 * ff as u64;
        launch(
            self.silu_mul,
            "silu_mul",
            (grid_for(n, 256), 1, 1),
            256,
            s,
            args!(act, gu, ff, n),
        )
    }

    pub(crate) fn attn_prefill(
        &self,
        s: &Stream,
        att: u64,
        q: u64,
        tiles: u64,
        n_tiles: usize,
        items: u64,
        table: u64,
        pool: u64,
        staging: u64,
        scale_log2: f32,
    ) -> Result<(), ExecError> {
        let grid = (n_tiles as u32, self.shape.heads as u32, 1);
        launch(
            self.attn_prefill,
            "attn_prefill",
            grid,
            128,
            s,
            args!(att, q, tiles, items, table, pool, staging, scale_log2),
        )
    }

    pub(crate) fn attn_decode(
        &self,
        s: &Stream,
        part_o: u64,
        part_ml: u64,
        q: u64,
        item_ids: u64,
        n_items: usize,
        items: u64,
        table: u64,
        pool: u64,
        staging: u64,
        part_keys: i32,
        parts: i32,
        scale_log2: f32,
    ) -> Result<(), ExecError> {
        let grid = (parts as u32, self.shape.kv_heads as u32, n_items as u32);
        launch(
            self.attn_decode,
            "attn_decode",
            grid,
            128,
            s,
            args!(
                part_o, part_ml, q, item_ids, items, table, pool, staging, part_keys, parts,
                scale_log2
            ),
        )
    }

    pub(crate) fn attn_decode_reduce(
        &self,
        s: &Stream,
        att: u64,
        part_o: u64,
        part_ml: u64,
        item_ids: u64,
        n_items: usize,
        items: u64,
        parts: i32,
    ) -> Result<(), ExecError> {
        let grid = (n_items as u32, self.shape.heads as u32, 1);
        launch(
            self.attn_decode_reduce,
            "attn_decode_reduce",
            grid,
            self.shape.head_dim as u32,
            s,
            args!(att, part_o, part_ml, item_ids, items, parts),
        )
    }

    /// `y (+)= x · wᵀ` for at most [`GEMV_ROWS`] rows; `k` a multiple of 8.
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
        debug_assert!(rows <= GEMV_ROWS && k.is_multiple_of(8));
        let (rows, m_, k_) = (rows as i32, m as i32, k as i32);
        let (ob, acc) = (out_bf16 as i32, accumulate as i32);
        launch(
            self.gemv_bf16,
            "gemv_bf16",
            (m.div_ceil(8) as u32, 1, 1),
            256,
            s,
            args!(y, x, w, rows, m_, k_, ob, acc),
        )
    }

    pub(crate) fn argmax_rows(
        &self,
        s: &Stream,
        out: u64,
        logits: u64,
        rows: usize,
        vocab: i32,
    ) -> Result<(), ExecError> {
        launch(
            self.argmax_rows,
            "argmax_rows",
            (rows as u32, 1, 1),
            1024,
            s,
            args!(out, logits, vocab),
        )
    }

    pub(crate) fn sample_top_p(
        &self,
        s: &Stream,
        out: u64,
        logits: u64,
        rows: usize,
        vocab: i32,
        temps: u64,
        top_ps: u64,
        us: u64,
    ) -> Result<(), ExecError> {
        launch(
            self.sample_top_p,
            "sample_top_p",
            (rows as u32, 1, 1),
            1024,
            s,
            args!(out, logits, vocab, temps, top_ps, us),
        )
    }
}
