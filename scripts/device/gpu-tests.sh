#!/usr/bin/env bash
# The cuda executor's GPU tests on the device machine: unpacks .dev (scripts/device/pack.sh),
# runs the library's cuda tests (each kernel against its reference) and the cuda_exec tests (the
# executor against the cpu one), writes $OUT/tests.log, prints the summary lines, and exits 1
# if any failed. Called by cuda-check.sh and gemv-check.sh.
set -uo pipefail
for f in .dev/*.gz .dev/t/*.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done
export STRATA_REQUIRE_GPU=1
ok=1
timeout 90 .dev/t/lib cuda 2>&1 | tail -n 60 > $OUT/tests.log || ok=0
timeout 90 .dev/t/cuda_exec 2>&1 | tail -n 40 >> $OUT/tests.log || ok=0
grep -E "test result|FAILED|panicked|failed" $OUT/tests.log | head -n 20
echo "GPU tests passed: $ok"
[ $ok = 1 ]
