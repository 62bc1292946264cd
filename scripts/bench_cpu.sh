#!/usr/bin/env bash
# Same-run CPU comparison of ferry and llama.cpp (llama-cpp-python) on the two
# test models: pp512 and tg128, 2 threads, alternating ferry and llama.cpp for
# ROUNDS rounds so that both see the same machine conditions.
# Needs: cargo, python3 with llama-cpp-python and numpy (pip install llama-cpp-python numpy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PY=${PYTHON:-python3}
MODELS=$($PY scripts/fetch_models.py all | paste -sd, -)
cargo build --release --quiet
for r in $(seq 1 "$ROUNDS"); do
  echo "## round $r: ferry"
  ./target/release/ferry bench -m "$MODELS" -p 512 -n 128 -r 5 -t "$THREADS" 2>/dev/null
  echo "## round $r: llama.cpp"
  $PY scripts/bench_reference.py -m "$MODELS" -p 512 -n 128 -r 5 -t "$THREADS" 2>/dev/null
done
