#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real test models (cached in
# models/), check formatting and lints, run every test, then the server tests
# with the official `openai` Python client (installed under target/pydeps).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_models.py all
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
if ! PYTHONPATH=target/pydeps python3 -c "import openai" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --target target/pydeps openai==3.57.0
fi
cargo build --locked --bin ferry
PYTHONPATH=target/pydeps python3 tests/server/test_openai.py target/debug/ferry
