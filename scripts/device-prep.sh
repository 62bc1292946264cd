#!/usr/bin/env bash
# Stage what a device run needs in .device/ (git-ignored, carried to the GPU
# machine): the release binary and SmolLM2 cut to its first 4 layers (real
# weights, 39 MiB, within the 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
mkdir -p .device
cp target/release/ferry .device/ferry
strip .device/ferry
cp scripts/gpu-check.sh scripts/device-bench.sh scripts/device-arch.sh scripts/device-quant.sh scripts/device-moe.sh .device/
SMOL=$(python3 scripts/fetch_models.py smollm2)
[ -f .device/smol4.gguf ] || ./target/release/ferry truncate "$SMOL" --layers 4 .device/smol4.gguf
du -sh .device
