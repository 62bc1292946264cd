#!/usr/bin/env bash
# Session 10, call 5 (final build): gpu-check; the card's limits; attention
# kernels at 8K; 32B and 7B prefill/decode, this build against be21907
# (./ferry-old: the prefill path of the ninth session's final build); 32B at a
# 25 % budget (streamed); one pp8192 pass's launches (ncu).
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-old.gz && chmod +x ferry-old
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
for v in k128 k64 mma; do FERRY_FLASH=$v timeout 60 ./ferry calibrate --attention --repetitions 5 2>&1 | grep prompt >> $L/attn-speed.txt; done
wait
timeout 120 ./ferry calibrate > $L/calibrate.txt 2>&1
B="-m $M --device cuda -p 8192 -n 0 -r 3 -b 8192 --ub 8192"
for round in 1 2; do for bv in ./ferry:X=1 ./ferry-old:X=1 ./ferry:FERRY_FLASH=mma ./ferry:FERRY_FFN_F16=0; do b=${bv%%:*}; v=${bv#*:}; echo "$b $v: $(env $v timeout 80 $b bench $B 2>&1 | grep 'pp8192:')" >> $L/pp8192.txt; done; done
timeout 100 ./ferry bench -m $M --device cuda -p 2048 -n 0 -r 3 -b 8192 --ub 8192 2>&1 | grep -E "pp2048:" > $L/pp2048.txt
for b in ./ferry ./ferry-old; do echo "$b: $(timeout 100 $b bench -m $M --device cuda -p 512,2048 -n 64 -r 3 --ub 2048 2>&1 | grep -E 'pp512:|pp2048:|tg64:' | tr '\n' ' ')" >> $L/pp2048.txt; done
for b in ./ferry ./ferry-old; do echo "$b 7b: $(timeout 100 $b bench -m $M7 --device cuda -p 512,2048 -n 64 -r 3 --ub 2048 2>&1 | grep -E 'pp512:|pp2048:|tg64:' | tr '\n' ' ')" >> $L/pp2048.txt; done
timeout 150 ./ferry bench -m $M --device cuda --vram-budget 25% -p 2048 -n 16 -r 2 --ub 1024 --mode stream,sync --gpu-profile calibrated > $L/budget25.txt 2>&1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-skip 600 --launch-count 40 \
    ./ferry bench $B > $L/ncu-pp8192.txt 2>&1
grep -E "^  [a-zA-Z_0-9]|gpu__time_duration" $L/ncu-pp8192.txt | paste - - | awk '{print $1, $(NF-1), $(NF)}' > $L/ncu-pp8192-short.txt
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/attn-speed.txt $L/pp8192.txt $L/pp2048.txt; grep -E "pp2048|tg16" $L/budget25.txt | head; grep -E "GEMM|device memory" $L/calibrate.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
head -40 $L/ncu-pp8192-short.txt
