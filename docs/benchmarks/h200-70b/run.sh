#!/usr/bin/env bash
# Runs on the device machine from the repository root (carry: .dev): Llama-3-70B's shape cut to
# 8 layers (and 4), random bf16 weights, on one H200. Logs and JSON go to $OUT.
set -o pipefail
B=/tmp/70b-strata
gunzip -c .dev/70b-strata.gz > "$B" && chmod +x "$B" || exit 1
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$OUT/70b-bench-engine-l8.log"
echo "+ strata bench engine --executor cuda --model llama-3-70b --layers 8 --requests 40 --save-profile \$OUT/h200-llama-3-70b.toml --json \$OUT/70b-bench-engine-l8.json" | tee -a "$OUT/70b-bench-engine-l8.log"
timeout 330 "$B" bench engine --executor cuda --model llama-3-70b --layers 8 --requests 40 \
  --save-profile "$OUT/h200-llama-3-70b.toml" --json "$OUT/70b-bench-engine-l8.json" 2>&1 \
  | tee -a "$OUT/70b-bench-engine-l8.log"
echo "engine rc=$?" | tee -a "$OUT/70b-bench-engine-l8.log"
for L in 8 4; do
  echo "+ strata bench gpu --model llama-3-70b --layers $L --prefill 1024,4096,8192 --decode-batch 1,32,128 --decode-ctx 4096 --json \$OUT/70b-bench-gpu-l$L.json" | tee "$OUT/70b-bench-gpu-l$L.log"
  timeout 100 "$B" bench gpu --model llama-3-70b --layers "$L" --prefill 1024,4096,8192 \
    --decode-batch 1,32,128 --decode-ctx 4096 --json "$OUT/70b-bench-gpu-l$L.json" 2>&1 \
    | tee -a "$OUT/70b-bench-gpu-l$L.log"
  echo "gpu l$L rc=$?" | tee -a "$OUT/70b-bench-gpu-l$L.log"
done
