#!/usr/bin/env bash
# Session 11, call 5 (final commit: the attention kernels' step-key handling
# in one helper): gpu-check, the card's limits, 32B tg64 and decode after
# 1000 cached tokens against ./ferry-base (96c8be7), 7B tg64.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
timeout 170 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
timeout 120 ./ferry calibrate > $L/calibrate.txt 2>&1
run() { # label model binary args env...
  local label=$1 m=$2 b=$3 args=$4; shift 4
  echo "$label: $(env "$@" timeout 90 $b bench -m $m --device cuda $args 2>&1 | grep -E 'tg[0-9]+' | head -1 | cut -d'|' -f1)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"; D="-p 0 -n 32 -d 1000 -r 2"
for round in 1 2; do
  run "32b final" $M ./ferry "$T" X=1
  run "32b base" $M ./ferry-base "$T" X=1
  run "32b d1000 final" $M ./ferry "$D" X=1
  run "32b d1000 base" $M ./ferry-base "$D" X=1
done
run "7b final" $M7 ./ferry "$T" X=1
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/tg.txt; grep -E "GEMM|device memory" $L/calibrate.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
