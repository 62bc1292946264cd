#!/usr/bin/env bash
# Session 12, call 1: the RMSNorm after the o and down projections computed by
# those GEMVs' last blocks (default) against its own launch (FERRY_NORM_AFTER=0)
# and ./ferry-base (96c8be7); gpu-check (with the new "norms in GEMVs =
# launched" column) while the 32B model is synthesized.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf
( /usr/bin/time -f "synth %e s" ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1 ) &
/usr/bin/time -f "gpu-check %e s" timeout 280 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label binary args env...
  local label=$1 b=$2 args=$3; shift 3
  echo "$label: $(env "$@" timeout 60 $b bench -m $M --device cuda $args 2>&1 | grep -E 'tg[0-9]+|rror' | head -1 | cut -d'|' -f1-9)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"
run "tg64 fused" ./ferry "$T" X=1
run "tg64 launched" ./ferry "$T" FERRY_NORM_AFTER=0
run "tg64 base" ./ferry-base "$T" X=1
run "tg64 launched" ./ferry "$T" FERRY_NORM_AFTER=0
run "tg64 base" ./ferry-base "$T" X=1
run "tg64 fused" ./ferry "$T" X=1
run "tg64 base" ./ferry-base "$T" X=1
run "tg64 fused" ./ferry "$T" X=1
run "tg64 launched" ./ferry "$T" FERRY_NORM_AFTER=0
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/synth.txt | tail -3; cat $L/tg.txt; grep -E "^\| (model|synth|smol)" $L/gpu-check.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|DIFF|rror|gpu-check " $L/gpu-check.txt | head
