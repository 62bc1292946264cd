#!/usr/bin/env bash
# Session 9, call 7 (final build): gpu-check; tg64 HEAD (be21907, ferry-old) vs this build vs its ring off, 2 rounds; tg32 at 8K.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-old.gz && chmod +x ferry-old
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 > /dev/null 2>&1 &
./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > /dev/null 2>&1 &
timeout 80 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $OUT/gpu-check.txt 2>&1
wait
for round in 1 2; do
  for bv in ./ferry-old:X=1 ./ferry:X=1 ./ferry:FERRY_GEMV_RING=0; do
    b=${bv%%:*}; v=${bv#*:}
    for m in $M7 $M; do
      echo "$b $v $(basename $m): $(env $v timeout 30 $b bench -m $m --device cuda -p 16 -n 64 -r 3 2>&1 | grep 'tg64:')" >> $OUT/ab.txt
    done
  done
done
echo "./ferry: $(timeout 30 ./ferry bench -m $M --device cuda -p 0 -n 32 -d 8192 -r 2 2>&1 | grep 'tg32' | head -1)" > $OUT/depth.txt
cat $OUT/ab.txt $OUT/depth.txt; grep -c "| pass" $OUT/gpu-check.txt
