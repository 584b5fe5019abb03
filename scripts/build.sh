#!/usr/bin/env bash
# Configures and builds tve into ${TVE_BUILD_DIR:-build} (Release, Ninja). Incremental when re-run.
# Usage: build.sh [--flavour debian|cuda] [TARGET...]   (default: everything, tests included; the demo
# builds only `tve`). --flavour cuda links the PyPI torch wheel's LibTorch (scripts/setup_cuda.sh first;
# docs/gpu.md) and builds into ${TVE_BUILD_DIR:-build-cuda}; the default is Debian's LibTorch, in build/.
# Compiler warnings are fatal (TVE_WARNINGS_AS_ERRORS=ON) unless TVE_WARNINGS_AS_ERRORS=OFF: one setting
# for the demo and the tests, so that running one after the other reuses every object file.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=debian
if [[ ${1:-} == --flavour ]]; then
  flavour=${2:?build.sh: --flavour needs debian or cuda}
  shift 2
fi
case $flavour in
  debian) build_dir=${TVE_BUILD_DIR:-build} ;;
  cuda) build_dir=${TVE_BUILD_DIR:-build-cuda} ;;
  *) echo "build.sh: --flavour $flavour: debian or cuda" >&2; exit 2 ;;
esac
mkdir -p "$build_dir"
# Two builds into one folder at once (two terminals, a test script while an editor builds) race in
# Ninja's logs and rebuild each other's objects: the second waits for the first.
exec 9>"$build_dir/.build-lock"
flock 9
# TVE_BUILD_TESTS=OFF (scripts/demo.sh) configures without GoogleTest, which the demo does not install;
# switching it back on later rebuilds nothing of tve.
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DTVE_WARNINGS_AS_ERRORS="${TVE_WARNINGS_AS_ERRORS:-ON}" -DTVE_FLAVOUR="$flavour" \
  -DTVE_BUILD_TESTS="${TVE_BUILD_TESTS:-ON}" >/dev/null
# Each LibTorch translation unit needs ~1 GB of RAM to compile; one job per core is safe here.
targets=()
for target in "$@"; do targets+=(--target "$target"); done
cmake --build "$build_dir" --parallel "$(nproc)" "${targets[@]}"
