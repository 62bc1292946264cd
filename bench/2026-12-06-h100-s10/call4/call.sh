#!/usr/bin/env bash
# Session 10, call 4: swizzled wgmma attention only (unrolled tile copies, the
# mask behind one branch, the rescale skipped when no maximum moved): variants,
# gpu-check, the card's limits, 32B pp512/2048/8192, tg64 (7B, 32B).
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
timeout 120 ./ferry calibrate --attention --repetitions 3 > $L/attn-speed.txt 2>&1   # compiles the kernels once
for round in 1 2; do for v in k128s k128 k64s k64 mma; do FERRY_FLASH=$v timeout 60 ./ferry calibrate --attention --repetitions 5 2>&1 | grep prompt >> $L/attn-speed.txt; done; done
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
timeout 120 ./ferry calibrate > $L/calibrate.txt 2>&1
B="bench -m $M --device cuda -p 8192 -n 0 -r 3 -b 8192 --ub 8192"
for round in 1 2; do for v in X=1 FERRY_FLASH=mma; do echo "$v: $(env $v timeout 80 ./ferry $B 2>&1 | grep 'pp8192:')" >> $L/pp8192.txt; done; done
timeout 100 ./ferry bench -m $M --device cuda -p 512,2048 -n 0 -r 3 --ub 2048 2>&1 | grep -E "pp(512|2048):" > $L/pp2048.txt
timeout 100 ./ferry bench -m $M --device cuda -p 2048 -n 0 -r 3 -b 8192 --ub 8192 2>&1 | grep -E "pp2048:" >> $L/pp2048.txt
for m in $M7 $M; do echo "$(basename $m): $(timeout 40 ./ferry bench -m $m --device cuda -p 16 -n 64 -r 3 2>&1 | grep 'tg64:')" >> $L/tg.txt; done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
timeout 120 "$NCU" --kernel-name regex:flash --launch-skip 1 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats ./ferry calibrate --attention --repetitions 1 > $L/ncu-attn-k128s.txt 2>&1
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/attn-speed.txt $L/pp8192.txt $L/pp2048.txt $L/tg.txt; grep -E "GEMM|device memory" $L/calibrate.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
grep -E "Duration|SM Frequency|Compute \(SM\) Throughput|Issue Slots Busy|Executed Instructions  |Tensor is" $L/ncu-attn-k128s.txt
