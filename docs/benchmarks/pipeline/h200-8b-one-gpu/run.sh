#!/bin/bash
# Issue 6 on one H200: llama-3-8b (random bf16 weights) as one process and as a 2-stage
# pipeline (two processes sharing the GPU, activations over QUIC on loopback), behind the
# router, measured with `strata bench http`. Results: $OUT/pp-results.tgz and $OUT/summary.txt.
set -u
B=/tmp/pp_strata
gunzip -c .dev/pp_strata.gz > $B && chmod +x $B || exit 1
R=/tmp/ppres; mkdir -p $R
URL=http://127.0.0.1:8080
for P in 1 2; do
  echo "=== stages $P" | tee -a $R/summary.txt
  $B up --executor cuda --model llama-3-8b --nodes 1 --stages $P --data-dir /tmp/up$P > $R/up$P.log 2>&1 &
  UP=$!
  ok=0
  for i in $(seq 1 240); do
    if curl -sf $URL/ready >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
  done
  echo "ready=$ok after ${i}s" | tee -a $R/summary.txt
  if [ $ok = 1 ]; then
    run() { name=$1; shift; echo "+ strata bench http --url $URL $*" >> $R/pp$P-$name.log;
      timeout 150 $B bench http --url $URL "$@" --json $R/pp$P-$name.json >> $R/pp$P-$name.log 2>&1;
      grep -E "TTFT|TPOT|throughput|completed|failed" $R/pp$P-$name.log | sed "s/^/[$P $name] /" | tee -a $R/summary.txt; }
    run ttft4k --rate 0.5 --duration 16 --prompt-tokens 4096-4096 --output-tokens 16-16
    run batch1 --rate 0.2 --duration 12 --prompt-tokens 128-128 --output-tokens 256-256
    run batch32 --rate 64 --duration 0.5 --prompt-tokens 128-128 --output-tokens 256-256
  fi
  kill -TERM $UP; wait $UP
  tail -5 $R/up$P.log >> $R/summary.txt
  cp /tmp/up$P/logs/*.log $R/ 2>/dev/null
  for f in $R/node-*.log; do [ -f "$f" ] && mv "$f" "${f%.log}-p$P.log"; done
  rm -f $R/router-*.log
done
cp $R/summary.txt $OUT/summary.txt
tar czf $OUT/pp-results.tgz -C $R .
