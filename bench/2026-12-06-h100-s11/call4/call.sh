#!/usr/bin/env bash
# Session 11, call 4: decode attention with lanes over dimensions
# (attention_lanes; FERRY_ATTN_LANES=0: the previous kernel); gpu-check with
# its new Lanes rows; 32B/7B tg64 and 32B decode at 1000 cached tokens
# against the tenth session's final build (./ferry-base, 96c8be7).
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
timeout 170 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label model binary args env...
  local label=$1 m=$2 b=$3 args=$4; shift 4
  echo "$label: $(env "$@" timeout 90 $b bench -m $m --device cuda $args 2>&1 | grep -E 'tg[0-9]+' | tr '\n' ' ')" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"; D="-p 0 -n 32 -d 1000 -r 2"
for round in 1 2 3; do
  run "32b base" $M ./ferry-base "$T" X=1
  run "32b lanes" $M ./ferry "$T" X=1
  run "32b lanes-off" $M ./ferry "$T" FERRY_ATTN_LANES=0
done
for round in 1 2; do
  run "7b base" $M7 ./ferry-base "$T" X=1
  run "7b lanes" $M7 ./ferry "$T" X=1
  run "32b d1000 base" $M ./ferry-base "$D" X=1
  run "32b d1000 lanes" $M ./ferry "$D" X=1
done
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/tg.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror|Lanes" $L/gpu-check.txt | head -20
