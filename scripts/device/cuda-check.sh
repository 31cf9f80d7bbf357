#!/usr/bin/env bash
# One device call for the cuda executor (issue 5): its GPU tests, `strata bench gpu`, and
# `strata bench engine --executor cuda` (baseline vs layer-wise, with the step breakdown and a
# refitted cost profile). Everything lands in $OUT. Build and pack first, here:
#   scripts/device/pack.sh [OLD_REV]
# then call the device tool with command `bash scripts/device/cuda-check.sh` and carry [".dev"].
# About 5 minutes on an H200 (more with a .dev/strata-old to time side by side).
set -uo pipefail
for f in .dev/*.gz .dev/t/*.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done
S=./.dev/strata; O=./.dev/strata-old
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee $OUT/smi.txt
export STRATA_REQUIRE_GPU=1
ok=1
timeout 60 .dev/t/lib cuda 2>&1 | tail -n 40 > $OUT/tests.log || ok=0
timeout 80 .dev/t/cuda_exec 2>&1 | tail -n 40 >> $OUT/tests.log || ok=0
grep -E "test result|FAILED|panicked|failed" $OUT/tests.log | head -n 20
echo "GPU tests passed: $ok"
echo "== bench gpu"
timeout 150 $S bench gpu --repeats 5 --json $OUT/bench-gpu.json 2>&1 | grep -v '\[' | tee $OUT/bench-gpu.log | tail -n 26 | head -n 18
if [ -x $O ]; then
  echo "== the old strata, decode side by side"
  timeout 80 $O bench gpu --prefill 1024 --decode-batch 1,32,128 --transfer-mib 16 --offload-prompt 512 \
    --repeats 5 --json $OUT/bench-gpu-old.json 2>&1 | grep -v '\[' | grep -E "^(decode| +[0-9]+ +4096|peaks)" | head -n 6
fi
if [ $ok = 1 ]; then
  timeout 210 $S bench engine --executor cuda --model llama-3-8b --save-profile $OUT/h200-llama-3-8b.toml \
    --json $OUT/bench-engine.json 2>&1 | grep -v '\[' | tail -n 12 | tee $OUT/bench-engine.log
fi
