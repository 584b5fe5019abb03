#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds, and runs the main job on the shipped samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
model=${TVE_DEMO_MODEL:-tiny-vit}
echo "== tve predict data/samples --model $model" >&2
"${TVE_BUILD_DIR:-build}/tve" predict data/samples --model "$model" --top-k 3
