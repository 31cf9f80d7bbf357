#!/usr/bin/env bash
# Decode at small batches, the GEMV kernels against cuBLAS: `strata bench gpu` at batches 1–5 and
# 8 with STRATA_GEMV_ROWS=4 (the default: the GEMV kernels for up to 4 rows) and =1 (cuBLAS from
# 2 rows), at 4096 tokens of context and at 64 (which leaves out most of the attention). Pack
# first (scripts/device/pack.sh), then on the device: `bash scripts/device/small-batch.sh`, carry
# [".dev"]. CTXS="4096" keeps one context (two runs, not four). Writes $OUT/small-batch.log.
set -uo pipefail
S=./.dev/strata
[ -x $S ] || { gunzip -f .dev/strata.gz && chmod +x $S; }
L=$OUT/small-batch.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
for ctx in ${CTXS:-4096 64}; do
  for rows in 4 1; do
    echo "== STRATA_GEMV_ROWS=$rows, context $ctx" | tee -a $L
    STRATA_GEMV_ROWS=$rows timeout 60 $S bench gpu --prefill 1024 --decode-batch 1,2,3,4,5,8 \
      --decode-ctx $ctx --transfer-mib 16 --offload-prompt 512 --streamed-batch 1 --repeats 5 2>&1 |
      grep -v '\[' | grep -A7 "^decode " | tee -a $L
  done
done
