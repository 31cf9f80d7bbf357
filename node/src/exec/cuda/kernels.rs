//! The kernels of `kernels.cu`, `decode.cu` and `gemv_tc.cu`, compiled by NVRTC at start into
//! machine code for the device's own architecture (`sm_90` on an H200) with the model's shape
//! as constants, and their typed launches (the GEMVs' in [`gemv`]). Every launch's result is
//! checked.

use super::driver::{Stream, dev};
use crate::exec::ExecError;
use cudarc::driver::{result, sys};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{CString, c_void};

/// A kernel's argument list: pointers to the named locals. Defined before `gemv`, which uses it.
macro_rules! args {
    ($($a:ident),*) => { &mut [$(&$a as *const _ as *mut c_void),*] };
}

pub(crate) mod gemv;

/// The common kernels, then the decode ones and the tensor-core GEMVs (which use the former's
/// types and helpers).
const SOURCE: &str = concat!(
    include_str!("kernels.cu"),
    include_str!("decode.cu"),
    include_str!("gemv_tc.cu")
);

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
/// Threads of a CTA of the fused norm-and-GEMV kernels (`NORM_THREADS` in the source).
const NORM_THREADS: u32 = 512;
/// Output rows (warps) per CTA of the fused norm-and-GEMV kernels.
const NORM_WARPS: usize = NORM_THREADS as usize / 32;
/// Keys per tile of decode attention (`DEC_TILE` in the source): partitions are multiples.
pub(crate) const DECODE_TILE: usize = 32;
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
    rope_kv_write: sys::CUfunction,
    silu_mul: sys::CUfunction,
    attn_prefill: sys::CUfunction,
    gemv: gemv::GemvKernels,
    attn_decode: sys::CUfunction,
    argmax_rows: sys::CUfunction,
    sample_top_p: sys::CUfunction,
    pub(crate) shape: Shape,
    /// The device's streaming multiprocessors (decode attention sizes its grid by them).
    pub(crate) sms: usize,
    /// Programmatic dependent launch (sm_90+) for the decode chain's kernels.
    early: bool,
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
        let limits = DeviceLimits::query()?;
        let gemv = gemv::GemvKernels::load(
            &f,
            &|func, name| allow_dynamic_smem(func, name, &limits),
            arch.0 >= 8,
        )?;
        Ok(Kernels {
            fill_uniform: f("fill_uniform")?,
            fill_value: f("fill_value")?,
            embed_gather: f("embed_gather")?,
            gather_rows: f("gather_rows")?,
            rms_norm: f("rms_norm")?,
            rope_kv_write: f("rope_kv_write")?,
            silu_mul: f("silu_mul")?,
            attn_prefill: f("attn_prefill")?,
            gemv,
            attn_decode: f("attn_decode")?,
            argmax_rows: f("argmax_rows")?,
            sample_top_p: f("sample_top_p")?,
            module,
            shape,
            sms: limits.sms,
            early: arch.0 >= 9,
        })
    }
}

/// What the current context's device allows.
struct DeviceLimits {
    sms: usize,
    /// Shared memory a CTA may take with the opt-in.
    smem_optin: i32,
}

impl DeviceLimits {
    fn query() -> Result<DeviceLimits, ExecError> {
        use sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN as OPTIN,
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as SMS,
        };
        let what = "reading the device's limits";
        let mut device: sys::CUdevice = 0;
        // SAFETY: the caller's context is current; `device` is written.
        unsafe { sys::cuCtxGetDevice(&mut device) }
            .result()
            .map_err(|e| dev(what, e))?;
        // SAFETY: a device of the current context.
        let attr =
            |a| unsafe { result::device::get_attribute(device, a) }.map_err(|e| dev(what, e));
        Ok(DeviceLimits {
            sms: attr(SMS)?.max(1) as usize,
            smem_optin: attr(OPTIN)?,
        })
    }
}

/// Lets `f` take as much dynamic shared memory as the device allows a CTA beside the kernel's
/// static shared memory (above the default 48 KiB: the opt-in), and returns that amount.
fn allow_dynamic_smem(
    f: sys::CUfunction,
    name: &str,
    limits: &DeviceLimits,
) -> Result<usize, ExecError> {
    use sys::CUfunction_attribute::{
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYNAMIC,
        CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES as STATIC,
    };
    let what = format!("shared memory of kernel {name}");
    // SAFETY: a function of the loaded module.
    let fixed = unsafe { result::function::get_function_attribute(f, STATIC) }
        .map_err(|e| dev(&what, e))?;
    let dynamic = (limits.smem_optin - fixed).max(0);
    // SAFETY: as above; the value is within what the device allows.
    unsafe { result::function::set_function_attribute(f, MAX_DYNAMIC, dynamic) }
        .map_err(|e| dev(&what, e))?;
    Ok(dynamic as usize)
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
    smem_bytes: u32,
    stream: &Stream,
    args: &mut [*mut c_void],
) -> Result<(), ExecError> {
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    // SAFETY: the typed wrappers below pass exactly the kernel's parameters, in order, as
    // pointers to values of the kernel's types; device pointers are live buffers.
    unsafe { result::launch_kernel(f, grid, (block, 1, 1), smem_bytes, stream.0, args) }
        .map_err(|e| dev(&format!("launching {name}"), e))
}

/// Like [`launch`], but on sm_90 and later with programmatic dependent launch (`early`): the
/// kernel may start while the stream's previous kernel still runs. Only for kernels that call
/// `grid_dep_wait()` before they touch anything but their weights (see kernels.cu).
#[allow(clippy::too_many_arguments)]
fn launch_early(
    early: bool,
    f: sys::CUfunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem_bytes: u32,
    stream: &Stream,
    args: &mut [*mut c_void],
) -> Result<(), ExecError> {
    if !early {
        return launch(f, name, grid, block, smem_bytes, stream, args);
    }
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    // SAFETY: a plain-old-data attribute; the union member set is the one its id names.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem_bytes,
        hStream: stream.0,
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: as in `launch`; `config` and `attr` outlive the call.
    unsafe { sys::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()) }
        .result()
        .map_err(|e| dev(&format!("launching {name}"), e))
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
            0,
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
            0,
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
            0,
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
            0,
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
            0,
            s,
            args!(out, x, w, hidden, eps),
        )
    }

    /// Bias, RoPE and the KV write of each row: q (bf16) to `q`, k and v (bf16) into the
    /// row's block of the layer's table.
    pub(crate) fn rope_kv_write(
        &self,
        s: &Stream,
        qkv: u64,
        bias: u64,
        positions: u64,
        cos: u64,
        sin: u64,
        q: u64,
        row_item: u64,
        items: u64,
        table: u64,
        pool: u64,
        staging: u64,
        rows: usize,
    ) -> Result<(), ExecError> {
        launch_early(
            self.early,
            self.rope_kv_write,
            "rope_kv_write",
            (rows as u32, 1, 1),
            256,
            0,
            s,
            args!(
                qkv, bias, positions, cos, sin, q, row_item, items, table, pool, staging
            ),
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
            0,
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
            0,
            s,
            args!(att, q, tiles, items, table, pool, staging, scale_log2),
        )
    }

    /// Decode attention of `n_items` one-row items (`item_ids`) in partitions of `part_keys`
    /// keys (a multiple of [`DECODE_TILE`]), `parts` per item at most: rows of `att`.
    /// `part_o`/`part_ml` hold `n_items · kv_heads · parts` partials; `counters` as many u32,
    /// zero before the launch and zero again after it.
    pub(crate) fn attn_decode(
        &self,
        s: &Stream,
        att: u64,
        part_o: u64,
        part_ml: u64,
        counters: u64,
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
        debug_assert!(part_keys > 0 && (part_keys as usize).is_multiple_of(DECODE_TILE));
        let grid = (parts as u32, self.shape.kv_heads as u32, n_items as u32);
        launch_early(
            self.early,
            self.attn_decode,
            "attn_decode",
            grid,
            128,
            0,
            s,
            args!(
                att, part_o, part_ml, counters, q, item_ids, items, table, pool, staging,
                part_keys, parts, scale_log2
            ),
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
            0,
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
            0,
            s,
            args!(out, logits, vocab, temps, top_ps, us),
        )
    }
}
