#!/usr/bin/env bash
# Decode at small batches, the GEMV kernels against each other and against cuBLAS: `strata bench
# gpu` at batches 1–5 and 8 with the defaults (the CUDA-core GEMV for one row, cuBLAS from 2),
# the CUDA-core GEMVs up to 4 rows (STRATA_GEMV_ROWS=4), the tensor-core GEMVs for 2–8 rows
# (STRATA_GEMV_TC=1) and for 1–8 (STRATA_GEMV_TC=all), at 4096 tokens of context and at 64
# (which leaves out most of the attention). Pack first (scripts/device/pack.sh), then on the device:
# `bash scripts/device/small-batch.sh`, carry [".dev"]. CTXS="4096" keeps one context;
# CONFIGS picks among default, simt, tc and tc1; BATCHES replaces the batch list; S names
# another binary (as ./.dev/strata-old). Writes $OUT/small-batch.log.
set -uo pipefail
S=${S:-./.dev/strata}
[ -x $S ] || { gunzip -f $S.gz && chmod +x $S; }
L=$OUT/small-batch.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
B=${BATCHES:-1,2,3,4,5,8}
rows=$(($(tr -cd , <<<"$B" | wc -c) + 2)) # lines after the table's header: one per batch, one blank
for ctx in ${CTXS:-4096 64}; do
  for cfg in ${CONFIGS:-default simt tc tc1}; do
    case $cfg in
      default) env=() ;;
      simt) env=(STRATA_GEMV_ROWS=4) ;;
      tc) env=(STRATA_GEMV_TC=1) ;;
      tc1) env=(STRATA_GEMV_TC=all) ;;
      *) echo "unknown config $cfg (default, simt, tc, tc1)"; exit 2 ;;
    esac
    echo "== $S $cfg ${env[*]}, context $ctx" | tee -a $L
    env "${env[@]}" timeout 60 $S bench gpu --prefill 1024 --decode-batch $B \
      --decode-ctx $ctx --transfer-mib 16 --offload-prompt 512 --streamed-batch 1 --repeats 5 2>&1 |
      grep -v '\[' | grep -A"$rows" "^decode " | tee -a $L
  done
done
