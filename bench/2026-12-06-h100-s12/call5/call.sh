#!/usr/bin/env bash
# Session 12, call 5: the ring GEMVs stage a one-token 27648-wide row in one
# batch of loads (9 pieces a thread, was 8: two batches) — ./ferry — against
# call 4's build (./ferry-prev), 32B tg64 rotating;
# gpu-check.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
for b in ferry-prev; do gunzip -kf $b.gz && chmod +x $b; done
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1 ) &
/usr/bin/time -f "gpu-check %e s" timeout 280 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label binary args
  echo "$1: $(timeout 90 $2 bench -m $M --device cuda $3 2>&1 | grep -E 'tg[0-9]+|rror' | head -1 | cut -d'|' -f1-9)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"
run "batch9" ./ferry "$T"; run "prev" ./ferry-prev "$T"
run "prev" ./ferry-prev "$T"; run "batch9" ./ferry "$T"
run "batch9" ./ferry "$T"; run "prev" ./ferry-prev "$T"
run "prev" ./ferry-prev "$T"; run "batch9" ./ferry "$T"
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt; tail -1 $L/synth.txt; cat $L/tg.txt; grep -E "^\| (synth|smol)" $L/gpu-check.txt | cut -d'|' -f2,4-12; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|DIFF|rror|gpu-check " $L/gpu-check.txt | head
