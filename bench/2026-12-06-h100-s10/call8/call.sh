#!/usr/bin/env bash
# Session 10, call 8 (final build: exp2 without the denormal range check, attention helpers shared):
# gpu-check, the card's limits, attention at 8K, 32B pp8192
# against be21907 (./ferry-old), pp2048, tg64.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-old.gz && chmod +x ferry-old
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1 ) &
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
for v in wgmma mma; do FERRY_FLASH=$v timeout 60 ./ferry calibrate --attention --repetitions 5 2>&1 | grep prompt >> $L/attn-speed.txt; done
wait
timeout 120 ./ferry calibrate > $L/calibrate.txt 2>&1
B="-m $M --device cuda -p 8192 -n 0 -r 3 -b 8192 --ub 8192"
for round in 1 2; do for b in ./ferry ./ferry-old; do echo "$b: $(timeout 80 $b bench $B 2>&1 | grep 'pp8192:')" >> $L/pp8192.txt; done; done
echo "./ferry: $(timeout 100 ./ferry bench -m $M --device cuda -p 2048 -n 64 -r 3 -b 8192 --ub 8192 2>&1 | grep -E 'pp2048:|tg64:' | tr '\n' ' ')" > $L/pp2048.txt
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/attn-speed.txt $L/pp8192.txt $L/pp2048.txt; grep -E "GEMM|device memory" $L/calibrate.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
