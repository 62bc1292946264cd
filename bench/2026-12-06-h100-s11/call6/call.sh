#!/usr/bin/env bash
# Session 11, call 6 (final commit): decode attention kernels at short and
# moderate contexts, same binary (FERRY_ATTN_LANES=0: the previous kernel),
# rotating which variant runs first; ./ferry-base (96c8be7) beside them.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf
./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1
run() { # label binary args env...
  local label=$1 b=$2 args=$3; shift 3
  echo "$label: $(env "$@" timeout 90 $b bench -m $M --device cuda $args 2>&1 | grep -E 'tg[0-9]+' | head -1 | cut -d'|' -f1)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"; D="-p 0 -n 32 -d 256 -r 2"
run "tg64 lanes" ./ferry "$T" X=1
run "tg64 lanes-off" ./ferry "$T" FERRY_ATTN_LANES=0
run "tg64 base" ./ferry-base "$T" X=1
run "tg64 lanes-off" ./ferry "$T" FERRY_ATTN_LANES=0
run "tg64 base" ./ferry-base "$T" X=1
run "tg64 lanes" ./ferry "$T" X=1
run "tg64 base" ./ferry-base "$T" X=1
run "tg64 lanes" ./ferry "$T" X=1
run "tg64 lanes-off" ./ferry "$T" FERRY_ATTN_LANES=0
run "d256 lanes" ./ferry "$D" X=1
run "d256 lanes-off" ./ferry "$D" FERRY_ATTN_LANES=0
run "d256 lanes-off" ./ferry "$D" FERRY_ATTN_LANES=0
run "d256 lanes" ./ferry "$D" X=1
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt $L/tg.txt
