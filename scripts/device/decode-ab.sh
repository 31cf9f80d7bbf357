#!/usr/bin/env bash
# One device call for a change to the decode kernels: the GPU tests of the new build, then decode
# at small batches and at batch 32 (4096 tokens of context) for the new `strata` and the old one
# side by side, each with the default kernels and with the CUDA-core GEMVs up to 4 rows. Pack
# first with the old revision: `scripts/device/pack.sh OLD_REV`; then call the device tool with
# `bash scripts/device/decode-ab.sh`, carry [".dev"]. BATCHES as small-batch.sh takes it
# (default here 1,2,3,4,8,32). Writes $OUT/tests.log and $OUT/small-batch.log.
set -uo pipefail
bash scripts/device/gpu-tests.sh
for round in 1 2; do # old and new twice, interleaved: drift on a shared card shows as a gap
  for b in strata strata-old; do
    S=./.dev/$b CTXS=4096 CONFIGS="default simt" BATCHES=${BATCHES:-1,2,3,4,8,32} \
      bash scripts/device/small-batch.sh > /dev/null
  done
done
grep -E "^==|^ +[0-9]+ +4096" $OUT/small-batch.log
