#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real test models (cached in
# models/), check formatting and lints, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_models.py all
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
