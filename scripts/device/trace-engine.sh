#!/usr/bin/env bash
# Where a layer-wise engine run's step time goes on the GPU: runs `strata bench engine --executor
# cuda --modes layerwise` under a cost profile with STRATA_CUDA_TRACE=1 and summarizes the trace
# by kind of step (streamed decode, decode only, with a prefill): how long the host took to queue
# a step and how much longer the GPU took, how long compute waited for copies and staging, and
# how busy the stage-in stream was (node/src/exec/cuda/trace.rs says what each field measures).
# Run after scripts/device/cuda-check.sh in the same device call (it unpacks .dev/strata):
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
    split("", f)
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    # A step with a prefill (more rows than items) counts as one even when it stages layers.
    kind = f["rows"] > f["items"] ? "prefill" : (f["staged_layers"] > 0 ? "streamed" : "decode")
    n[kind]++; q[kind] += f["queued_us"]; g[kind] += f["gpu_us"]; r[kind] += f["stage_in_runs"]
    c[kind] += f["plan_copies"]; e[kind] += f["entry_wait_us"]; st[kind] += f["stall_us"]
    ib[kind] += f["in_busy_us"]; is[kind] += f["in_span_us"]; by[kind] += f["in_bytes"]
    ob[kind] += f["out_busy_us"]
    if (f["gpu_us"] < 200) starved[kind]++
  }
  END {
    printf "%-9s %6s %9s %9s %9s %8s %9s\n", "kind", "steps", "queue ms", "gpu ms", "total s", "runs", "copies"
    for (k in n)
      printf "%-9s %6d %9.3f %9.3f %9.2f %8.1f %9.1f   (%d steps with the GPU done < 0.2 ms after queuing)\n",
        k, n[k], q[k] / n[k] / 1e3, g[k] / n[k] / 1e3, (q[k] + g[k]) / 1e6, r[k] / n[k], c[k] / n[k], starved[k]
    print "per step, ms: compute held at entry / inside the step; stage-in copying / first start to last end; stage-in GB/s; stage-out time"
    printf "%-9s %9s %9s %9s %9s %9s %9s\n", "kind", "entry", "stall", "in busy", "in span", "in GB/s", "out busy"
    for (k in n)
      printf "%-9s %9.3f %9.3f %9.3f %9.3f %9.1f %9.3f\n", k, e[k] / n[k] / 1e3, st[k] / n[k] / 1e3,
        ib[k] / n[k] / 1e3, is[k] / n[k] / 1e3, (ib[k] > 0 ? by[k] / ib[k] / 1e3 : 0), ob[k] / n[k] / 1e3
  }' $T | tee -a $OUT/bench-engine.log
gzip -9 $T
