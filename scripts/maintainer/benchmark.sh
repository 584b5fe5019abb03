#!/usr/bin/env bash
# Speed and memory of `tve explain`, measured as ratios in one run per model (docs/performance.md):
#   - per-image explain time against the target's own forward pass (batch 1, median);
#   - images/s on a folder (decode, forward, explain, write overlays + .npy + JSON) against the
#     pure model compute for as many images;
#   - peak resident memory for 500 and for 5,000 images (must not grow with the count).
# Usage: bash scripts/maintainer/benchmark.sh [MODEL...]   (default: every bundle with an explainer)
# Needs a build (scripts/build.sh). Writes JSON lines to stdout and a table to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
tve=${TVE:-${TVE_BUILD_DIR:-build}/tve}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 5,000 distinct JPEGs from the sample photos: random crops, flips and sizes (160 to 320 px).
/usr/bin/python3 scripts/maintainer/make_bench_images.py 5000 "$work/images"

models=("$@")
if [[ ${#models[@]} -eq 0 ]]; then
  mapfile -t models < <("$tve" models --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("explainer") and not m.get("shadowed"):
        print(m["name"])')
fi

for model in "${models[@]}"; do
  for count in 500 5000; do
    # A new folder per run, none deleted before the end: on ext4, creating files right after many
    # were deleted scans the recently freed inodes (recently_deleted() in the kernel's profile),
    # which charged the next run up to 0.7 ms of system time per output file.
    "$tve" bench "$work/images" --model "$model" --count "$count" --out "$work/out-$model-$count" --repeats 30 2>>"$work/log" \
      || { cat "$work/log" >&2; exit 1; }
  done
done | tee "$work/results.jsonl"

/usr/bin/python3 - "$work/results.jsonl" >&2 <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'model':14} {'images':>6} {'fwd ms':>8} {'explain ms':>10} {'ratio':>6} {'pipeline/s':>10} {'compute/s':>10} {'p/c':>5} {'peak MiB':>8} {'lanes':>5}")
for r in rows:
    lat, thr = r["latency"], r["throughput"]
    print(f"{r['model']:14} {thr['images']:>6} {lat['forward_ms']:8.2f} {lat['explain_ms']:10.2f} {lat['explain_over_forward']:6.2f} "
          f"{thr['pipeline_images_per_s']:10.1f} {thr['compute_images_per_s']:10.1f} {thr['pipeline_over_compute']:5.2f} {r['peak_rss_mib']:8.0f} {thr.get('model_lanes', 1):>5}")
PY
