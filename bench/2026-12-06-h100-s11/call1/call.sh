#!/usr/bin/env bash
# Session 11, call 1: gpu-check of the fused-norm build; 32B/7B tg64 variants
# against the tenth session's final build (./ferry-base, 96c8be7).
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label model binary env...
  local label=$1 m=$2 b=$3; shift 3
  echo "$label: $(env "$@" timeout 90 $b bench -m $m --device cuda -p 16 -n 64 -r 3 2>&1 | grep 'tg64:')" >> $L/tg.txt
}
for round in 1 2; do
  run "32b base" $M ./ferry-base X=1
  run "32b fused" $M ./ferry X=1
  run "32b unfused" $M ./ferry FERRY_NORM_FUSED=0
  run "32b fused+prefetch-all4" $M ./ferry FERRY_GEMV_PREFETCH_ALL=4
  run "32b unfused+norm-twice" $M ./ferry FERRY_NORM_FUSED=0 FERRY_DECODE_TWICE=norm
  run "32b fused+quant-twice" $M ./ferry FERRY_DECODE_TWICE=quant
  run "7b base" $M7 ./ferry-base X=1
  run "7b fused" $M7 ./ferry X=1
  run "7b fused+prefetch-all4" $M7 ./ferry FERRY_GEMV_PREFETCH_ALL=4
done
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/tg.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
