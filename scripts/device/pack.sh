#!/usr/bin/env bash
# Builds what scripts/device/cuda-check.sh runs on the device machine and packs it into .dev/
# (add `/.dev/` to .git/info/exclude, then pass `.dev` in the device call's carry). No CUDA
# toolkit is needed here: cudarc loads the CUDA libraries at run time.
#   scripts/device/pack.sh [OLD_REV]   OLD_REV: also pack a `strata` built at that revision,
#                                      for side-by-side timings in the same call
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .dev/t
rm -f .dev/*.gz .dev/t/*.gz .dev/strata .dev/strata-old
cargo build --release -p strata-ops
tests=$(cargo test --release -p strata-node --features cuda --no-run 2>&1 | tee /dev/stderr)
lib=$(grep -o 'target/release/deps/strata_node-[0-9a-f]*' <<<"$tests" | head -n 1)
exe=$(grep -o 'target/release/deps/cuda_exec-[0-9a-f]*' <<<"$tests" | head -n 1)
cp target/release/strata .dev/strata
cp "$lib" .dev/t/lib
cp "$exe" .dev/t/cuda_exec
if [ $# -ge 1 ]; then
  wt=$(mktemp -d)
  git worktree add -q --detach "$wt" "$1"
  (cd "$wt" && CARGO_TARGET_DIR="$PWD/../strata-old-target" cargo build --release -p strata-ops)
  cp "$wt/../strata-old-target/release/strata" .dev/strata-old
  git worktree remove --force "$wt"
fi
strip .dev/strata* .dev/t/*
gzip -9 -f .dev/strata* .dev/t/lib .dev/t/cuda_exec
du -sh .dev
