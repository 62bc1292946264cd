#!/usr/bin/env bash
# Session 12, call 3: fused norms withdrawn; decode activations kept from step
# to step (Session workspace) and the logits read through pinned memory
# (default) against pageable (FERRY_X_PAGEABLE=1, temporary switch), small
# uploads not checked against the budget (FERRY_X_ACCOUNT_SMALL=0, temporary),
# and ./ferry-base (96c8be7). gpu-check's new column: kept buffers = fresh.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
/usr/bin/time -f "gpu-check %e s" timeout 280 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
run() { # label model binary args env...
  local label=$1 m=$2 b=$3 args=$4; shift 4
  echo "$label: $(env "$@" timeout 60 $b bench -m $m --device cuda $args 2>&1 | grep -E 'tg[0-9]+|rror' | head -1 | cut -d'|' -f1-9)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"
for m in $M $M7; do
  b=$(basename $m)
  run "$b pinned" $m ./ferry "$T" X=1
  run "$b pageable" $m ./ferry "$T" FERRY_X_PAGEABLE=1
  run "$b noacct" $m ./ferry "$T" FERRY_X_ACCOUNT_SMALL=0
  run "$b base" $m ./ferry-base "$T" X=1
  run "$b pageable" $m ./ferry "$T" FERRY_X_PAGEABLE=1
  run "$b noacct" $m ./ferry "$T" FERRY_X_ACCOUNT_SMALL=0
  run "$b base" $m ./ferry-base "$T" X=1
  run "$b pinned" $m ./ferry "$T" X=1
  run "$b noacct" $m ./ferry "$T" FERRY_X_ACCOUNT_SMALL=0
  run "$b base" $m ./ferry-base "$T" X=1
  run "$b pinned" $m ./ferry "$T" X=1
  run "$b pageable" $m ./ferry "$T" FERRY_X_PAGEABLE=1
done
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt; tail -2 $L/synth.txt; cat $L/tg.txt; grep -E "^\| (model|synth|smol)" $L/gpu-check.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|DIFF|rror|gpu-check " $L/gpu-check.txt | head
