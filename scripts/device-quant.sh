#!/usr/bin/env bash
# Issue #23 on the device, in the background so that it outlives one call.
#   here:   scripts/device-prep.sh; ../shared/peer/prepare.sh; cp ../shared/peer/build.sh .device/
#   call:   setsid nohup bash .device/device-quant.sh PHASES > /tmp/quant.log 2>&1 < /dev/null &
#           then wait for /tmp/quant-logs/DONE and tar /tmp/quant-logs into $OUT.
#           The script runs from its own copy (/tmp/dq), so a later call that
#           copies .device anew does not pull the binary from under it.
# PHASES (default: check ferry llama):
#   check   gpu-check: every weight type against the CPU (tiny models, and two
#           layers of the 32B shape in Q4_K_M, Q5_K_M and each lane format)
#   lanes   gpu-check on two layers of the 32B shape in Q5_K_M, each lane
#           format and the 1-3 bit i-quants (a UD-style mix, and every one of
#           them in one file) only (a shorter call)
#   ferry   calibrate; for each 32B-shaped file (Q5_K_M, Q8_0, IQ4_XS, Q4_0,
#           UD-IQ2_XXS; QUANTS overrides; one on
#           disk at a time): resident pp2048 and tg32; for Q5_K_M also the
#           seed's case, a 22 GiB budget, with the plan's prediction
#   llama   llama.cpp's llama-bench on the same files and tests (built in the
#           background from the start)
# Every run's log ends with the peak device memory nvidia-smi saw.
set -uo pipefail
SRC=$(cd "$(dirname "$0")" && pwd)
W=/tmp/dq
mkdir -p $W
cp "$SRC/ferry" $W/
[ -f "$SRC/build.sh" ] && cp "$SRC/build.sh" $W/
[ -d "$SRC/llc" ] && [ ! -d $W/llc ] && cp -r "$SRC/llc" $W/
cd $W
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
PHASES=${*:-check ferry llama}
L=/tmp/quant-logs
rm -rf "$L"
mkdir -p "$L"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$L/gpu.txt"
nproc >> "$L/gpu.txt"
date -u >> "$L/gpu.txt"
has() { [[ " $PHASES " == *" $1 "* ]]; }
BUILD=
if has llama; then
    (bash build.sh "$W/llc" > "$L/llc-build.log" 2>&1) &
    BUILD=$!
fi

# peak MiB of device memory while "$@" runs, appended to its log
peak() {
    local log=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/vram.$$ &
    local smi=$!
    echo "+ $*" >> "$log"
    "$@" >> "$log" 2>&1
    echo "exit $?" >> "$log"
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    echo "peak_vram_mib $(sort -n /tmp/vram.$$ | tail -1)" >> "$L/$(basename "$log" .txt).peak"
    echo "peak_vram_mib $(sort -n /tmp/vram.$$ | tail -1)" >> "$log"
}

if has check; then
    timeout 900 ./ferry gpu-check --synthetic /tmp/ferry-synthetic > "$L/gpu-check.txt" 2>&1
    echo "gpu-check exit $?" >> "$L/gpu-check.txt"
    rm -rf /tmp/ferry-synthetic
fi
# A shorter check: two layers of the 32B shape in each type the persistent
# GEMVs read through a lane format (and Q5_K_M), against the CPU.
if has lanes; then
    mkdir -p /tmp/lanes
    for q in q5_k_m q8_0 q4_0 q4_1 q5_0 iq4_nl iq4_xs ud-iq2_xxs iq-every; do
        ./ferry synth --preset qwen2.5-32b --quant $q --layers 2 /tmp/lanes/32b-2-layers-$q.gguf > /dev/null 2>&1
    done
    timeout 600 ./ferry gpu-check /tmp/lanes/*.gguf > "$L/gpu-check-lanes.txt" 2>&1
    echo "gpu-check exit $?" >> "$L/gpu-check-lanes.txt"
    rm -rf /tmp/lanes
fi
if has ferry; then
    timeout 300 ./ferry calibrate --size 1GiB > "$L/calibrate.txt" 2>&1
fi
for q in ${QUANTS:-q5_k_m q8_0 iq4_xs q4_0 ud-iq2_xxs}; do
    has ferry || has llama || break
    f=/tmp/32b-$q.gguf
    ./ferry synth --preset qwen2.5-32b --quant $q $f > "$L/synth-$q.txt" 2>&1
    # Q5_K_M in full; the others decode only (their prefill is unchanged
    # since the previous measurement), to fit one call.
    if [ $q = q5_k_m ]; then P=${Q5_PROMPT:-2048}; else P=0; fi
    if has ferry; then
        peak "$L/ferry-$q-resident.txt" timeout 300 ./ferry bench -m $f --device cuda -p $P -n 32 -r 2 --ub 2048
        if [ $q = q5_k_m ]; then
            # The plan for the bench's own context (2048 + 1) and micro-batch.
            ./ferry plan -m $f --vram-budget 22GiB --gpu-profile calibrated -c 2049 --ub 2048 \
                > "$L/plan-$q-22g.txt" 2>&1
            # 128 steps: the layers parked after the prompt arrive during the
            # first steps (4 GiB at the copy rate), which 16 steps cannot amortize.
            peak "$L/ferry-$q-22g.txt" timeout 300 ./ferry bench -m $f --device cuda --vram-budget 22GiB \
                -p 2048 -n 128 -r 2 --ub 2048 --mode stream --gpu-profile calibrated
        fi
    fi
    if has llama; then
        [ -n "$BUILD" ] && wait $BUILD && BUILD=
        LB=/tmp/llcb/bin/llama-bench
        peak "$L/llama-$q-resident.txt" timeout 300 $LB -m $f -lm none -fa 1 -ub 2048 -ngl 99 -p $P -n 32 -r 2
    fi
    rm -f $f
done
touch "$L/DONE"
