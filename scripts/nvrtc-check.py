#!/usr/bin/env python3
"""Compiles node/src/exec/cuda/kernels.cu + decode.cu with NVRTC for sm_90, as the cuda executor does at
start, for several model shapes: catches compile errors and shows register use and spills
without a GPU. Needs libnvrtc.so.13 (e.g. `pip download --no-deps "nvidia-cuda-nvrtc==13.0.*"`,
unzip it, and point NVRTC_LIB at nvidia/cu13/lib/libnvrtc.so.13).

usage: scripts/nvrtc-check.py [-v]   (-v prints ptxas's per-kernel resource report)
"""
import ctypes, os, sys

LIB = os.environ.get("NVRTC_LIB", "/opt/nvrtc/nvidia/cu13/lib/libnvrtc.so.13")
CUDA_DIR = os.path.join(os.path.dirname(__file__), "..", "node/src/exec/cuda")
# In the order kernels.rs concatenates them.
SOURCES = ["kernels.cu", "decode.cu"]
# (head_dim, heads, kv_heads, block_tokens): Llama-3-8B, 70B, and the test shapes.
SHAPES = [(128, 32, 8, 16), (128, 64, 8, 16), (16, 4, 2, 16), (32, 8, 2, 5), (64, 8, 8, 32)]


def main():
    verbose = "-v" in sys.argv
    # NVRTC opens its builtins library by name at compile time: load it first, globally.
    for builtins in ("libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so.13"):
        path = os.path.join(os.path.dirname(LIB), builtins)
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            break
    nv = ctypes.CDLL(LIB)
    src = b"".join(open(os.path.join(CUDA_DIR, f), "rb").read() for f in SOURCES)
    bad = 0
    for hd, h, kvh, bt in SHAPES:
        prog = ctypes.c_void_p()
        assert nv.nvrtcCreateProgram(ctypes.byref(prog), src, b"strata_kernels.cu", 0, None, None) == 0
        opts = [b"--gpu-architecture=sm_90", b"--std=c++17", b"--use_fast_math",
                b"-DHEAD_DIM=%d" % hd, b"-DHEADS=%d" % h, b"-DKV_HEADS=%d" % kvh,
                b"-DBLOCK_TOKENS=%d" % bt]
        if verbose:
            opts.append(b"--ptxas-options=-v")
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace").strip()
        shape = f"head_dim {hd}, heads {h}, kv_heads {kvh}, block {bt}"
        if rc != 0:
            bad += 1
            print(f"FAILED ({shape}):\n{text}")
        else:
            print(f"ok ({shape})")
            if verbose and text:
                print(text)
        nv.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
