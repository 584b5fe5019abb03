#!/usr/bin/env bash
# What resuming and sharding cost in a batch run (docs/cluster.md), as ratios measured in one run:
#   - resume: explain 5,000 images, then run again with --resume (all done): the time to skip
#     them against the time to explain them;
#   - shards: one run over all 5,000 paths against the same run split into 4 shards, and a shard
#     that selects ~1 of the 5,000 paths against a run given that one path: the cost of hashing
#     and selecting paths, which must be negligible per image.
# Usage: bash scripts/maintainer/bench_batch.sh [MODEL]   (default: models/DEFAULT). Needs a build.
set -euo pipefail
cd "$(dirname "$0")/../.."
tve=${TVE:-${TVE_BUILD_DIR:-build}/tve}
model=${1:-$(cat models/DEFAULT)}
count=${TVE_BENCH_IMAGES:-5000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 scripts/maintainer/make_bench_images.py "$count" "$work/images"

# seconds CMD...: wall time of CMD in seconds (stdout discarded, stderr to the log)
seconds() {
  local start=$EPOCHREALTIME rc=0
  "$@" >/dev/null 2>>"$work/log" || rc=$?
  if ((rc > 1)); then cat "$work/log" >&2; exit 1; fi
  awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }'
}
args=(explain "$work/images" --model "$model" --progress never)

explain=$(seconds "$tve" "${args[@]}" --out "$work/out")
resume=$(seconds "$tve" "${args[@]}" --out "$work/out" --resume)
whole=$(seconds "$tve" "${args[@]}" --format none)
sharded=0
for k in 0 1 2 3; do
  sharded=$(awk -v a="$sharded" -v b="$(seconds "$tve" "${args[@]}" --format none --shard "$k/4")" 'BEGIN { print a + b }')
done
# A shard of ~1 image out of all the paths, against that image alone: scanning and hashing the paths.
one=$(find "$work/images" -name '*.jpg' | sort | sed -n 1p)
tiny_shard=$(seconds "$tve" "${args[@]}" --format none --shard "0/$count")
single=$(seconds "$tve" explain "$one" --model "$model" --progress never --format none)

/usr/bin/python3 - "$model" "$count" "$explain" "$resume" "$whole" "$sharded" "$tiny_shard" "$single" <<'PY'
import json, sys
model, n = sys.argv[1], int(sys.argv[2])
explain, resume, whole, sharded, tiny_shard, single = map(float, sys.argv[3:])
print(json.dumps({
    "model": model, "images": n,
    "explain_s": round(explain, 2), "resume_all_done_s": round(resume, 2),
    "resume_over_explain": round(resume / explain, 4),
    "resume_ms_per_image": round(1e3 * resume / n, 3),
    "unsharded_s": round(whole, 2), "four_shards_s": round(sharded, 2),
    "four_shards_over_unsharded": round(sharded / whole, 3),
    "one_image_shard_of_all_paths_s": round(tiny_shard, 3), "one_image_alone_s": round(single, 3),
    "shard_selection_us_per_path": round(1e6 * (tiny_shard - single) / n, 2),
}))
PY
