#!/usr/bin/env python3
"""Medians of a STRATA_CUDA_TRACE run's decode steps by items in the step, decode-only apart from
streamed (steps with a prefill left out):
    scripts/analysis/trace-by-items.py docs/benchmarks/gpu/trace-engine-h100-4.log.gz
Per group: steps, median step time (host queue + GPU after it), and the means of compute's
stalls, staged layers, stage-in MB and plan copies a step."""
import collections
import gzip
import statistics
import sys


def steps(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            if line.startswith("cuda step:"):
                yield {k: float(v) for k, v in (kv.split("=") for kv in line.split()[2:])}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    groups = collections.defaultdict(list)
    for s in steps(sys.argv[1]):
        if s["rows"] == s["items"]:
            kind = "streamed" if s["staged_layers"] > 0 else "decode"
            groups[(kind, int(s["items"]))].append(s)
    print(f"{'kind':9} {'items':>5} {'steps':>6} {'step ms':>8} {'stall ms':>9} {'staged':>7} {'in MB':>7} {'copies':>7}")
    for (kind, items), g in sorted(groups.items()):
        mean = lambda k: statistics.mean(s[k] for s in g)
        step = statistics.median(s["queued_us"] + s["gpu_us"] for s in g) / 1e3
        print(f"{kind:9} {items:>5} {len(g):>6} {step:>8.2f} {mean('stall_us') / 1e3:>9.2f} "
              f"{mean('staged_layers'):>7.1f} {mean('in_bytes') / 1e6:>7.0f} {mean('plan_copies'):>7.0f}")


if __name__ == "__main__":
    main()
