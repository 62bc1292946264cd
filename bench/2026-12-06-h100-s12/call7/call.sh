#!/usr/bin/env bash
# Session 12, call 7 (final tree): gpu-check; ferry calibrate; 32B and 7B
# tg64 against ./ferry-base (96c8be7), rotating which runs first; 32B decode
# after 1000 cached tokens.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
gunzip -kf ferry-base.gz && chmod +x ferry-base
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
M=/tmp/ferry-32b-q4km.gguf; M7=/tmp/ferry-7b-q4km.gguf
( ./ferry synth --preset qwen2.5-32b --quant q4_k_m $M > $L/synth.txt 2>&1; ./ferry synth --preset qwen2.5-7b --quant q4_k_m --vocab-from smol4.gguf $M7 >> $L/synth.txt 2>&1 ) &
/usr/bin/time -f "gpu-check %e s" timeout 280 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
wait
timeout 120 ./ferry calibrate > $L/calibrate.txt 2>&1
run() { # label model binary args
  echo "$1 $(basename $2): $(timeout 90 $3 bench -m $2 --device cuda $4 2>&1 | grep -E 'tg[0-9]+|rror' | head -1 | cut -d'|' -f1-9)" >> $L/tg.txt
}
T="-p 16 -n 64 -r 3"
run final $M ./ferry "$T"; run base $M ./ferry-base "$T"
run base $M ./ferry-base "$T"; run final $M ./ferry "$T"
run final $M ./ferry "$T"; run base $M ./ferry-base "$T"
run base $M ./ferry-base "$T"; run final $M ./ferry "$T"
run final $M7 ./ferry "$T"; run base $M7 ./ferry-base "$T"
run base $M7 ./ferry-base "$T"; run final $M7 ./ferry "$T"
run "d1000 final" $M ./ferry "-p 0 -n 32 -d 1000 -r 2"; run "d1000 base" $M ./ferry-base "-p 0 -n 32 -d 1000 -r 2"
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt; tail -2 $L/synth.txt; cat $L/tg.txt; grep -E "^\| (synth|smol)" $L/gpu-check.txt | cut -d'|' -f2,4-12; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|DIFF|rror|gpu-check " $L/gpu-check.txt | head; grep -i -E "GB/s|TFLOP" $L/calibrate.txt | head -5
