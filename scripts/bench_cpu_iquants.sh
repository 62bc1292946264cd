#!/usr/bin/env bash
# Same-run CPU comparison of ferry and llama.cpp (llama-cpp-python) on the
# 1-3 bit i-quants: synthetic 1B-shape files (8 layers, every matrix in the
# type), pp128 and tg32, alternating ferry and llama.cpp for ROUNDS rounds.
# Needs: cargo, python3 with llama-cpp-python and numpy; the test models
# (scripts/fetch_models.py) for the vocabulary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
TYPES=${TYPES:-iq2_xxs iq3_s iq1_m}
PY=${PYTHON:-python3}
DIR=${DIR:-$(mktemp -d)}
VOCAB=$($PY scripts/fetch_models.py smollm2 | tail -1)
cargo build --release --quiet
FILES=()
for t in $TYPES; do
  f="$DIR/llama-1b-8-layers-$t.gguf"
  [ -f "$f" ] || ./target/release/ferry synth --preset llama-1b --layers 8 --quant "$t" --vocab-from "$VOCAB" "$f" >&2
  FILES+=("$f")
done
M=$(IFS=,; echo "${FILES[*]}")
for r in $(seq 1 "$ROUNDS"); do
  echo "## round $r: ferry"
  ./target/release/ferry bench -m "$M" -p 128 -n 32 -r 3 -t "$THREADS" 2>/dev/null
  echo "## round $r: llama.cpp"
  $PY scripts/bench_reference.py -m "$M" -p 128 -n 32 -r 3 -t "$THREADS" 2>/dev/null
done
