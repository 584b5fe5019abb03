#!/usr/bin/python3
"""Measures a TVE explainer's amortisation fidelity against exact windowed occlusion, its pointing
game next to occlusion's, and its cost against the target's forward pass; chooses the transfer
rule's defaults (lambda_neg, smooth) from the measurements.

    /usr/bin/python3 scripts/maintainer/evaluate_explainer.py --model resnet                  # the bundle's explainer.pt
    /usr/bin/python3 scripts/maintainer/evaluate_explainer.py --model resnet --checkpoint RUN/explainer.ckpt
    /usr/bin/python3 scripts/maintainer/evaluate_explainer.py --model resnet --cache-only     # occlusion maps only

Held-out sets: the first --n scenes of tvelib.data.fixed_set(task, 'test', seed 1000) for the
pre-training task (emoji, explained with the target's own head) and each downstream task
(fashion, mnist, novel, explained with the bundle's linear head of that name, which the
explainer never saw). The class explained is the head's top-1 on the clean image.

Occlusion (2*G*G encoder passes per image) is cached under $TVE_CACHE/occlusion keyed by the
target's SHA-256, task, seed, n, grid and radius. Results go to --out (JSON) and, with --defaults,
to <run>/defaults.json that scripts/train_explainer.py --export reads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import bundle, data, explainer as ex, explainer_training, fidelity, threads, trunks  # noqa: E402
from tvelib.runs import Logger  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASKS = ("emoji", "fashion", "mnist", "novel")


def cost(b: bundle.Bundle, explainer: torch.nn.Module, eager_explainer: torch.nn.Module, target) -> dict:
    """FLOPs by hooks on the eager modules, and median batch-1 time of the scripted ones."""
    size = b.input_size
    x = torch.randn(1, 3, size, size)
    f_t = ex.count_flops(target, target, x)
    t_t = ex.time_call(lambda: b.target(x), 30)
    if hasattr(explainer, "forward_with_embedding"):
        # As `tve explain` runs it: the target's embedding comes from the forward pass it needs
        # anyway to pick the class, so it is not part of the explainer's cost.
        z = b.target.embed(x)
        f_e = ex.count_flops(lambda v: eager_explainer.forward_with_embedding(v, z), eager_explainer, x)
        t_e = ex.time_call(lambda: explainer.forward_with_embedding(x, z), 30)
    else:
        f_e = ex.count_flops(eager_explainer, eager_explainer, x)
        t_e = ex.time_call(lambda: explainer(x), 30)
    return {"target_gflops": round(f_t / 1e9, 4), "explainer_gflops": round(f_e / 1e9, 4),
            "flops_ratio": round(f_e / f_t, 3), "target_ms": round(1e3 * t_t, 2),
            "explainer_ms": round(1e3 * t_e, 2), "time_ratio": round(t_e / t_t, 3),
            "threads": torch.get_num_threads()}


def choose_defaults(results: dict) -> dict:
    """Picks (lambda_neg, smooth) with the best mean pointing game of TVE over all tasks; ties
    (within half a point) go to the higher mean Spearman against occlusion under the same rule."""
    scores = {}
    for setting in results["emoji"]["fidelity"]:
        if not setting.startswith("lneg"):
            continue
        pg = statistics.mean(results[t]["fidelity"][setting]["pointing_tve"] for t in results)
        sp = statistics.mean(results[t]["fidelity"][setting]["spearman"] for t in results)
        scores[setting] = (round(pg, 3), sp)
    best_pg = max(v[0] for v in scores.values())
    best = max((s for s, v in scores.items() if v[0] >= best_pg - 0.005), key=lambda s: scores[s][1])
    lambda_neg = float(best.split("_")[0][4:])
    return {"lambda_pos": 1.0, "lambda_neg": lambda_neg, "smooth": best.endswith("smooth"),
            "chosen_by": "scripts/maintainer/evaluate_explainer.py: best mean TVE pointing game over the held-out "
                         "sets (ties: mean Spearman vs windowed occlusion)",
            "setting": best, "scores": {k: {"pointing_tve": v[0], "spearman": round(v[1], 3)}
                                        for k, v in scores.items()}}


def markdown(out: dict) -> str:
    """The fidelity and cost tables of models/README.md for one evaluation."""
    lines = ["| task (head) | lambda_neg | smooth | Spearman | Pearson | IoU top-10% | Spearman vs raw occ. "
             "| pointing TVE | pointing occ. |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for task, r in out["tasks"].items():
        for setting, v in r["fidelity"].items():
            if not setting.startswith("lneg"):
                continue
            lneg, smooth = setting.split("_")
            lines.append(f"| {task} ({r['head']}) | {lneg[4:]} | {'yes' if smooth == 'smooth' else 'no'} | "
                         f"{v['spearman']:.3f} | {v['pearson']:.3f} | {v['iou_top10']:.3f} | "
                         f"{v['spearman_vs_raw_occlusion']:.3f} | {100 * v['pointing_tve']:.1f} | "
                         f"{100 * v['pointing_occlusion']:.1f} |")
    lines += ["", "| task | R^2 psi_pos vs E(x_S) | R^2 psi_neg vs E(x_-S) |", "| --- | ---: | ---: |"]
    for task, r in out["tasks"].items():
        lines.append(f"| {task} | {r['fidelity']['r2_pos']:.3f} | {r['fidelity']['r2_neg']:.3f} |")
    if "cost" in out:
        c = out["cost"]
        lines += ["", f"Cost (batch 1, {threads.describe_threads(c.get('threads', 1))}): explainer {c['explainer_gflops']:.3f} GFLOP vs target "
                      f"{c['target_gflops']:.3f} GFLOP ({c['flops_ratio']:.2f}x); "
                      f"{c['explainer_ms']:.1f} ms vs {c['target_ms']:.1f} ms ({c['time_ratio']:.2f}x)."]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, name: str, section: str) -> None:
    """Replaces (or appends, under '## TVE explainers') this bundle's explainer section of
    models/README.md, between markers, leaving every other part of the file as it is."""
    begin, end = f"<!-- tve-explainer:{name} -->", f"<!-- /tve-explainer:{name} -->"
    text = readme.read_text() if readme.is_file() else "# Models\n"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        if "## TVE explainers" not in text:
            text = text.rstrip("\n") + "\n\n## TVE explainers\n\n"
        text = text.rstrip("\n") + "\n\n" + block
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--checkpoint", type=Path, default=None, help="evaluate a training checkpoint instead")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--cache-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--defaults", type=Path, default=None, help="write the chosen defaults here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the README tables here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    threads.configure_script(args.threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads
    path = Path(args.model) if Path(args.model).is_dir() else REPO / "models" / args.model
    b = bundle.Bundle(path)
    m = b.manifest
    grid, radius = m["grid"], m["radius"]
    log = Logger(None)
    caches = {t: fidelity.occlusion_cache(b, t, args.n, log=log) for t in args.tasks}
    if args.cache_only:
        return
    target = trunks.eager_target(b)
    if args.checkpoint is not None:
        eager, state = explainer_training.load_checkpoint(target, grid, radius, b.input_size, args.checkpoint)
        explainer = torch.jit.script(eager)
        source = {"checkpoint": str(args.checkpoint), "step": state["step"]}
    else:
        if b.explainer is None:
            raise SystemExit(f"{path} has no explainer; pass --checkpoint")
        explainer, eager, source = b.explainer, None, {"explainer_sha256": m["explainer"]["sha256"]}
    run = explainer
    if hasattr(explainer, "forward_with_embedding"):
        # What `tve explain` runs: the explainer given the target's own embedding of the image.
        run = lambda x: explainer.forward_with_embedding(x, b.target.embed(x))  # noqa: E731
        source["path"] = "forward_with_embedding(x, target.embed(x))"
    results = {}
    for t in args.tasks:
        head = b.target.head if t == "emoji" else b.heads[t]
        results[t] = {"head": "target" if t == "emoji" else f"heads/{t}",
                      "fidelity": fidelity.fidelity(run, head, caches[t], grid, radius)}
        log(f"{t}: {json.dumps(results[t]['fidelity'])}")
    out = {"bundle": str(path), "target_sha256": m["target"]["sha256"], "n": args.n,
           "heldout_seed": data.HELDOUT_SEED, "source": source, "tasks": results}
    if eager is not None:
        out["cost"] = cost(b, explainer, eager, target)
        log(f"cost: {json.dumps(out['cost'])}")
    out["defaults"] = choose_defaults(results)
    log(f"defaults: {json.dumps(out['defaults'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(out))
    if args.defaults:
        d = dict(out["defaults"])
        d["metrics"] = {t: {k: round(v, 3) for k, v in results[t]["fidelity"][d["setting"]].items()}
                        for t in results}
        args.defaults.write_text(json.dumps(d, indent=2) + "\n")


if __name__ == "__main__":
    main()
