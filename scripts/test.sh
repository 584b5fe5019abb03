#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds, and runs every test (GoogleTest, CLI smoke tests,
# pytest) through ctest. Exit code 0 only if everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
ctest --test-dir "${TVE_BUILD_DIR:-build}" --output-on-failure --parallel "$(nproc)" --timeout 900
# The cuda build flavour (docs/gpu.md): nvcc from PyPI, only tve built (a second build of the unit
# tests does not fit CI's time), and its CPU tests: the Debian build's results on the shipped models
# (flavour.parity.*), a few CLI cases, and the GPU tests, skipped without a GPU.
bash scripts/setup_cuda.sh
TVE_BUILD_DIR=build-cuda bash scripts/build.sh --flavour cuda tve
ctest --test-dir build-cuda -L flavour --output-on-failure --parallel "$(nproc)" --timeout 900
