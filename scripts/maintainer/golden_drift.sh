#!/usr/bin/env bash
# docs/ci.md, "Why these defaults": how much the shipped models' probabilities and maps move on
# data/samples between thread counts and batch sizes, against golden files recorded here.
set -euo pipefail
cd "$(dirname "$0")/../.."
tve=${TVE:-build/tve}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for model in resnet vit swin; do
  "$tve" explain data/samples --model "$model" --threads 2 --batch-size 8 --record "$work/$model.json" --format none >/dev/null 2>&1
  for config in "1 1" "2 3" "1 8"; do
    read -r threads batch <<<"$config"
    "$tve" explain data/samples --model "$model" --threads "$threads" --batch-size "$batch" --format none \
      >"$work/$model-$threads-$batch.jsonl" 2>/dev/null
  done
done
/usr/bin/python3 - "$work" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from scipy.stats import spearmanr
work = Path(sys.argv[1])
for model in ["resnet", "vit", "swin"]:
    golden = json.loads((work / f"{model}.json").read_text())["images"]
    for config in ["1-1", "2-3", "1-8"]:
        records = [json.loads(line) for line in (work / f"{model}-{config}.jsonl").read_text().splitlines()]
        dp, rho, rel = [], [], []
        for r in records:
            g = golden[r["input"]]
            dp.append(abs(g["top_k"][0]["probability"] - r["top_k"][0]["probability"]))
            a, b = np.ravel(g["explained"][0]["values"]), np.ravel(r["explained"][0]["values"])
            rho.append(spearmanr(a, b).correlation)
            rel.append(np.abs(a - b).max() / np.abs(a).max())
        print(f"{model} threads,batch {config}: max |dp| {max(dp):.1e}, min Spearman {min(rho):.6f}, "
              f"max relative map change {max(rel):.1e}")
PY
