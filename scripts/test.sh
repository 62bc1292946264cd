#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real test models (cached in
# models/), check formatting and lints, run every test, then the server tests
# with the official `openai` Python client (installed under target/pydeps), and
# the web page in a headless browser (Debian's chromium, selenium).
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
# The web page in a headless Chromium (Debian's chromium and its WebDriver,
# driven by selenium).
if ! command -v chromedriver > /dev/null; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver > target/apt.log 2>&1 \
            || tail -5 target/apt.log
    elif command -v sudo > /dev/null; then
        DEBIAN_FRONTEND=noninteractive sudo apt-get install -y -q chromium chromium-driver > target/apt.log 2>&1 \
            || tail -5 target/apt.log
    fi
fi
if ! PYTHONPATH=target/pydeps python3 -c "import selenium" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --target target/pydeps selenium==4.27.1
fi
if command -v chromedriver > /dev/null; then
    PYTHONPATH=target/pydeps python3 tests/server/test_web.py target/debug/ferry
else
    echo "SKIPPED: the web page's browser test needs chromium and chromium-driver (apt-get install failed)" >&2
fi
