#!/usr/bin/env bash
# Session 11, call 3: the o projection asks L2 for the feed-forward's first
# rows (FERRY_L2_AHEAD MiB over gate and up); 32B/7B tg64 against the tenth
# session's final build (./ferry-base, 96c8be7); gpu-check with 16 MiB ahead.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
FERRY_L2_AHEAD=16 timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label model binary env...
  local label=$1 m=$2 b=$3; shift 3
  echo "$label: $(env "$@" timeout 90 $b bench -m $m --device cuda -p 16 -n 64 -r 3 2>&1 | grep 'tg64:')" >> $L/tg.txt
}
for round in 1 2 3; do
  run "32b base" $M ./ferry-base X=1
  run "32b ahead0" $M ./ferry FERRY_L2_AHEAD=0
  run "32b ahead8" $M ./ferry FERRY_L2_AHEAD=8
  run "32b ahead16" $M ./ferry FERRY_L2_AHEAD=16
  run "32b ahead24" $M ./ferry FERRY_L2_AHEAD=24
done
for round in 1 2; do
  run "7b base" $M7 ./ferry-base X=1
  run "7b ahead8" $M7 ./ferry FERRY_L2_AHEAD=8
  run "7b ahead16" $M7 ./ferry FERRY_L2_AHEAD=16
done
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/tg.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
