#!/usr/bin/env bash
# Session 10, call 3: swizzled wgmma attention (checked under both V offset
# orders), Nsight Compute sections of the attention kernels, variants timed,
# gpu-check, 32B pp8192 with the f16 feed-forward taking RMSNorm's f16 copy.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1 ) &
timeout 120 ./ferry calibrate --attention --repetitions 3 > $L/attn-speed.txt 2>&1   # compiles the kernels once
for l in 0 2; do for v in k128sz k64z; do FERRY_FLASH=$v FERRY_FLASH_LAYOUT=$l timeout 60 ./ferry gpu-check > $L/attn-$v-layout$l.txt 2>&1; echo "$v layout $l: rc $? fails $(grep -c FAIL $L/attn-$v-layout$l.txt) passes $(grep -c '| pass' $L/attn-$v-layout$l.txt)" >> $L/layout.txt; done; done
SL=0; grep -q "k128sz layout 0: rc 0" $L/layout.txt || SL=2
echo "swizzled layout $SL" >> $L/layout.txt
for round in 1 2; do for v in mma k128s k128 k128sz k128z k64sz k64z; do FERRY_FLASH_LAYOUT=$( [[ $v == *z ]] && echo $SL || echo 0 ) FERRY_FLASH=$v timeout 60 ./ferry calibrate --attention --repetitions 5 2>&1 | grep prompt >> $L/attn-speed.txt; done; done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
for v in k128s k128sz mma; do
  FERRY_FLASH_LAYOUT=$( [[ $v == *z ]] && echo $SL || echo 0 ) FERRY_FLASH=$v timeout 120 "$NCU" --kernel-name regex:flash --launch-skip 1 --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy --section MemoryWorkloadAnalysis_Tables --section InstructionStats ./ferry calibrate --attention --repetitions 1 > $L/ncu-attn-$v.txt 2>&1
done
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
B="bench -m $M --device cuda -p 8192 -n 0 -r 2 -b 8192 --ub 8192"
for round in 1 2; do for v in X=1 FERRY_FFN_F16=0 FERRY_FLASH=k128sz; do echo "$v: $(env FERRY_FLASH_LAYOUT=$( [[ $v == *z ]] && echo $SL || echo 0 ) $v timeout 60 ./ferry $B 2>&1 | grep 'pp8192:')" >> $L/pp8192.txt; done; done
timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-skip 600 --launch-count 40 \
    ./ferry $B > $L/ncu-pp8192.txt 2>&1
grep -E "^  [a-zA-Z_0-9]|gpu__time_duration" $L/ncu-pp8192.txt | paste - - | awk '{print $1, $(NF-1), $(NF)}' > $L/ncu-pp8192-short.txt
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/layout.txt $L/attn-speed.txt $L/pp8192.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror" $L/gpu-check.txt | head
for v in k128s k128sz mma; do echo "== $v"; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Active Warps Per|Warp Cycles Per Issued|Stall|Bank|Executed Ipc A|L1/TEX Hit|Achieved Occ" $L/ncu-attn-$v.txt | head -30; done
head -40 $L/ncu-pp8192-short.txt
