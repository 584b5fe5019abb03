#!/usr/bin/python3
"""Prints the per-bundle table of models/README.md (files, sizes, SHA-256, measured metrics)
from the manifests, so that the documented numbers are the ones the bundles carry.

    /usr/bin/python3 scripts/maintainer/models_readme.py models/resnet models/vit models/swin
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib.threads import describe_threads  # noqa: E402


def describe(path: Path) -> str:
    m = json.loads((path / "manifest.json").read_text())
    files = [("manifest.json", None)]
    files.append((m["target"]["file"], m["target"]["sha256"]))
    for head in m.get("heads", {}).values():
        files.append((head["file"], head["sha256"]))
    if "explainer" in m:
        files.append((m["explainer"]["file"], m["explainer"]["sha256"]))
    total = sum((path / f).stat().st_size for f, _ in files)
    lines = [f"### {m['name']} ({m['architecture']}, D = {m['embedding_dim']}, "
             f"{m['input']['height']} px, grid {m['grid']}, radius {m['radius']})", "",
             f"Total {total / 1e6:.2f} MB.", "", "| file | bytes | SHA-256 |", "| --- | ---: | --- |"]
    for f, digest in files:
        lines.append(f"| `{f}` | {(path / f).stat().st_size} | {'`' + digest + '`' if digest else '-'} |")
    prov = m.get("provenance", {})
    metrics = prov.get("metrics", {})
    pre = prov.get("pretrain", {})
    lines += ["", "| measured on fixed held-out sets | top-1 | n |", "| --- | ---: | ---: |",
              f"| encoder, EmojiScenes ({len(m['target']['labels'])} classes) | "
              f"{metrics.get('emoji_heldout_top1', float('nan')):.4f} | {metrics.get('emoji_heldout_n', '')} |"]
    for task, head in m.get("heads", {}).items():
        hm = head.get("metrics", {})
        lines.append(f"| linear probe, {task} ({len(head['labels'])} classes, {hm.get('train_n', '?')} train scenes) "
                     f"| {hm.get('heldout_top1', float('nan')):.4f} | {hm.get('heldout_n', '')} |")
    if pre:
        lines += ["", f"Pre-training: {pre.get('steps_done')} steps of {pre.get('batch')} scenes "
                  f"({pre.get('images_seen')} images), AdamW lr {pre.get('lr')}, "
                  f"{pre.get('train_seconds', 0) / 60:.1f} min of training on {describe_threads(pre.get('threads'))}."]
        if pre.get("distill_from"):
            lines[-1] += (f" Distilled from the {pre['distill_from']} bundle (target SHA-256 "
                          f"`{pre.get('teacher_target_sha256', '?')[:16]}...`): feature weight "
                          f"{pre.get('distill_feature_weight')}, logit weight {pre.get('distill_logit_weight')} "
                          f"at temperature {pre.get('distill_temperature')}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(describe(Path(p)) for p in sys.argv[1:]))
