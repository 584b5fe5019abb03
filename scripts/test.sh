#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds, and runs every test (GoogleTest, CLI smoke tests,
# pytest) through ctest. Exit code 0 only if everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir "${TVE_BUILD_DIR:-build}" --output-on-failure --parallel "$(nproc)" --timeout 900
