#!/usr/bin/env bash
# One device call for the decode GEMVs: the cuda executor's GPU tests (the kernels against their
# references, the executor against the cpu one), then scripts/device/small-batch.sh (tensor-core
# GEMVs, CUDA-core ones and cuBLAS at batches 1–5 and 8). Pack first (scripts/device/pack.sh),
# then call the device tool with `bash scripts/device/gemv-check.sh`, carry [".dev"].
# CTXS as small-batch.sh takes it (default here: 4096). Writes $OUT/tests.log, small-batch.log.
set -uo pipefail
for f in .dev/*.gz .dev/t/*.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done
export STRATA_REQUIRE_GPU=1
ok=1
timeout 90 .dev/t/lib cuda 2>&1 | tail -n 60 > $OUT/tests.log || ok=0
timeout 90 .dev/t/cuda_exec 2>&1 | tail -n 40 >> $OUT/tests.log || ok=0
grep -E "test result|FAILED|panicked|failed" $OUT/tests.log | head -n 20
echo "GPU tests passed: $ok"
CTXS=${CTXS:-4096} bash scripts/device/small-batch.sh
