#!/usr/bin/env bash
# Device benchmarks for the streaming engine (staged by scripts/device-prep.sh;
# run as `bash .device/device-bench.sh PHASE` with carry .device). Logs go to $OUT.
#   check   gpu-check (CUDA vs CPU, streamed = resident, hybrid GPU+CPU)
#   check0  gpu-check with FERRY_GEMV_BOUND=0 (no register bound)
#   attn    calibrate, with the prompt-attention kernel timed at 8K
#   pprofile per-launch times of a 32B-shape pp2048 pass (ncu)
#   main    calibrate; 32B-shape Q4_K_M: full-resident and 25 % budget
#           (prefill stream/sync/static, decode stream/static)
#   sweep   prefill t/s against the VRAM budget for each mode (the plot)
#   serve7b `ferry serve` within a budget (hybrid engine), two parallel requests
#   kernels resident 7B-shape prefill/decode speed, attention kernels side by
#           side, per-kernel decode times (ncu)
#   prefill5 the fifth session's measurements (resident 32B/7B, 25 % budget, profile)
#   dprofile per-launch times and DRAM bytes of a 32B-shape decode step (ncu)
#   decode5 resident 7B/32B decode and one 32B step's launches (ncu)
#   gemvstat stall reasons, issue rates and memory pipes of the decode GEMVs
#           (ncu sections)
#   ab      this build (./ferry) against the previous one (./ferry-old, when
#           staged): gpu-check, tg64 7B/32B interleaved, one 32B step's launches
#   pipe    streaming decode GEMVs: gpu-check, against the register-load
#           kernels (FERRY_GEMV=smem), stage sizes, one 32B step's launches
#   pp32    32B shape: resident pp512/2048/8192 only
#   pp8k    32B shape: resident pp8192 with 4096- and 8192-token micro-batches
#   big32   32B shape: resident pp512/2048/8192 + tg
#   budget32 32B shape at 25 %: pp2048/8192 streamed, decode stream vs static
#   final32 32B shape: synth time, resident tg, 25 % budget at a 2K context
#   decode  resident 7B/32B tg128, 32B at 25 % (stream vs static)
#   nopin   32B at 25 % from pageable host memory (--no-pin)
#   residency 32B at budgets near llama.cpp's 16/64 resident layers (pp2048, tg16)
#   gemv    decode GEMVs: shared-memory kernels + fused epilogues vs warp-per-row
#   handover 32B at 25 %: decode with layers parked after prefill; --no-pin
#   bound   shared-memory GEMVs with their registers held to 3 or 4 blocks per SM
#   budget  peak device memory against the budget (the ledger enforces it),
#           traces, and `ferry run` within a budget (streamed prefill + hybrid decode)
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
OUTDIR=${OUT:-/tmp}
M=/tmp/ferry-32b-q4km.gguf
# This machine's calibration (--gpu-profile calibrated), measured once.
calibrated() {
    [ -f ~/.cache/ferry/machine.json ] || timeout 120 ./ferry calibrate 2>&1 | tee "$OUTDIR/calibrate.txt"
}
# Resident tg64 of the 7B and 32B shapes under each environment setting
# (same binary, same machine): tg_variants LOG "VAR=value" ...
tg_variants() {
    local log=$1; shift
    for v in "$@"; do
        for m in /tmp/ferry-7b-q4km.gguf "$M"; do
            echo "$v $(basename "$m"): $(env $v timeout 60 ./ferry bench -m "$m" --device cuda -p 16 -n 64 -r 3 2>&1 | grep tg64)" | tee -a "$log"
        done
    done
}
synth7b() {
    M7=/tmp/ferry-7b-q4km.gguf
    [ -f "$M7" ] || ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf "$M7" 2>&1 | tail -1
}
# Registers and spills of every kernel (ptxas on the cached PTX) into LOG.
ptxas_report() {
    local ptxas
    ptxas=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
    for f in ~/.cache/ferry/kernels/*.ptx; do "$ptxas" -arch=sm_90a -v "$f" -o /dev/null 2>&1 | grep -E "entry|Used|spill"; done > "$1" 2>&1
}
synth() {
    [ -f "$M" ] || { /usr/bin/time -f "synth: %e s" ./ferry synth --preset qwen2.5-32b --quant q4_k_m "$M"; ls -l "$M"; }
}
for phase in "$@"; do
case "$phase" in
check0)
    # gpu-check with the shared-memory GEMVs unbounded (the default holds 3 blocks per SM).
    FERRY_GEMV_BOUND=0 timeout 300 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic 2>&1 | tee "$OUTDIR/gpu-check-bound0.txt"
    ;;
attn)
    # Calibration, with the prompt-attention kernel timed alone at 8K.
    timeout 180 ./ferry calibrate 2>&1 | tee "$OUTDIR/calibrate.txt"
    ;;
pprofile)
    # Where a 32B-shape pp2048 pass spends its time: every launch of a few
    # layers in the middle of the pass (Nsight Compute, durations only).
    synth > /dev/null 2>&1
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 400 "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-skip ${SKIP:-400} --launch-count ${COUNT:-160} \
        ./ferry bench -m "$M" --device cuda -p 2048 -n 0 -r 1 --ub 2048 > "$OUTDIR/ncu-prefill-32b.txt" 2>&1
    grep -E "^  [a-zA-Z_0-9]|gpu__time_duration" "$OUTDIR/ncu-prefill-32b.txt" | paste - - | awk '{print $1, $(NF)}' | head -200
    ;;
check)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt"
    timeout 300 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic 2>&1 | tee "$OUTDIR/gpu-check.txt"
    ;;
main)
    nproc; free -g | head -2
    timeout 120 ./ferry calibrate --size 1GiB 2>&1 | tee "$OUTDIR/calibrate.txt"
    synth 2>&1 | tee "$OUTDIR/synth.txt"
    timeout 200 ./ferry bench -m "$M" --device cuda -p 512,2048 -n 32 -r 3 2>&1 | tee "$OUTDIR/resident.txt"
    timeout 400 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 512,2048 -n 32 -r 3 \
        --mode stream,sync,static --gpu-profile calibrated 2>&1 | tee "$OUTDIR/budget25.txt"
    ;;
sweep)
    synth > /dev/null 2>&1
    timeout 560 ./ferry bench -m "$M" --device cuda --vram-budget 15%,25%,40%,60%,80% -p 512 -n 0 -r 2 \
        --mode stream,sync,static --gpu-profile calibrated 2>&1 | tee "$OUTDIR/sweep.txt"
    ;;
budget)
    synth > /dev/null 2>&1
    calibrated
    for b in 15 25 60; do
        timeout 120 ./ferry bench -m "$M" --device cuda --vram-budget $b% -p 512 -n 16 -r 2 \
            --mode stream,sync --gpu-profile calibrated --trace "$OUTDIR/trace-$b.json" 2>&1 | tee -a "$OUTDIR/budget-peak.txt"
        ./ferry trace-svg "$OUTDIR/trace-$b.json" --title "32B Q4_K_M, pp512 streamed, budget $b % of the model"
    done
    timeout 120 ./ferry run -m "$M" --vram-budget 25% -c 1024 -n 16 --temp 0 -v --trace "$OUTDIR/run-trace.json" \
        -p "The streaming engine copies each layer once per prompt, so" 2>&1 | tee "$OUTDIR/run-budget.txt"
    ./ferry trace-svg "$OUTDIR/run-trace.json"
    ;;
final7b)
    # The budget phase on a 7B shape with SmolLM2's tokenizer (so `ferry run` works).
    M7=/tmp/ferry-7b-q4km.gguf
    [ -f "$M7" ] || ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf "$M7" 2>&1 | tail -1
    calibrated
    # The 7B shape with SmolLM2's vocabulary needs about a third of its size.
    for b in 35 50 70; do
        timeout 90 ./ferry bench -m "$M7" --device cuda --vram-budget $b% -p 512 -n 16 -r 2 \
            --mode stream,sync --gpu-profile calibrated --trace "$OUTDIR/trace7b-$b.json" 2>&1 | grep -v "^$" | tee -a "$OUTDIR/budget-peak-7b.txt"
        ./ferry trace-svg "$OUTDIR/trace7b-$b.json" --title "7B Q4_K_M, pp512 streamed, budget $b % of the model"
    done
    timeout 90 ./ferry run -m "$M7" --vram-budget 40% -c 1024 -n 16 --temp 0 -v --trace "$OUTDIR/run-trace-7b.json" \
        -p "The streaming engine copies each layer once per prompt, so" 2>&1 | tee "$OUTDIR/run-budget-7b.txt"
    ./ferry trace-svg "$OUTDIR/run-trace-7b.json"
    ;;
serve7b)
    M7=/tmp/ferry-7b-q4km.gguf
    [ -f "$M7" ] || ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf "$M7" 2>&1 | tail -1
    ./ferry serve -m "$M7" --vram-budget 40% --parallel 2 -c 1024 --port 18080 -v 2> "$OUTDIR/serve7b.log" &
    pid=$!
    for _ in $(seq 120); do grep -q "on http://" "$OUTDIR/serve7b.log" && break; sleep 1; done
    clients=()
    for p in "One two three" "Four five six"; do
        curl -s localhost:18080/v1/completions -d "{\"prompt\": \"$p\", \"max_tokens\": 16, \"temperature\": 0}" &
        clients+=($!)
    done
    wait "${clients[@]}"; echo
    curl -s localhost:18080/metrics | grep -E "^ferry_(requests_total|generated|decode_batch|device_memory)"
    kill $pid; wait $pid; cat "$OUTDIR/serve7b.log"
    ;;
kernels)
    # Resident speed of the kernels on the 7B shape: prefill at two micro-batch
    # sizes, the reference attention kernel beside the tensor-core one, decode,
    # and per-kernel decode times (Nsight Compute, clocks left alone).
    M7=/tmp/ferry-7b-q4km.gguf
    [ -f "$M7" ] || ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf "$M7" 2>&1 | tail -1
    PTXAS=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
    for f in ~/.cache/ferry/kernels/*.ptx; do "$PTXAS" -arch=sm_90 -v "$f" -o /dev/null 2>&1 | grep -E "entry|Used|spill"; done > "$OUTDIR/ptxas.txt" 2>&1
    timeout 120 ./ferry bench -m "$M7" --device cuda -p 512,2048 -n 64 -r 3 2>&1 | tee "$OUTDIR/k7b.txt"
    timeout 60 ./ferry bench -m "$M7" --device cuda -p 2048 -n 0 -r 3 --ub 2048 2>&1 | tee -a "$OUTDIR/k7b.txt"
    FERRY_ATTENTION=naive timeout 60 ./ferry bench -m "$M7" --device cuda -p 2048 -n 0 -r 2 2>&1 | tee -a "$OUTDIR/k7b.txt"
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-skip 2500 --launch-count 600 \
        --print-summary per-kernel ./ferry bench -m "$M7" --device cuda -p 16 -n 24 -r 1 > "$OUTDIR/ncu-decode-7b.txt" 2>&1
    grep -E "^  [a-z_0-9]+|gpu__time_duration" "$OUTDIR/ncu-decode-7b.txt" | head -60
    ;;
gemv)
    # Decode GEMVs: the persistent shared-memory kernels with fused epilogues
    # (default) against the warp-per-row kernels and separate ops
    # (FERRY_GEMV=warp), resident 7B and 32B shapes, same machine; then
    # per-kernel decode times of the default (Nsight Compute).
    synth7b
    synth > /dev/null 2>&1
    ptxas_report "$OUTDIR/ptxas.txt"
    grep -A2 "smem\|rms_norm_q8" "$OUTDIR/ptxas.txt" | grep -E "entry|Used" | head -20
    # Variants (same binary): FERRY_GEMV=warp is the previous kernels and
    # separate ops; noqkv runs q, k and v as three launches; FERRY_GEMV_WPR
    # forces the warps per row (cover: as few as cover a row in one round).
    tg_variants "$OUTDIR/gemv.txt" "FERRY_GEMV=warp" "FERRY_GEMV=default" "FERRY_GEMV=noqkv" "FERRY_GEMV_WPR=1" "FERRY_GEMV_WPR=cover"
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum.per_second --launch-skip 2000 --launch-count 400 \
        --print-summary per-kernel ./ferry bench -m "$M7" --device cuda -p 16 -n 24 -r 1 > "$OUTDIR/ncu-decode-7b.txt" 2>&1
    grep -E "^  [a-z_0-9]+|gpu__time_duration|dram__bytes" "$OUTDIR/ncu-decode-7b.txt" | head -80
    ;;
bound)
    # The shared-memory GEMVs' register allocation held to 3 or 4 resident
    # blocks per SM (FERRY_GEMV_BOUND) against none (116 registers: 2 blocks).
    synth7b
    synth > /dev/null 2>&1
    tg_variants "$OUTDIR/bound.txt" "FERRY_GEMV_BOUND=0" "FERRY_GEMV_BOUND=3" "FERRY_GEMV_BOUND=4"
    ptxas_report "$OUTDIR/ptxas.txt"
    grep -A2 "gemv_smem\|gemv_swiglu" "$OUTDIR/ptxas.txt" | grep -E "entry|Used|spill"
    ;;
handover)
    # Memory handover at 25 % of the 32B shape: decode with the layers parked
    # after the prefill, against static; pageable host memory priced right.
    synth > /dev/null 2>&1
    calibrated
    timeout 150 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 16 -n 32 -r 2 \
        --mode stream,static --gpu-profile calibrated 2>&1 | tee "$OUTDIR/handover.txt"
    timeout 150 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 16 -n 16 -r 2 --no-pin \
        --mode stream,static --gpu-profile calibrated 2>&1 | tee "$OUTDIR/nopin-decode.txt"
    ;;
prefill5)
    # Fifth session's prefill conversions and attention, measured together:
    # resident 32B pp512/2048/8192 (2048- and 8192-token micro-batches), 7B
    # pp2048, decode of both (registers held to 3 blocks per SM by default),
    # 32B at 25 % of the model streamed (pp2048, decode), per-launch profile.
    synth7b
    synth > /dev/null 2>&1
    calibrated
    timeout 150 ./ferry bench -m "$M" --device cuda -p 512,2048,8192 -n 64 -r 3 --ub 2048 2>&1 | tee "$OUTDIR/resident32.txt"
    timeout 100 ./ferry bench -m "$M" --device cuda -p 8192 -n 0 -r 3 -b 8192 --ub 8192 2>&1 | tee -a "$OUTDIR/resident32.txt"
    timeout 100 ./ferry bench -m /tmp/ferry-7b-q4km.gguf --device cuda -p 512,2048 -n 64 -r 3 --ub 2048 2>&1 | tee "$OUTDIR/resident7b.txt"
    timeout 200 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 2048 -n 16 -r 2 --ub 1024 \
        --mode stream,sync --gpu-profile calibrated 2>&1 | tee "$OUTDIR/budget32.txt"
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 300 "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-skip 400 --launch-count 160 \
        ./ferry bench -m "$M" --device cuda -p 2048 -n 0 -r 1 --ub 2048 > "$OUTDIR/ncu-prefill-32b.txt" 2>&1
    ;;
dprofile)
    # Every launch of about one 32B-shape decode step (duration, DRAM bytes).
    synth > /dev/null 2>&1
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 400 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --launch-skip ${SKIP:-3000} --launch-count ${COUNT:-800} \
        ./ferry bench -m "$M" --device cuda -p 16 -n 16 -r 1 > "$OUTDIR/ncu-decode-32b.txt" 2>&1
    timeout 60 ./ferry bench -m "$M" --device cuda -p 16 -n 64 -r 3 2>&1 | tee "$OUTDIR/tg32.txt"
    ;;
decode5)
    # Decode after the branch-free Q4_K scale unpacking: resident 7B and 32B,
    # then per-launch times of one 32B step.
    synth7b
    synth > /dev/null 2>&1
    timeout 60 ./ferry bench -m /tmp/ferry-7b-q4km.gguf --device cuda -p 16 -n 64 -r 3 2>&1 | tee "$OUTDIR/decode.txt"
    timeout 60 ./ferry bench -m "$M" --device cuda -p 16 -n 64 -r 3 2>&1 | tee -a "$OUTDIR/decode.txt"
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 300 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --launch-skip 3000 --launch-count 100 \
        ./ferry bench -m "$M" --device cuda -p 16 -n 16 -r 1 > "$OUTDIR/ncu-decode-32b.txt" 2>&1
    ;;
ab)
    synth7b
    synth > /dev/null 2>&1
    timeout 300 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic 2>&1 | tee "$OUTDIR/gpu-check.txt" | tail -16
    # VARIANTS: "binary:VAR=value" pairs (default: the previous build against this one).
    for round in $(seq ${ROUNDS:-2}); do
        for bv in ${VARIANTS:-./ferry-old:X=1 ./ferry:X=1}; do
            b=${bv%%:*}; v=${bv#*:}; v=${v//,/ } # VAR=a,VAR2=b: both
            [ -x "$b" ] || continue
            for m in /tmp/ferry-7b-q4km.gguf "$M"; do
                echo "$b $v $(basename "$m"): $(env $v timeout 60 $b bench -m "$m" --device cuda -p 16 -n 64 -r 3 2>&1 | grep tg64)" | tee -a "$OUTDIR/ab.txt"
            done
        done
    done
    ptxas_report "$OUTDIR/ptxas.txt"
    grep -A2 "gemv_s\|ring" "$OUTDIR/ptxas.txt" | grep -E "entry|Used|spill" | paste - - - | head -24
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 200 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum -k regex:"gemv_s|gemv_r|_ring|^attention|quantize_q8|rms_norm_q8" --launch-skip 300 --launch-count 40 \
        ./ferry bench -m "$M" --device cuda -p 16 -n 16 -r 1 > "$OUTDIR/ncu-decode-32b.txt" 2>&1
    grep -E "^  [a-zA-Z_0-9]|gpu__time_duration|dram__bytes" "$OUTDIR/ncu-decode-32b.txt" | paste - - - | awk '{print $1, $(NF-4), $(NF-3), $(NF-1), $NF}' | head -24
    ;;
gemvstat)
    # Stall reasons, issue rates and memory pipes of one 32B decode step's GEMVs
    # (q/k/v, o, gate/up, down over three layers; Nsight Compute sections).
    synth > /dev/null 2>&1
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 240 "$NCU" --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis -k regex:gemv --launch-skip 300 --launch-count 12 \
        ./ferry bench -m "$M" --device cuda -p 16 -n 4 -r 1 > "$OUTDIR/ncu-gemv.txt" 2>&1
    grep -E "^  gemv|Duration|DRAM Throughput|L1/TEX Cache Throughput|Issued Warp Per|Warp Cycles Per Issued|Achieved Active Warps" "$OUTDIR/ncu-gemv.txt" | head -100
    ;;
pipe)
    synth7b
    synth > /dev/null 2>&1
    timeout 300 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic 2>&1 | tee "$OUTDIR/gpu-check.txt" | tail -25
    tg_variants "$OUTDIR/pipe.txt" FERRY_GEMV=smem FERRY_GEMV=pipe FERRY_GEMV_STAGE=1024 FERRY_GEMV_STAGE=1536 \
        FERRY_GEMV_STAGE=3072 FERRY_GEMV_STAGE=4096 FERRY_GEMV=smem FERRY_GEMV=pipe
    ptxas_report "$OUTDIR/ptxas.txt"
    grep -A2 "pipe" "$OUTDIR/ptxas.txt" | head -30
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
    timeout 200 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --launch-skip 3000 --launch-count 100 \
        ./ferry bench -m "$M" --device cuda -p 16 -n 16 -r 1 > "$OUTDIR/ncu-decode-32b.txt" 2>&1
    grep -E "^  [a-zA-Z_0-9]|gpu__time_duration|dram__bytes" "$OUTDIR/ncu-decode-32b.txt" | paste - - - | awk '{print $1, $(NF-4), $(NF-3), $(NF-1), $NF}' | head -40
    ;;
pp32)
    # Resident 32B-shape prefill only (2048-token micro-batches).
    synth > /dev/null 2>&1
    timeout 200 ./ferry bench -m "$M" --device cuda -p 512,2048,8192 -n 0 -r 2 --ub 2048 2>&1 | tee "$OUTDIR/pp32.txt"
    ;;
pp8k)
    # Resident 32B-shape pp8192 with larger micro-batches (weights dequantized
    # once per micro-batch), and the kernels' registers.
    synth > /dev/null 2>&1
    for ub in 4096 8192; do
        timeout 120 ./ferry bench -m "$M" --device cuda -p 8192 -n 0 -r 2 -b 8192 --ub $ub 2>&1 | tee -a "$OUTDIR/pp8k.txt"
    done
    ptxas_report "$OUTDIR/ptxas.txt"
    grep -A2 "flash_prefill\|dequant_q\|swiglu_f16" "$OUTDIR/ptxas.txt" | grep -E "entry|Used|spill"
    ;;
big32)
    synth 2>&1 | tee "$OUTDIR/synth.txt"
    timeout 200 ./ferry bench -m "$M" --device cuda -p 512,2048,8192 -n 32 -r 2 --ub 2048 2>&1 | tee "$OUTDIR/resident32.txt"
    timeout 100 ./ferry bench -m "$M" --device cuda -p 2048,8192 -n 0 -r 2 --ub 1024 2>&1 | tee -a "$OUTDIR/resident32.txt"
    ;;
budget32)
    synth > /dev/null 2>&1
    calibrated
    # 25 % of the model: an 8K context's KV cache (2 GiB) leaves room for
    # 1024-token micro-batches only.
    timeout 200 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 2048,8192 -n 0 -r 2 --ub 1024 \
        --mode stream --gpu-profile calibrated 2>&1 | tee "$OUTDIR/budget32.txt"
    timeout 200 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 16 -n 16 -r 2 \
        --mode stream,static --gpu-profile calibrated 2>&1 | tee -a "$OUTDIR/budget32.txt"
    timeout 100 ./ferry plan -m "$M" --vram-budget 25% -c 4096 2>&1 | tee -a "$OUTDIR/budget32.txt"
    ;;
final32)
    # After kernel changes: synth time, resident decode, 25 % budget (prefill
    # at a 2K context, decode stream vs static).
    rm -f "$M"
    synth 2>&1 | tee "$OUTDIR/synth.txt"
    calibrated
    timeout 120 ./ferry bench -m "$M" --device cuda -p 2048 -n 64 -r 3 --ub 1024 2>&1 | tee "$OUTDIR/final32.txt"
    timeout 150 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 2048 -n 0 -r 3 --ub 1024 \
        --mode stream,sync --gpu-profile calibrated 2>&1 | tee -a "$OUTDIR/final32.txt"
    timeout 150 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 16 -n 32 -r 2 \
        --mode stream,static --gpu-profile calibrated 2>&1 | tee -a "$OUTDIR/final32.txt"
    ;;
decode)
    # Decode only: resident 7B and 32B shapes, and the 32B shape at 25 %.
    M7=/tmp/ferry-7b-q4km.gguf
    [ -f "$M7" ] || ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf "$M7" 2>&1 | tail -1
    synth > /dev/null 2>&1
    timeout 60 ./ferry bench -m "$M7" --device cuda -p 512 -n 64,128 -r 3 2>&1 | tee "$OUTDIR/decode.txt"
    timeout 90 ./ferry bench -m "$M" --device cuda -p 512 -n 64,128 -r 3 2>&1 | tee -a "$OUTDIR/decode.txt"
    calibrated
    timeout 150 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 16 -n 32 -r 2 \
        --mode stream,static --gpu-profile calibrated 2>&1 | tee -a "$OUTDIR/decode.txt"
    ;;
nopin)
    # Pageable host memory (--no-pin): copies go through the driver's staging
    # buffer, the token embeddings move to the device (the plan counts them).
    synth > /dev/null 2>&1
    calibrated
    timeout 200 ./ferry bench -m "$M" --device cuda --vram-budget 25% -p 512 -n 16 -r 2 --no-pin \
        --mode stream --gpu-profile calibrated 2>&1 | tee "$OUTDIR/nopin.txt"
    ;;
residency)
    # llama.cpp's reference run kept 16 of 64 layers on the GPU (pp2048 730 t/s,
    # tg 4.43): budgets around that residency, 2048-token micro-batches.
    synth > /dev/null 2>&1
    calibrated
    timeout 400 ./ferry bench -m "$M" --device cuda --vram-budget 35%,40%,45% -p 2048 -n 16 -r 2 --ub 2048 \
        --mode stream,sync --gpu-profile calibrated 2>&1 | tee "$OUTDIR/residency.txt"
    ;;
esac
done
