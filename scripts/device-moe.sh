#!/usr/bin/env bash
# Issue #22 (mixtures of experts) and #23's open check on the device, in the
# background so that it outlives one call.
#   here:   scripts/device-prep.sh; ../shared/peer/prepare.sh; cp ../shared/peer/build.sh .device/;
#           (cd .device && tar cJf llc.tar.xz llc && rm -rf llc) keeps the carry under 64 MiB
#   call:   setsid nohup bash .device/device-moe.sh PHASES > /tmp/moe.log 2>&1 < /dev/null &
#           then wait for /tmp/moe-logs/DONE and tar /tmp/moe-logs into $OUT.
# PHASES (default: check q4km moe):
#   check   gpu-check (CUDA vs CPU, streamed = resident, hybrid, parked) on two
#           layers of the qwen3-30b-a3b shape (Q4_K_M: 128 experts, 8 per
#           token, f32 router) and on mixtral-mini (Q8_0, 8 choose 2)
#   q4km    32B-shape Q4_K_M resident tg32, ferry and llama.cpp (the decode
#           GEMVs' all-format build split since the last measurement)
#   moe     qwen3-30b-a3b Q4_K_M: resident pp512 and tg32; ferry within
#           budgets ($BUDGETS: 8233 MiB, llama.cpp's peak with -ncmoe 30,
#           and 4 GiB); llama.cpp with -ncmoe 30 and 42 and -ot exps=CPU
# Every run's log ends with the peak device memory nvidia-smi saw.
set -uo pipefail
SRC=$(cd "$(dirname "$0")" && pwd)
W=/tmp/dm
mkdir -p $W
cp "$SRC/ferry" $W/
[ -f "$SRC/build.sh" ] && cp "$SRC/build.sh" $W/
[ -d "$SRC/llc" ] && [ ! -d $W/llc ] && cp -r "$SRC/llc" $W/
# The peer's source travels compressed where the carry limit is tight.
[ -f "$SRC/llc.tar.xz" ] && [ ! -d $W/llc ] && tar xJf "$SRC/llc.tar.xz" -C $W
cd $W
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
PHASES=${*:-check q4km moe}
L=/tmp/moe-logs
rm -rf "$L"
mkdir -p "$L"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
    date -u
} > "$L/gpu.txt"
has() { [[ " $PHASES " == *" $1 "* ]]; }
BUILD=
if has q4km || has moe; then
    (bash build.sh "$W/llc" > "$L/llc-build.log" 2>&1) &
    BUILD=$!
fi
LB=/tmp/llcb/bin/llama-bench
llama_ready() { [ -n "$BUILD" ] && wait $BUILD; BUILD=; }

# peak MiB of device memory while "$@" runs, appended to its log
peak() {
    local log=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/vram.$$ &
    local smi=$!
    echo "+ $*" >> "$log"
    "$@" >> "$log" 2>&1
    echo "exit $?" >> "$log"
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    echo "peak_vram_mib $(sort -n /tmp/vram.$$ | tail -1)" >> "$log"
}
peak_of() { grep peak_vram_mib "$1" | tail -1 | awk '{print $2}'; }

if has check; then
    mkdir -p /tmp/mc
    ./ferry synth --preset qwen3-30b-a3b --quant q4_k_m --layers 2 /tmp/mc/30b-a3b-2-layers.gguf > /dev/null 2>&1
    ./ferry synth --preset mixtral-mini --quant q8_0 /tmp/mc/mixtral-mini.gguf > /dev/null 2>&1
    timeout 600 ./ferry gpu-check /tmp/mc/*.gguf > "$L/gpu-check.txt" 2>&1
    echo "gpu-check exit $?" >> "$L/gpu-check.txt"
    rm -rf /tmp/mc
fi
# The built-in H100 profile: calibrating while llama.cpp builds in the
# background measures the CPU under that load (call of 2026-12-08 00:42).
PROFILE=${PROFILE:-h100}

if has q4km; then
    f=/tmp/32b-q4_k_m.gguf
    ./ferry synth --preset qwen2.5-32b --quant q4_k_m $f > "$L/synth-32b.txt" 2>&1
    peak "$L/ferry-32b-q4km.txt" timeout 200 ./ferry bench -m $f --device cuda -p 0 -n 32 -r 3
    llama_ready
    peak "$L/llama-32b-q4km.txt" timeout 200 $LB -m $f -lm none -fa 1 -ngl 99 -p 0 -n 32 -r 3
    rm -f $f
fi

if has moe; then
    f=/tmp/30b-a3b-q4_k_m.gguf
    ./ferry synth --preset qwen3-30b-a3b --quant q4_k_m $f > "$L/synth-30b-a3b.txt" 2>&1
    ls -la $f >> "$L/synth-30b-a3b.txt"
    peak "$L/ferry-moe-resident.txt" timeout 300 ./ferry bench -m $f --device cuda -p 512 -n 32 -r 2
    # Budgets: llama.cpp's peak with -ncmoe 30 in the previous call (8233
    # MiB), and 4 GiB (llama.cpp: -ncmoe 42).
    for budget in ${BUDGETS:-8233MiB 4GiB}; do
        ./ferry plan -m $f --vram-budget $budget --gpu-profile $PROFILE -c 1024 \
            > "$L/plan-moe-$budget.txt" 2>&1
        peak "$L/ferry-moe-$budget.txt" timeout 300 ./ferry bench -m $f --device cuda --vram-budget $budget \
            -p 512 -n 16 -r 2 --gpu-profile $PROFILE
    done
    llama_ready
    peak "$L/llama-moe-resident.txt" timeout 300 $LB -m $f -lm none -fa 1 -ngl 99 -p 512 -n 32 -r 2
    for n in 30 42; do
        peak "$L/llama-moe-ncmoe$n.txt" timeout 300 $LB -m $f -lm none -fa 1 -ngl 99 -ncmoe $n -p 512 -n 16 -r 2
    done
    peak "$L/llama-moe-expscpu.txt" timeout 300 $LB -m $f -lm none -fa 1 -ngl 99 -ot exps=CPU -p 512 -n 16 -r 2
    rm -f $f
fi
touch "$L/DONE"
