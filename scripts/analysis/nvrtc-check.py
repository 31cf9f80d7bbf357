#!/usr/bin/env python3
"""Compiles the cuda executor's kernels with NVRTC here, without a GPU, as the executor does at
start (same sources, same options), and prints NVRTC's log with ptxas's register and spill
counts per kernel. Catches compile errors and spills before a device call. With CUBIN=FILE it
also writes the compiled cubin there, for `cuobjdump -sass -fun KERNEL FILE` (the binary is in
the `nvidia-cuda-cuobjdump` wheel: `pip download nvidia-cuda-cuobjdump`, then unzip it).

  pip download nvidia-cuda-nvrtc-cu12 && python3 -m zipfile -e nvidia_cuda_nvrtc_cu12-*.whl DIR
  NVRTC=DIR/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 scripts/analysis/nvrtc-check.py [sm_90]
Shape: Llama-3-8B's (head_dim 128, 32 heads, 8 kv heads, blocks of 16 tokens), or SHAPE, as
`SHAPE=HEAD_DIM=16,HEADS=4,KV_HEADS=2,BLOCK_TOKENS=16` (the defines kernels.rs passes)."""
import ctypes, os, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../node/src/exec/cuda")
src = "".join(open(os.path.join(root, f)).read() for f in ["kernels.cu", "decode.cu", "gemv_tc.cu"])
arch = sys.argv[1] if len(sys.argv) > 1 else "sm_90"
lib = ctypes.CDLL(os.environ["NVRTC"])
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"strata_kernels.cu", 0, None, None) == 0
shape = os.environ.get("SHAPE", "HEAD_DIM=128,HEADS=32,KV_HEADS=8,BLOCK_TOKENS=16")
opts = [f"--gpu-architecture={arch}", "--std=c++17", "--use_fast_math", "--ptxas-options=-v"]
opts += [f"-D{d}" for d in shape.split(",")]
arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
size = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
lib.nvrtcGetProgramLog(prog, log)
print(log.value.decode(errors="replace"))
print("compile:", "ok" if rc == 0 else f"failed ({rc})")
if rc == 0 and os.environ.get("CUBIN"):
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    assert lib.nvrtcGetCUBIN(prog, cubin) == 0
    open(os.environ["CUBIN"], "wb").write(cubin.raw)
sys.exit(0 if rc == 0 else 1)
