#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds, and runs the main job: TVE explanations of the
# shipped sample images with the default model, overlays written to demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
bash scripts/build.sh >&2  # stdout carries only the JSON lines
model=${TVE_DEMO_MODEL:-$(cat models/DEFAULT)}
out=${TVE_DEMO_OUT:-demo-output}
echo "== tve explain data/samples --model $model --top-k 1 --out $out" >&2
status=0
"${TVE_BUILD_DIR:-build}/tve" explain data/samples --model "$model" --out "$out" || status=$?
echo "== overlays, raw maps (.npy) and JSON records are in $out/data/samples/" >&2
exit $status
