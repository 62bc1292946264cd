#!/usr/bin/env bash
# Issue #21 on the device, in the background so that it outlives one call:
#   here:   scripts/device-prep.sh; ../shared/peer/prepare.sh; cp ../shared/peer/build.sh .device/
#   call 1: setsid nohup bash .device/device-arch.sh > /tmp/arch.log 2>&1 < /dev/null &
#           then wait, and copy /tmp/arch-logs/* to $OUT (the next call likewise,
#           until /tmp/arch-logs/DONE exists)
# Runs: gpu-check (every architecture against the CPU, streamed = resident);
# calibrate; then for the qwen3-32b and gemma3-27b shapes (Q4_K_M, random
# weights, the preset's own vocabulary size): ferry and llama.cpp's
# llama-bench on the same file, resident (pp2048, tg32) and at half the
# model's size (ferry --vram-budget 50%, llama.cpp -ngl half the layers:
# pp2048, tg16), each with the peak device memory nvidia-smi saw.
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
L=/tmp/arch-logs
mkdir -p "$L"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$L/gpu.txt"
nproc >> "$L/gpu.txt"
(bash build.sh > "$L/llc-build.log" 2>&1) &
BUILD=$!

# peak MiB of device memory while "$@" runs, appended to its log as "peak_vram_mib N"
peak() {
    local log=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/vram.$$ &
    local smi=$!
    "$@" >> "$log" 2>&1
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    echo "peak_vram_mib $(sort -n /tmp/vram.$$ | tail -1)" >> "$log"
}

timeout 900 ./ferry gpu-check --synthetic /tmp/ferry-synthetic > "$L/gpu-check.txt" 2>&1
echo "gpu-check exit $?" >> "$L/gpu-check.txt"
timeout 120 ./ferry calibrate --size 1GiB > "$L/calibrate.txt" 2>&1
for m in qwen3-32b gemma3-27b; do
    ./ferry synth --preset $m --quant q4_k_m /tmp/$m.gguf > "$L/synth-$m.txt" 2>&1
    peak "$L/ferry-$m-resident.txt" timeout 300 ./ferry bench -m /tmp/$m.gguf --device cuda -p 2048 -n 32 -r 3
done
wait $BUILD
echo "peer build exit $(cat /tmp/llc-done 2>/dev/null)" >> "$L/llc-build.log"
LB=/tmp/llcb/bin/llama-bench
for m in qwen3-32b gemma3-27b; do
    layers=$(./ferry inspect /tmp/$m.gguf --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hyperparameters"]["block_count"])' 2>/dev/null || echo 64)
    peak "$L/llama-$m-resident.txt" timeout 300 $LB -m /tmp/$m.gguf -lm none -fa 1 -ub 2048 -ngl 99 -p 2048 -n 32 -r 3
    peak "$L/llama-$m-half.txt" timeout 400 $LB -m /tmp/$m.gguf -lm none -fa 1 -ub 2048 -ngl $((layers / 2)) -p 2048 -n 16 -r 2
    peak "$L/ferry-$m-half.txt" timeout 400 ./ferry bench -m /tmp/$m.gguf --device cuda --vram-budget 50% \
        -p 2048 -n 16 -r 2 --mode stream --gpu-profile calibrated
done
touch "$L/DONE"
