#!/usr/bin/env bash
# Session 10, call 2: wgmma attention with the fence before the next tile's copies;
# f16 feed-forward products; RMSNorm's f16 copy. gpu-check, attention variants,
# 32B pp8192 (default vs FFN f32 vs mma attention), ncu of a pp8192 pass.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1 ) &
timeout 120 ./ferry calibrate --attention --repetitions 5 > $L/attn-speed.txt 2>&1   # compiles the kernels once
for round in 1 2; do for v in mma k64 k128 k64s k128s; do FERRY_FLASH=$v timeout 60 ./ferry calibrate --attention --repetitions 5 2>&1 | grep prompt >> $L/attn-speed.txt; done; done
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
B="bench -m $M --device cuda -p 8192 -n 0 -r 2 -b 8192 --ub 8192"
for round in 1 2; do for v in X=1 FERRY_FFN_F16=0 FERRY_FLASH=mma FERRY_FLASH=k128; do echo "$v: $(env $v timeout 60 ./ferry $B 2>&1 | grep 'pp8192:')" >> $L/pp8192.txt; done; done
timeout 90 ./ferry bench -m $M --device cuda -p 512,2048 -n 0 -r 3 --ub 2048 2>&1 | grep -E "pp(512|2048):" > $L/pp2048.txt
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 200 "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-skip 600 --launch-count 60 \
    ./ferry $B > $L/ncu-pp8192.txt 2>&1
grep -E "^  [a-zA-Z_0-9]|gpu__time_duration" $L/ncu-pp8192.txt | paste - - | awk '{print $1, $(NF-1), $(NF)}' > $L/ncu-pp8192-short.txt
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/attn-speed.txt $L/pp8192.txt $L/pp2048.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head; head -40 $L/ncu-pp8192-short.txt
