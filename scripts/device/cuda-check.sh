#!/usr/bin/env bash
# One device call for the cuda executor (issue 5): its GPU tests, `strata bench gpu`, and
# `strata bench engine --executor cuda` (baseline vs layer-wise, with the step breakdown and a
# refitted cost profile). Everything lands in $OUT (8 files at most come back). Build and pack
# first, here:
#   scripts/device/pack.sh [OLD_REV]
# then call the device tool with command `bash scripts/device/cuda-check.sh` and carry [".dev"].
# Optional binaries in .dev/, each timed in the same call as the new one:
#   strata-old  an older revision: decode and prefill side by side (`bench gpu`)
#   strata-a    another revision: the engine bench's layer-wise mode under the profile just fitted
# About 6 minutes on an H200 with both; each step has its own time limit. SKIP_BENCH_GPU=1 leaves
# out `bench gpu` (a second run on the same card, for the engine alone).
set -uo pipefail
for f in .dev/*.gz .dev/t/*.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done
S=./.dev/strata; O=./.dev/strata-old; A=./.dev/strata-a
G=$OUT/bench-gpu.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee $G
export STRATA_REQUIRE_GPU=1
ok=1
timeout 60 .dev/t/lib cuda 2>&1 | tail -n 40 > $OUT/tests.log || ok=0
timeout 80 .dev/t/cuda_exec 2>&1 | tail -n 40 >> $OUT/tests.log || ok=0
grep -E "test result|FAILED|panicked|failed" $OUT/tests.log | head -n 20
echo "GPU tests passed: $ok"
if [ -z "${SKIP_BENCH_GPU:-}" ]; then
  echo "== bench gpu" | tee -a $G
  timeout 150 $S bench gpu --repeats 5 --json $OUT/bench-gpu.json 2>&1 | grep -v '\[' | tee -a $G | tail -n 34 | head -n 24
fi
if [ $ok = 1 ]; then
  timeout 200 $S bench engine --executor cuda --model llama-3-8b --save-profile $OUT/h200-llama-3-8b.toml \
    --json $OUT/bench-engine.json 2>&1 | grep -v '\[' | tail -n 12 | tee $OUT/bench-engine.log
fi
if [ -x $O ]; then
  echo "== the old strata ($O), side by side" | tee -a $G
  timeout 60 $O bench gpu --prefill 1024 --decode-batch 1,32,128 --transfer-mib 16 --offload-prompt 512 \
    --repeats 5 2>&1 | grep -v '\[' | tee -a $G | grep -E "^(decode| +[0-9]+ +4096|peaks)" | head -n 6
fi
if [ -x $A ] && [ -s $OUT/h200-llama-3-8b.toml ]; then
  echo "== $A, layer-wise under the profile fitted above"
  timeout 100 $A bench engine --executor cuda --model llama-3-8b --modes layerwise \
    --profile $OUT/h200-llama-3-8b.toml --json $OUT/engine-a.json 2>&1 | grep -v '\[' | tail -n 8 | tee $OUT/engine-a.log
fi
