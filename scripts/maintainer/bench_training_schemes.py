#!/usr/bin/python3
"""Held-out fidelity of TVE explainers against the encoder passes and wall time their training
cost, for the training schemes of tvelib.explainer_training (stream: fresh targets every step;
bank: targets computed once, then fitted), on a shipped bundle's encoder.

    /usr/bin/python3 scripts/maintainer/bench_training_schemes.py --model resnet --out runs.jsonl \\
        --run stream:steps=440 --run bank:bank_images=1760,centres=32,steps=4400

Each --run is SCHEME:FIELD=VALUE,... (fields of tvelib.explainer.ExplainerConfig). Every finished
run appends one JSON line to --out: its config, encoder passes, seconds (all, and in encoder
targets), and fidelity on the first --n held-out scenes of each task against exact windowed
occlusion (tvelib.fidelity; emoji with the target's head, the others with the bundle's heads the
explainer never saw). Runs live in $TVE_CACHE/bench-schemes/<bundle>/<run> and resume when killed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import bundle, explainer as ex, explainer_training, fidelity, files, threads, trunks  # noqa: E402
from tvelib.runs import Logger  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def parse_run(text: str) -> dict:
    scheme, _, rest = text.partition(":")
    fields = {f.name: f.type for f in ex.ExplainerConfig.__dataclass_fields__.values()}
    values = {"scheme": scheme}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        if k not in fields:
            raise SystemExit(f"--run {text}: {k} is not an ExplainerConfig field")
        values[k] = type(getattr(ex.ExplainerConfig, k))(v)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--run", action="append", required=True, type=parse_run)
    ap.add_argument("--n", type=int, default=100, help="held-out scenes per task")
    ap.add_argument("--tasks", nargs="+", default=["emoji", "fashion"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shipped", action="store_true", help="also measure the bundle's own explainer")
    ap.add_argument("--precision-drift", type=int, default=0, metavar="N",
                    help="also: exact occlusion of the first N held-out scenes of each task with the encoder under "
                         "bf16 autocast against fp32 (median Spearman of the maps), the targets' precision lever")
    args = ap.parse_args()
    threads.configure_script(args.threads)
    path = Path(args.model) if Path(args.model).is_dir() else REPO / "models" / args.model
    b = bundle.Bundle(path)
    m = b.manifest
    grid, radius, size = m["grid"], m["radius"], b.input_size
    log = Logger(None)
    caches = {t: fidelity.occlusion_cache(b, t, args.n, log=log) for t in args.tasks}
    target = trunks.eager_target(b)
    if args.precision_drift:
        drift(b, target, caches, args, log)
    done = set()
    if args.out.is_file():
        done = {json.dumps(json.loads(line)["run"], sort_keys=True) for line in args.out.read_text().splitlines()
                if line and "run" in json.loads(line)}
    if args.shipped:
        args.run.insert(0, {"scheme": "shipped"})
    for values in args.run:
        key = json.dumps(values, sort_keys=True)
        if key in done:
            log(f"{key}: measured already")
            continue
        if values["scheme"] == "shipped":  # the bundle's own explainer, as its manifest records it
            e = m["provenance"]["explainer"]
            c = e["config"]
            passes = 2 * c["steps"] * c["batch"] * c["centres"]
            shipped = b.explainer
            evaluate(b, lambda x: shipped.forward_with_embedding(x, b.target.embed(x)), caches, args,
                     {"run": values, "bundle": m["name"], "encoder_passes": passes,
                      "seconds": e.get("train_seconds"), "threads": e.get("threads"), "tasks": {}}, log)
            continue
        cfg = ex.ExplainerConfig(**{"scene_version": ex.scene_version_of(m),
                                    "pretrain_classes": ex.pretrain_classes_of(m), **values})
        name = "-".join(f"{k}{v}" for k, v in sorted(values.items()))
        run_dir = files.cache_dir() / "bench-schemes" / m["name"] / name
        t = time.time()
        model, state = explainer_training.train(target, grid, radius, size, cfg, run_dir, Logger(run_dir / "train.log"),
                                                max_minutes=1e9, checkpoint_minutes=3.0)
        scripted = model.eval()
        run = lambda x: scripted.forward_with_embedding(x, b.target.embed(x))  # noqa: E731  (what tve runs)
        result = {"run": values, "bundle": m["name"], "encoder_passes": state["encoder_passes"],
                  "seconds": round(state["seconds"], 1), "target_seconds": round(state["target_seconds"], 1),
                  "wall_seconds_this_call": round(time.time() - t, 1), "threads": torch.get_num_threads(),
                  "tasks": {}}
        evaluate(b, run, caches, args, result, log)


def drift(b, target, caches, args, log) -> None:
    """bf16-autocast exact occlusion against the cached fp32 one, per transfer setting."""
    from tvelib.metrics import spearman
    from tvelib.occlusion import occlusion_embeddings, rule
    grid, radius = b.manifest["grid"], b.manifest["radius"]
    out = {"precision_drift": {}, "bundle": b.manifest["name"], "n": args.precision_drift}
    for task, occ in caches.items():
        n = args.precision_drift
        x = occ["images"][:n]
        t = time.time()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            pos, neg = occlusion_embeddings(target.embed, x, grid, radius)
        bf16_s = time.time() - t
        t = time.time()
        with torch.no_grad():
            occlusion_embeddings(target.embed, x[:2], grid, radius)
        fp32_s = (time.time() - t) * n / 2
        head = target.head if task == "emoji" else b.heads[task]
        cells = grid * grid
        logits = lambda z: head(z.float().reshape(n * cells, -1)).view(n, cells, -1)  # noqa: E731
        classes = head(occ["clean"][:n]).argmax(1)
        row = {"bf16_seconds": round(bf16_s, 1), "fp32_seconds_estimated": round(fp32_s, 1)}
        for lneg in (0.0, 1.0):
            a = rule(logits(occ["pos"][:n]), logits(occ["neg"][:n]), classes, grid, 1.0, lneg, False, radius)
            c = rule(logits(pos), logits(neg), classes, grid, 1.0, lneg, False, radius)
            row[f"lneg{lneg:g}_raw_spearman_median"] = round(float(spearman(a.flatten(1), c.flatten(1)).median()), 4)
            row[f"lneg{lneg:g}_raw_spearman_min"] = round(float(spearman(a.flatten(1), c.flatten(1)).min()), 4)
        out["precision_drift"][task] = row
        log(f"precision drift {task}: {row}")
    with open(args.out, "a") as f:
        f.write(json.dumps(out) + "\n")


def evaluate(b, run, caches, args, result: dict, log) -> None:
    """Fidelity of `run` (x -> psi_pos, psi_neg) on each task; appends result to --out."""
    m = b.manifest
    grid, radius = m["grid"], m["radius"]
    with torch.no_grad():
        for task in args.tasks:
            head = b.target.head if task == "emoji" else b.heads[task]
            r = fidelity.fidelity(run, head, caches[task], grid, radius)
            result["tasks"][task] = {k: ({kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict)
                                         else round(v, 4)) for k, v in r.items()}
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    e, fa = result["tasks"].get("emoji", {}), result["tasks"].get("fashion", {})
    log(f"{json.dumps(result['run'])}: {result['encoder_passes']} passes, {result['seconds']} s; Spearman raw/smooth lneg0 "
        f"emoji {e.get('lneg0_raw', {}).get('spearman')}/{e.get('lneg0_smooth', {}).get('spearman')} "
        f"fashion {fa.get('lneg0_raw', {}).get('spearman')}/{fa.get('lneg0_smooth', {}).get('spearman')}")


if __name__ == "__main__":
    main()
