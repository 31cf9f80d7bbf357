#!/usr/bin/env bash
# Where a layer-wise engine run's step time goes on the GPU: runs `strata bench engine --executor
# cuda --modes layerwise` under a cost profile with STRATA_CUDA_TRACE=1 and summarizes the trace
# by kind of step (streamed decode, decode only, with a prefill): how long the host took to queue
# a step and how much longer the GPU took. Run after scripts/device/cuda-check.sh in the same
# device call (it unpacks .dev/strata):
#   bash scripts/device/trace-engine.sh PROFILE
# Writes $OUT/engine-trace.log.gz (one line a step) and appends the summary to $OUT/bench-engine.log.
set -uo pipefail
profile=${1:?usage: trace-engine.sh PROFILE}
S=./.dev/strata
[ -x $S ] || { gunzip -f .dev/strata.gz && chmod +x $S; }
T=$OUT/engine-trace.log
STRATA_CUDA_TRACE=1 timeout 150 $S bench engine --executor cuda --model llama-3-8b --modes layerwise \
  --profile "$profile" 2>$T | tail -n 6
echo "== layer-wise under $profile, traced: $(grep -c "cuda step:" $T) steps" | tee -a $OUT/bench-engine.log
awk '
  /cuda step:/ {
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    # A step with a prefill (more rows than items) counts as one even when it stages layers.
    kind = f["rows"] > f["items"] ? "prefill" : (f["staged_layers"] > 0 ? "streamed" : "decode")
    n[kind]++; q[kind] += f["queued_us"]; g[kind] += f["gpu_us"]; r[kind] += f["stage_in_runs"]
    c[kind] += f["plan_copies"]
    if (f["gpu_us"] < 200) starved[kind]++
  }
  END {
    printf "%-9s %6s %12s %12s %12s %10s %12s\n", "kind", "steps", "queue ms/st", "gpu ms/st", "total s", "runs/st", "copies/st"
    for (k in n)
      printf "%-9s %6d %12.3f %12.3f %12.2f %10.1f %12.1f   (%d steps with the GPU done < 0.2 ms after queuing)\n",
        k, n[k], q[k] / n[k] / 1e3, g[k] / n[k] / 1e3, (q[k] + g[k]) / 1e6, r[k] / n[k], c[k] / n[k], starved[k]
  }' $T | tee -a $OUT/bench-engine.log
gzip -9 $T
