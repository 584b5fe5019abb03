"""Compares two `tve explain --format npy,json` output folders made from the same inputs by two
builds or devices (the Debian and cuda flavours on CPU: tests/cli/flavour_parity.sh; CUDA against CPU:
scripts/gpu_check.sh). Per image: the top-1 class must agree, the top-k probabilities differ by at most
--prob-tol, and each explained map differs by at most --map-tol relative to its largest magnitude
(max |a - b| / max |a|). Prints one line per folder pair with the largest differences seen, and one
line per difference beyond the tolerances.

    python3 scripts/maintainer/compare_runs.py REFERENCE OTHER [--map-tol 1e-4] [--prob-tol 1e-5] [--label TEXT]

Exit 0 when within tolerances, 1 when not, 2 when a folder is missing, empty or unreadable, or the two
hold different images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def records(folder: Path) -> dict[str, dict]:
    """The per-image JSON records under folder, keyed by the path relative to it."""
    found = {}
    for path in sorted(folder.rglob("*.json")):
        if path.name == "tve-summary.json":
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        found[str(path.relative_to(folder))] = record
    return found


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def compare(reference: Path, other: Path, map_tol: float, prob_tol: float, label: str) -> int:
    for folder in (reference, other):
        if not folder.is_dir():
            print(f"compare_runs: {folder}: no such folder", file=sys.stderr)
            return 2
    try:
        left, right = records(reference), records(other)
    except (OSError, ValueError) as error:
        print(f"compare_runs: {error}", file=sys.stderr)
        return 2
    if not left or left.keys() != right.keys():
        print(f"compare_runs: {reference} and {other} hold different images "
              f"({len(left)} and {len(right)} records)", file=sys.stderr)
        return 2
    problems = []
    worst_map = worst_prob = 0.0
    for name, a in left.items():
        b = right[name]
        if a["top_k"][0]["index"] != b["top_k"][0]["index"]:
            problems.append(f"{name}: top-1 {a['top_k'][0]['label']} vs {b['top_k'][0]['label']}")
        for x, y in zip(a["top_k"], b["top_k"]):
            if x["index"] == y["index"]:
                worst_prob = max(worst_prob, abs(x["probability"] - y["probability"]))
        # The maps: the .npy file (K x G x G for --top-k K) when written, else the JSON values.
        npy_a, npy_b = a.get("outputs", {}).get("npy"), b.get("outputs", {}).get("npy")
        if npy_a and npy_b:
            map_a, map_b = np.load(npy_a), np.load(npy_b)
        else:
            map_a = np.array([e["values"] for e in a["explained"]], dtype=np.float32)
            map_b = np.array([e["values"] for e in b["explained"]], dtype=np.float32)
        if map_a.shape != map_b.shape:
            problems.append(f"{name}: map shapes {map_a.shape} vs {map_b.shape}")
            continue
        d = relative_difference(map_a, map_b)
        worst_map = max(worst_map, d)
        if not d <= map_tol:  # NaN fails too
            problems.append(f"{name}: map differs by {d:.3g} of its range (tolerance {map_tol:g})")
    if worst_prob > prob_tol:
        problems.append(f"probabilities differ by up to {worst_prob:.3g} (tolerance {prob_tol:g})")
    status = "ok" if not problems else "FAILED"
    print(f"{label or other.name}: {len(left)} image(s), largest map difference {worst_map:.3g} of range, "
          f"largest probability difference {worst_prob:.3g}: {status}")
    for problem in problems:
        print(f"  {problem}")
    return 0 if not problems else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--map-tol", type=float, default=1e-4)
    parser.add_argument("--prob-tol", type=float, default=1e-5)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    return compare(args.reference, args.other, args.map_tol, args.prob_tol, args.label)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
