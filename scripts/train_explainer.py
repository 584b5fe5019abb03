#!/usr/bin/python3
"""Pre-trains a TVE explainer against a bundle's frozen encoder on EmojiScenes, resumably, and
optionally exports it into the bundle.

    /usr/bin/python3 scripts/train_explainer.py --model models/resnet                  # train (stage of <= 85 min)
    /usr/bin/python3 scripts/train_explainer.py --model models/resnet                  # again: resumes
    /usr/bin/python3 scripts/train_explainer.py --model models/resnet --export         # train to the end, export
    /usr/bin/python3 scripts/train_explainer.py --model models/resnet --export-only    # export the checkpoint
    /usr/bin/python3 scripts/train_explainer.py --model models/tiny-resnet --smoke --run /tmp/r --export-to /tmp/b

Runs and checkpoints live in --run (default $TVE_CACHE/explainers/<bundle name>-<target sha[:12]>),
with train.log. The run directory is tied to one configuration: a checkpoint made with other
settings is refused. The exported explainer's defaults (lambda_neg, smooth) are read from
<run>/defaults.json when scripts/evaluate_explainer.py has written it (chosen on the held-out sets),
otherwise from --lambda-neg/--smooth.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import bundle, data, explainer as ex, explainer_training, fidelity, files, threads, trunks  # noqa: E402
from tvelib.runs import Logger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def resolve_bundle(name: str) -> Path:
    p = Path(name)
    if p.is_dir():
        return p
    if (REPO / "models" / name).is_dir():
        return REPO / "models" / name
    raise SystemExit(f"no bundle {name!r}: neither a folder nor models/{name}")


def default_run(b: bundle.Bundle) -> Path:
    return files.cache_dir() / "explainers" / f"{b.manifest['name']}-{b.manifest['target']['sha256'][:12]}"


def export(b: bundle.Bundle, model: torch.nn.Module, state: dict, out_dir: Path, defaults: dict,
           log) -> dict:
    """Writes the explainer into out_dir (a copy of the bundle unless it is the bundle itself)."""
    if out_dir.resolve() != b.path.resolve():
        shutil.copytree(b.path, out_dir, dirs_exist_ok=True)
    cfg = state["config"]
    provenance = {"script": "scripts/train_explainer.py", "architecture": "TrunkExplainer (tvelib.explainer)",
                  "config": cfg, "steps_done": state["step"], "images_seen": state["images"],
                  "train_seconds": round(state["seconds"], 1), "threads": state.get("threads"),
                  "data": {"task": "emoji", "train_seed": cfg["data_seed"], "class_seed": data.CLASS_SEED,
                           "scene_version": cfg.get("scene_version", 1),
                           "num_classes": cfg.get("pretrain_classes", data.BASE_PRETRAIN_CLASSES)},
                  "defaults_chosen_by": defaults.get("chosen_by", "command-line flags"),
                  "torch": torch.__version__}
    if "metrics" in defaults:
        provenance["metrics"] = defaults["metrics"]
    manifest = bundle.add_explainer(out_dir, model, {k: defaults[k] for k in ("lambda_pos", "lambda_neg", "smooth")},
                                    provenance)
    log(f"exported explainer to {out_dir}/explainer.pt (sha256 {manifest['explainer']['sha256'][:12]}..., "
        f"target_sha256 {manifest['explainer']['target_sha256'][:12]}...)")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="bundle folder or name under models/")
    ap.add_argument("--run", type=Path, default=None, help="run folder (checkpoint, log)")
    ap.add_argument("--stage-minutes", type=float, default=85.0, help="stop (and checkpoint) after this long")
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0)
    ap.add_argument("--smoke", action="store_true", help="a few steps of a small configuration")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    ap.add_argument("--eval-every", type=int, default=0, help="quick fidelity on 20 held-out emoji scenes")
    ap.add_argument("--export", action="store_true", help="export into the bundle once all steps are done")
    ap.add_argument("--export-only", action="store_true", help="export the current checkpoint, train nothing")
    ap.add_argument("--export-to", type=Path, default=None, help="export into this folder (a bundle copy)")
    ap.add_argument("--lambda-neg", type=float, default=1.0)
    ap.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=1)
    for f in fields(ex.ExplainerConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                        help=f"ExplainerConfig.{f.name} (default {f.default})")
    args = ap.parse_args()
    threads.configure_script(args.threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads

    b = bundle.Bundle(resolve_bundle(args.model))
    m = b.manifest
    overrides = {f.name: getattr(args, f.name) for f in fields(ex.ExplainerConfig) if getattr(args, f.name) is not None}
    if args.smoke:
        base = dict(steps=4, batch=4, centres=2, width=32, depth=1, calib_images=8)
        base.update(overrides)
        overrides = base
    overrides.setdefault("scene_version", ex.scene_version_of(m))
    overrides.setdefault("pretrain_classes", ex.pretrain_classes_of(m))
    cfg = ex.ExplainerConfig(**overrides)
    run = args.run or default_run(b)
    log = Logger(run / "train.log")
    target = trunks.eager_target(b)
    grid, radius, size = m["grid"], m["radius"], b.input_size

    if args.export_only:
        model, state = explainer_training.load_checkpoint(target, grid, radius, size, run / "explainer.ckpt")
    else:
        eval_fn = None
        if args.eval_every:
            quick = fidelity.occlusion_cache(b, "emoji", 20, log=log)

            def eval_fn(model, step):
                r = fidelity.fidelity(model, b.target.head, quick, grid, radius)
                return {k: {kk: round(vv, 3) for kk, vv in v.items() if kk in ("spearman", "pearson")}
                        if isinstance(v, dict) else round(v, 3) for k, v in r.items() if k != "n"}

        log(f"bundle {b.path} (target {m['target']['sha256'][:12]}...), grid {grid}, radius {radius}, "
            f"run {run}, threads {args.threads}")
        model, state = explainer_training.train(target, grid, radius, size, cfg, run, log, max_minutes=args.stage_minutes,
                                checkpoint_minutes=args.checkpoint_minutes, max_steps=args.max_steps,
                                eval_fn=eval_fn, eval_every=args.eval_every)
        if not state["done"] and not args.smoke:
            log("not finished: run the same command again to continue")
    if args.export or args.export_only or args.export_to:
        if not (state["done"] or args.smoke or args.export_only):
            log("not exporting an unfinished run (use --export-only to export the checkpoint anyway)")
            return
        defaults_path = run / "defaults.json"
        if defaults_path.is_file():
            defaults = json.loads(defaults_path.read_text())
        else:
            defaults = {"lambda_pos": 1.0, "lambda_neg": args.lambda_neg, "smooth": args.smooth}
        export(b, model, state, args.export_to or b.path, defaults, log)


if __name__ == "__main__":
    main()
