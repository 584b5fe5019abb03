#!/usr/bin/env bash
# Configures and builds tve into ${TVE_BUILD_DIR:-build} (Release, Ninja). Incremental when re-run.
# TVE_WARNINGS_AS_ERRORS=ON makes compiler warnings fatal (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${TVE_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DTVE_WARNINGS_AS_ERRORS="${TVE_WARNINGS_AS_ERRORS:-OFF}" >/dev/null
# Each LibTorch translation unit needs ~1 GB of RAM to compile; one job per core is safe here.
cmake --build "$build_dir" --parallel "$(nproc)"
