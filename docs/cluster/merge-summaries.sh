#!/usr/bin/env bash
# Adds up the summaries that the shards of one job wrote under an output folder
# (tve-summary.shard-K-of-N.json) and prints one JSON line: counts, the failed inputs with their
# reasons, and the shards that are missing (not run yet, or killed before they finished).
#   bash merge-summaries.sh OUT_DIR
# Exit code: 0 every shard finished and every input succeeded; 1 some inputs failed; 3 some
# shards are missing (re-submit them: with --resume they skip what they finished).
set -euo pipefail
out=${1:?usage: merge-summaries.sh OUT_DIR}
exec python3 - "$out" <<'PY'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
shards, count = {}, None
for file in sorted(out.glob("tve-summary.shard-*-of-*.json")):
    k, n = map(int, re.fullmatch(r"tve-summary\.shard-(\d+)-of-(\d+)\.json", file.name).groups())
    if count is not None and n != count:
        sys.exit(f"{file}: a summary of {n} shards among summaries of {count}")
    count = n
    shards[k] = json.loads(file.read_text())
if count is None:
    sys.exit(f"{out}: no tve-summary.shard-*-of-*.json")
merged = {
    "shards": count,
    "missing_shards": [k for k in range(count) if k not in shards],
    "inputs": sum(s["inputs"] for s in shards.values()),
    "explained": sum(s["explained"] for s in shards.values()),
    "resumed": sum(s["resumed"] for s in shards.values()),
    "failed": sum(s["failed"] for s in shards.values()),
    "failures": [f for k in sorted(shards) for f in shards[k]["failures"]],
}
print(json.dumps(merged))
sys.exit(3 if merged["missing_shards"] else 1 if merged["failed"] else 0)
PY
