#!/usr/bin/env bash
# Issue #21 on the device, in the background so that it outlives one call.
#   here:   scripts/device-prep.sh; ../shared/peer/prepare.sh; cp ../shared/peer/build.sh .device/
#   call:   setsid nohup bash .device/device-arch.sh PHASES > /tmp/arch.log 2>&1 < /dev/null &
#           then wait for /tmp/arch-logs/DONE and tar /tmp/arch-logs into $OUT
#           (a later call copies .device anew: a script still running then
#           loses ./ferry, so wait for DONE within the call)
# PHASES (default: check ferry llama):
#   check   gpu-check: every architecture against the CPU, streamed = resident,
#           the attention kernels
#   ferry   calibrate; qwen3-32b and gemma3-27b shapes (Q4_K_M, random weights,
#           the presets' own vocabulary sizes): resident pp2048 (micro-batches
#           of 512 and of 2048) and tg32; at half the model's size pp2048
#           (micro-batches of 2048) and tg16
#   quick   the ferry phase's resident runs with micro-batches of 2048 only
#   llama   llama.cpp's llama-bench on the same files (built in the background
#           from the start): resident (-ngl 99) and half the layers (-ngl N/2)
# Every run's log ends with the peak device memory nvidia-smi saw.
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
PHASES=${*:-check ferry llama}
L=/tmp/arch-logs
rm -rf "$L"
mkdir -p "$L"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$L/gpu.txt"
nproc >> "$L/gpu.txt"
has() { [[ " $PHASES " == *" $1 "* ]]; }
if has llama; then
    (bash build.sh "$PWD/llc" > "$L/llc-build.log" 2>&1) &
    BUILD=$!
fi

# peak MiB of device memory while "$@" runs, appended to its log
peak() {
    local log=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/vram.$$ &
    local smi=$!
    "$@" >> "$log" 2>&1
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    echo "peak_vram_mib $(sort -n /tmp/vram.$$ | tail -1)" >> "$log"
}
models() {
    for m in qwen3-32b gemma3-27b; do
        [ -f /tmp/$m.gguf ] || ./ferry synth --preset $m --quant q4_k_m /tmp/$m.gguf > "$L/synth-$m.txt" 2>&1
    done
}

if has check; then
    timeout 900 ./ferry gpu-check --synthetic /tmp/ferry-synthetic > "$L/gpu-check.txt" 2>&1
    echo "gpu-check exit $?" >> "$L/gpu-check.txt"
fi
if has ferry; then
    timeout 120 ./ferry calibrate --size 1GiB > "$L/calibrate.txt" 2>&1
    models
    for m in qwen3-32b gemma3-27b; do
        for ub in 512 2048; do
            peak "$L/ferry-$m-resident-ub$ub.txt" timeout 300 ./ferry bench -m /tmp/$m.gguf --device cuda \
                -p 2048 -n 32 -r 3 --ub $ub
        done
    done
    # Decode within a budget runs layers on the CPU: not beside the build.
    if has llama; then wait $BUILD; fi
    for m in qwen3-32b gemma3-27b; do
        peak "$L/ferry-$m-half.txt" timeout 400 ./ferry bench -m /tmp/$m.gguf --device cuda --vram-budget 50% \
            -p 2048 -n 16 -r 2 --ub 2048 --mode stream --gpu-profile calibrated
    done
fi
if has quick; then
    models
    for m in qwen3-32b gemma3-27b; do
        peak "$L/ferry-$m-resident-ub2048.txt" timeout 300 ./ferry bench -m /tmp/$m.gguf --device cuda \
            -p 2048 -n 32 -r 2 --ub 2048
    done
fi
if has llama; then
    models
    wait $BUILD
    echo "peer build exit $(cat /tmp/llc-done 2>/dev/null)" >> "$L/llc-build.log"
    LB=/tmp/llcb/bin/llama-bench
    for m in qwen3-32b gemma3-27b; do
        layers=$(./ferry inspect /tmp/$m.gguf --json | grep -o '"block_count": *[0-9]*' | head -1 | grep -o '[0-9]*$')
        peak "$L/llama-$m-resident.txt" timeout 300 $LB -m /tmp/$m.gguf -lm none -fa 1 -ub 2048 -ngl 99 -p 2048 -n 32 -r 3
        peak "$L/llama-$m-half.txt" timeout 400 $LB -m /tmp/$m.gguf -lm none -fa 1 -ub 2048 -ngl $((layers / 2)) -p 2048 -n 16 -r 2
    done
fi
touch "$L/DONE"
