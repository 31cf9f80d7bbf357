#!/usr/bin/env bash
# One device call for the decode GEMVs: the cuda executor's GPU tests (the kernels against their
# references, the executor against the cpu one), then scripts/device/small-batch.sh (cuBLAS,
# CUDA-core GEMVs and tensor-core ones at batches 1–5 and 8). Pack first (scripts/device/pack.sh),
# then call the device tool with `bash scripts/device/gemv-check.sh`, carry [".dev"].
# CTXS as small-batch.sh takes it (default here: 4096). Writes $OUT/tests.log, small-batch.log.
set -uo pipefail
bash scripts/device/gpu-tests.sh
CTXS=${CTXS:-4096} bash scripts/device/small-batch.sh
