#!/usr/bin/env bash
# Decode at small batches, the GEMV kernels against each other and against cuBLAS: `strata bench
# gpu` at batches 1–5 and 8 with the tensor-core GEMVs (the default: 2–8 rows), with the
# CUDA-core ones alone (STRATA_GEMV_TC=0: up to 4 rows) and with cuBLAS from 2 rows
# (STRATA_GEMV_ROWS=1), at 4096 tokens of context and at 64 (which leaves out most of the
# attention). Pack first (scripts/device/pack.sh), then on the device:
# `bash scripts/device/small-batch.sh`, carry [".dev"]. CTXS="4096" keeps one context;
# CONFIGS picks among tc, tc1 (the tensor-core GEMVs for one row too: STRATA_GEMV_TC=all),
# simt and cublas. Writes $OUT/small-batch.log.
set -uo pipefail
S=./.dev/strata
[ -x $S ] || { gunzip -f .dev/strata.gz && chmod +x $S; }
L=$OUT/small-batch.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
for ctx in ${CTXS:-4096 64}; do
  for cfg in ${CONFIGS:-tc tc1 simt cublas}; do
    case $cfg in
      tc) env=() ;;
      tc1) env=(STRATA_GEMV_TC=all) ;;
      simt) env=(STRATA_GEMV_TC=0) ;;
      cublas) env=(STRATA_GEMV_ROWS=1) ;;
      *) echo "unknown config $cfg (tc, tc1, simt, cublas)"; exit 2 ;;
    esac
    echo "== $cfg ${env[*]}, context $ctx" | tee -a $L
    env "${env[@]}" timeout 60 $S bench gpu --prefill 1024 --decode-batch 1,2,3,4,5,8 \
      --decode-ctx $ctx --transfer-mib 16 --offload-prompt 512 --streamed-batch 1 --repeats 5 2>&1 |
      grep -v '\[' | grep -A7 "^decode " | tee -a $L
  done
done
