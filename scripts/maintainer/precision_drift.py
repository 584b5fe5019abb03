#!/usr/bin/env python3
"""How far `tve explain --precision bf16` (or fp16) drifts from fp32 on the same images, per model:
the explained maps of the images whose top-1 class stays the same (Spearman correlation, largest
difference over the map's range) and the scores (top-1 agreement, top-1 probability). docs/performance.md, "Precision", records its output.

Usage: precision_drift.py [--tve build/tve] [--device cpu] [--precision bf16] [--method tve]
                          [--min-spearman S] [--max-probability-drift P] MODEL... -- INPUT...
Runs `tve explain INPUT... --model MODEL --format none` once per precision and prints one line per
model (and JSON with --json). With --min-spearman / --max-probability-drift, exits 1 when a model's
worst image is outside the bound (tests/cli/device_test.sh).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def explain(tve, model, inputs, precision, args):
    cmd = [tve, "explain", *inputs, "--model", model, "--format", "none", "--device", args.device,
           "--precision", precision, "--method", args.method, "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return {r["input"]: r for r in map(json.loads, done.stdout.splitlines()) if "error" not in r}


def compare(base, other) -> dict:
    rhos, rel, agree, dprob = [], [], [], []
    for name, a in base.items():
        b = other[name]
        agree.append(a["top_k"][0]["index"] == b["top_k"][0]["index"])
        dprob.append(abs(a["top_k"][0]["probability"] - b["top_k"][0]["probability"]))
        if not agree[-1]:
            continue  # another class explained: its map is not a drift of this one (counted in top1_agreement)
        ma = np.array(a["explained"][0]["values"], dtype=np.float64).ravel()
        mb = np.array(b["explained"][0]["values"], dtype=np.float64).ravel()
        rhos.append(spearman(ma, mb))
        rel.append(float(np.abs(ma - mb).max() / max(ma.max() - ma.min(), 1e-12)))
    rhos, rel = rhos or [float("nan")], rel or [float("nan")]
    return {"images": len(base), "spearman_median": float(np.median(rhos)), "spearman_min": float(min(rhos)),
            "map_difference_over_range_max": float(max(rel)), "top1_agreement": float(np.mean(agree)),
            "top1_probability_drift_max": float(max(dprob))}


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit(__doc__)
    split = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--tve", default=os.environ.get("TVE", "build/tve"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--method", default="tve")
    ap.add_argument("--min-spearman", type=float)
    ap.add_argument("--max-probability-drift", type=float)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("models", nargs="+")
    args = ap.parse_args(argv[:split])
    inputs = argv[split + 1:]
    failed = False
    for model in args.models:
        base = explain(args.tve, model, inputs, "fp32", args)
        other = explain(args.tve, model, inputs, args.precision, args)
        row = {"model": model, "method": args.method, "precision": args.precision, **compare(base, other)}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{model:8} {args.method:10} {args.precision} vs fp32, {row['images']} images: map Spearman "
                  f"median {row['spearman_median']:.4f} min {row['spearman_min']:.4f}, largest map difference "
                  f"{100 * row['map_difference_over_range_max']:.1f}% of the map's range, top-1 agreement "
                  f"{100 * row['top1_agreement']:.0f}%, top-1 probability drift <= {row['top1_probability_drift_max']:.4f}")
        if args.min_spearman is not None and row["spearman_min"] < args.min_spearman:
            print(f"{model}: map Spearman {row['spearman_min']:.4f} below {args.min_spearman}", file=sys.stderr)
            failed = True
        if args.max_probability_drift is not None and row["top1_probability_drift_max"] > args.max_probability_drift:
            print(f"{model}: top-1 probability drift {row['top1_probability_drift_max']:.4f} above "
                  f"{args.max_probability_drift}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
