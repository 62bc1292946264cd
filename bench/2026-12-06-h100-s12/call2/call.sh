#!/usr/bin/env bash
# Session 12, call 2: decode activations kept from step to step (Session
# workspace) in every ./ferry variant; the norms after the o and down GEMVs
# computed by their last blocks (default, leaner tail: one fence per block,
# the norm's weights loaded before the wait) against launched
# (FERRY_NORM_AFTER=0), and ./ferry-base (96c8be7). gpu-check's new column
# compares fused + kept buffers with launched norms + fresh buffers.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
(which nsys ncu; ls /usr/local/cuda/bin | grep -i -E "nsys|ncu") > $L/tools.txt 2>&1
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
/usr/bin/time -f "gpu-check %e s" timeout 280 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label model binary args env...
  local label=$1 m=$2 b=$3 args=$4; shift 4
  echo "$label: $(env "$@" timeout 60 $b bench -m $m --device cuda $args 2>&1 | grep -E 'tg[0-9]+|rror' | head -1 | cut -d'|' -f1-9)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"
for m in $M $M7; do
  run "$(basename $m) fused" $m ./ferry "$T" X=1
  run "$(basename $m) launched" $m ./ferry "$T" FERRY_NORM_AFTER=0
  run "$(basename $m) base" $m ./ferry-base "$T" X=1
  run "$(basename $m) launched" $m ./ferry "$T" FERRY_NORM_AFTER=0
  run "$(basename $m) base" $m ./ferry-base "$T" X=1
  run "$(basename $m) fused" $m ./ferry "$T" X=1
  run "$(basename $m) base" $m ./ferry-base "$T" X=1
  run "$(basename $m) fused" $m ./ferry "$T" X=1
  run "$(basename $m) launched" $m ./ferry "$T" FERRY_NORM_AFTER=0
  run "$(basename $m) launched" $m ./ferry "$T" FERRY_NORM_AFTER=0
  run "$(basename $m) fused" $m ./ferry "$T" X=1
  run "$(basename $m) base" $m ./ferry-base "$T" X=1
done
timeout 120 ./ferry calibrate > $L/calibrate.txt 2>&1
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/tools.txt; tail -2 $L/synth.txt; cat $L/tg.txt; grep -E "^\| (model|synth|smol)" $L/gpu-check.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|DIFF|rror|gpu-check " $L/gpu-check.txt | head; grep -i -E "bandwidth|GB/s|TFLOP" $L/calibrate.txt | head -5
