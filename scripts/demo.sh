#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for building and running tve only (setup.sh --for demo: no
# Python venvs, no test data), builds tve, and runs the main job: TVE explanations of the shipped
# sample images with the default model, overlays written to demo-output/. Measured from a clean
# clone: README.md, "Install".
# Each sample is explained with the head it belongs to: data/samples/<task>-*.png with the
# bundle's downstream head <task> when it has one (fashion, mnist, novel: heads the explainer
# never saw), every other image with the target's own head.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --for demo >&2
# The tool only, configured without the tests (their GoogleTest is not installed for the demo; a
# later scripts/test.sh reuses every object). stdout carries only the JSON lines.
TVE_BUILD_TESTS=OFF bash scripts/build.sh tve >&2
tve=${TVE_BUILD_DIR:-build}/tve
model=${TVE_DEMO_MODEL:-$(cat models/DEFAULT)}
out=${TVE_DEMO_OUT:-demo-output}
samples=data/samples

mapfile -t heads < <("$tve" models --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    bundle = json.loads(line)
    if bundle["name"] == sys.argv[1] and not bundle.get("shadowed"):
        print("\n".join(bundle.get("heads", {})))' "$model")

status=0
explain() {  # explain HEAD FILE...: one tve run; the worst exit code is kept
  local head=$1; shift
  echo "== tve explain ${*#"$samples/"} --model $model --head $head --out $out" >&2
  local rc=0
  "$tve" explain "$@" --model "$model" --head "$head" --out "$out" || rc=$?
  if ((rc > status)); then status=$rc; fi
}
target_files=()
for file in "$samples"/*; do
  task=$(basename "$file"); task=${task%%-*}
  [[ " ${heads[*]} " == *" $task "* ]] || target_files+=("$file")
done
explain target "${target_files[@]}"
for head in "${heads[@]}"; do
  files=("$samples/$head"-*)
  [[ -e ${files[0]} ]] && explain "$head" "${files[@]}"
done
echo "== overlays, raw maps (.npy) and JSON records are in $out/$samples/" >&2
exit $status
