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
#   strata-b    a third, the same way
# TRACE=1 then runs scripts/device/trace-engine.sh under that profile. The A/B runs' JSON and the
# trace come back together as $OUT/extra.tar. Each step has its own time limit: on an H100 the
# engine bench with its calibration ran past 200 s and a layer-wise run past 100 s; tests, engine
# bench and three layer-wise runs took more than 500 s in all. A step that would end after
# BUDGET_S seconds (default 570) is left out. SKIP_BENCH_GPU=1 leaves out `bench gpu` (a second
# run on the same card, for the engine alone); FALLBACK_OLD=1 benches .dev/strata-old instead of
# the new build if the GPU tests fail; SKIP_ENGINE=1 leaves out the engine bench (a short
# call: GPU tests and `bench gpu`). SMALL_BATCH=1 then runs scripts/device/small-batch.sh at 4096
# tokens with the CUDA-core GEMVs up to 4 rows and the tensor-core ones (the default kernels are
# in `bench gpu`'s decode table), if it fits the budget. If the GPU tests fail, the benches still
# run, and say so.
set -uo pipefail
for f in .dev/*.gz .dev/t/*.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done
S=./.dev/strata; O=./.dev/strata-old
BUDGET_S=${BUDGET_S:-570}
fits() { [ $((SECONDS + $1)) -le "$BUDGET_S" ] || { echo "== left out (would end after ${BUDGET_S} s): $2"; false; }; }
X=/tmp/extra; mkdir -p $X
pack_extra() { tar -C $X -cf $OUT/extra.tar . ; }
G=$OUT/bench-gpu.log
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv | tee $G
export STRATA_REQUIRE_GPU=1
if ! bash scripts/device/gpu-tests.sh; then
  echo "== GPU tests failed (tests.log): the benches below still run" | tee -a $G
  if [ -n "${FALLBACK_OLD:-}" ] && [ -x $O ]; then # bench the old build instead, once
    echo "== FALLBACK_OLD: the benches run $O, not $S" | tee -a $G
    S=$O; O=/nonexistent
  fi
fi
if [ -z "${SKIP_BENCH_GPU:-}" ]; then
  echo "== bench gpu" | tee -a $G
  timeout 150 $S bench gpu --repeats 5 --decode-batch 1,2,4,8,32,128 --json $OUT/bench-gpu.json 2>&1 | grep -v '\[' | tee -a $G | tail -n 34 | head -n 24
fi
if [ -z "${SKIP_ENGINE:-}" ]; then
  timeout 330 $S bench engine --executor cuda --model llama-3-8b --save-profile $OUT/h200-llama-3-8b.toml \
    --json $OUT/bench-engine.json 2>&1 | grep -v '\[' | tail -n 12 | tee $OUT/bench-engine.log
fi
if [ -x $O ]; then
  echo "== the old strata ($O), side by side" | tee -a $G
  timeout 60 $O bench gpu --prefill 1024 --decode-batch 1,32,128 --transfer-mib 16 --offload-prompt 512 \
    --repeats 5 2>&1 | grep -v '\[' | tee -a $G | grep -E "^(decode| +[0-9]+ +4096|peaks)" | head -n 6
fi
for A in ./.dev/strata-a ./.dev/strata-b; do
  [ -x $A ] && [ -s $OUT/h200-llama-3-8b.toml ] && fits 140 "$A" || continue
  n=$(basename $A)
  echo "== $A, layer-wise under the profile fitted above" | tee -a $OUT/engine-ab.log
  timeout 140 $A bench engine --executor cuda --model llama-3-8b --modes layerwise \
    --profile $OUT/h200-llama-3-8b.toml --json $X/engine-${n#strata-}.json 2>&1 | grep -v '\[' | tail -n 8 | tee -a $OUT/engine-ab.log
  pack_extra
done
if [ -n "${TRACE:-}" ] && [ -s $OUT/h200-llama-3-8b.toml ] && fits 150 "the traced run"; then
  OUT=$X bash scripts/device/trace-engine.sh $OUT/h200-llama-3-8b.toml
  cat $X/bench-engine.log >> $OUT/bench-engine.log
  rm -f $X/bench-engine.log
  pack_extra
fi
if [ -n "${SMALL_BATCH:-}" ] && fits 150 "small-batch.sh"; then
  S=$S CTXS=4096 CONFIGS="simt tc tc1" bash scripts/device/small-batch.sh
fi
