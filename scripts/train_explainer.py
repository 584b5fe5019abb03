#!/usr/bin/python3
"""Trains a TVE explainer against a bundle's frozen encoder, without labels, resumably, and
exports it into the bundle.

On your own images (any classifier bundle, e.g. from scripts/make_bundle.py):

    /usr/bin/python3 scripts/train_explainer.py --model my-bundle --images photos/ --time-budget 2h
    /usr/bin/python3 scripts/train_explainer.py --model my-bundle --images photos/ --steps 3000 --size large --device cuda
    torchrun --nproc_per_node 4 scripts/train_explainer.py --model my-bundle --images photos/ --device cuda

  The folder is read recursively (any sizes; the bundle's own preprocessing; files that do not
  decode are skipped and counted). --holdout images (a seeded hash of their paths) are kept out of
  training for the fidelity report at the end: TVE against exact windowed occlusion (and, with a
  built tve, deletion AUC of tve against gradcam), printed and stored in the manifest's
  provenance. The explainer is written into the bundle when the run ends (--no-export: keep only
  the checkpoint). Run the same command again after a kill: it resumes from the last checkpoint.

On the built-in EmojiScenes stream (how the shipped explainers were made, models/README.md):

    /usr/bin/python3 scripts/train_explainer.py --model models/resnet                  # train (stage of <= 85 min)
    /usr/bin/python3 scripts/train_explainer.py --model models/resnet                  # again: resumes
    /usr/bin/python3 scripts/train_explainer.py --model models/resnet --export         # train to the end, export
    /usr/bin/python3 scripts/train_explainer.py --model models/resnet --export-only    # export the checkpoint
    /usr/bin/python3 scripts/train_explainer.py --model models/tiny-resnet --smoke --run /tmp/r --export-to /tmp/b

Runs and checkpoints live in --run (default $TVE_CACHE/explainers/<bundle name>-<target sha[:12]>,
plus -<folder hash> for a folder), with train.log. The run directory is tied to one configuration
and one image folder listing: a checkpoint made otherwise is refused. The exported explainer's
defaults (lambda_neg, smooth) are: with a folder, the setting that matches exact occlusion best
on the held-out images; otherwise <run>/defaults.json when scripts/evaluate_explainer.py has
written it, or --lambda-neg/--smooth.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import List, NoReturn, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import bundle, data, explainer as ex, explainer_training, fidelity, files, folder, runs, threads, trunks  # noqa: E402
from tvelib.runs import Logger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# Explainer sizes (meta head width x depth): a CPU user's, the shipped explainers', a GPU user's.
# Their fidelity and cost on one model are measured in models/README.md ("Explainer sizes").
SIZES = {"small": dict(width=48, depth=1), "medium": dict(width=96, depth=2), "large": dict(width=192, depth=4)}


def fail(message: str) -> NoReturn:
    print(f"train_explainer.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_bundle(name: str) -> Path:
    p = Path(name)
    if p.is_dir():
        return p
    if (REPO / "models" / name).is_dir():
        return REPO / "models" / name
    raise SystemExit(f"no bundle {name!r}: neither a folder nor models/{name}")


def default_run(b: bundle.Bundle, images: Optional[folder.ImageFolder]) -> Path:
    name = f"{b.manifest['name']}-{b.manifest['target']['sha256'][:12]}"
    if images is not None:
        name += "-" + images.describe()["listing_sha256"][:8]
    return files.cache_dir() / "explainers" / name


def export(b: bundle.Bundle, model: torch.nn.Module, state: dict, out_dir: Path, defaults: dict,
           log, data_record: dict, extra: Optional[dict] = None) -> dict:
    """Writes the explainer into out_dir (a copy of the bundle unless it is the bundle itself)."""
    if out_dir.resolve() != b.path.resolve():
        shutil.copytree(b.path, out_dir, dirs_exist_ok=True)
    cfg = state["config"]
    provenance = {"script": "scripts/train_explainer.py", "architecture": "TrunkExplainer (tvelib.explainer)",
                  "config": cfg, "steps_done": state["step"], "images_seen": state["images"],
                  "train_seconds": round(state["seconds"], 1), "threads": state.get("threads"),
                  "data": data_record, "defaults_chosen_by": defaults.get("chosen_by", "command-line flags"),
                  "torch": torch.__version__, **(extra or {})}
    if "metrics" in defaults:
        provenance["metrics"] = defaults["metrics"]
    manifest = bundle.add_explainer(out_dir, model.cpu(), {k: defaults[k] for k in ("lambda_pos", "lambda_neg", "smooth")},
                                    provenance)
    log(f"exported explainer to {out_dir}/explainer.pt (sha256 {manifest['explainer']['sha256'][:12]}..., "
        f"target_sha256 {manifest['explainer']['target_sha256'][:12]}...)")
    return manifest


def emoji_record(cfg: dict) -> dict:
    return {"task": "emoji", "train_seed": cfg["data_seed"], "class_seed": data.CLASS_SEED,
            "scene_version": cfg.get("scene_version", 1),
            "num_classes": cfg.get("pretrain_classes", data.BASE_PRETRAIN_CLASSES)}


def distributed(device: str) -> explainer_training.Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) -> a process group; one process
    otherwise. CUDA ranks each take the GPU LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return explainer_training.Distributed()
    import torch.distributed as tdist
    tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return explainer_training.Distributed(tdist.get_rank(), tdist.get_world_size())


def resolve_device(requested: str, dist_local_rank: int) -> str:
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(f"--device {requested}: this torch ({torch.__version__}) sees no CUDA device")
        if requested == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return f"cuda:{dist_local_rank}"
    elif requested != "cpu":
        fail(f"--device {requested!r}: expected cpu, cuda or cuda:N")
    return requested


def choose_defaults(report: dict) -> dict:
    """The transfer-rule setting whose maps match raw exact occlusion best (median Spearman) on
    the held-out images: all four settings are compared against the same reference map."""
    best = max(fidelity.SETTINGS, key=lambda s: report[f"lneg{s[0]:g}_{'smooth' if s[1] else 'raw'}"]
               ["spearman_vs_raw_occlusion"])
    return {"lambda_pos": 1.0, "lambda_neg": best[0], "smooth": best[1],
            "chosen_by": "best median Spearman against raw exact occlusion on the held-out images"}


def deletion_auc_against_gradcam(tve: Optional[Path], bundle_dir: Path, held_out: List[Path], log) -> Optional[dict]:
    """`tve eval` on the held-out images, methods tve and gradcam: median deletion AUC of each
    (lower is better). None when no tve binary is found or it fails (said in the log)."""
    if tve is None or not held_out:
        log("deletion AUC against gradcam: skipped (no tve binary: build it, or pass --tve PATH)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(tve), "eval", *map(str, held_out), "--model", str(bundle_dir), "--methods", "tve,gradcam",
               "--no-fidelity", "--out", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        summary = Path(tmp) / "summary.json"
        if done.returncode not in (0, 3) or not summary.is_file():
            log(f"deletion AUC against gradcam: tve eval exited {done.returncode}: {done.stderr.strip()[-300:]}")
            return None
        methods = json.loads(summary.read_text())["methods"]
    return {m: {k: round(methods[m][k]["median"], 4) for k in ("deletion_auc", "insertion_auc")
                if k in methods[m]} for m in ("tve", "gradcam") if m in methods}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="bundle folder or name under models/")
    ap.add_argument("--images", type=Path, default=None,
                    help="train on this folder of your own images (recursive, no labels) instead of EmojiScenes")
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="explainer size: " + ", ".join(f"{k} (width {v['width']}, depth {v['depth']})"
                                                        for k, v in SIZES.items()) + "; default medium")
    ap.add_argument("--time-budget", default=None,
                    help="with --images: pick --steps to end (report included) within this time, e.g. 45m, 2h")
    ap.add_argument("--holdout", type=int, default=20, help="with --images: held-out images for the report")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (torchrun: each rank its LOCAL_RANK)")
    ap.add_argument("--tve", type=Path, default=None, help="tve binary for the deletion AUC report "
                                                             "(default build/tve or tve on PATH)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="progress line with loss, images/s and ETA on stderr")
    ap.add_argument("--run", type=Path, default=None, help="run folder (checkpoint, log)")
    ap.add_argument("--stage-minutes", type=float, default=None,
                    help="stop (and checkpoint) after this long; run again to continue (default: 85, "
                         "with --images none)")
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0)
    ap.add_argument("--smoke", action="store_true", help="a few steps of a small configuration")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    ap.add_argument("--eval-every", type=int, default=0, help="quick fidelity on 20 held-out emoji scenes")
    ap.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                    help="export into the bundle once all steps are done (default: only with --images)")
    ap.add_argument("--export-only", action="store_true", help="export the current checkpoint, train nothing")
    ap.add_argument("--export-to", type=Path, default=None, help="export into this folder (a bundle copy)")
    ap.add_argument("--lambda-neg", type=float, default=1.0)
    ap.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=1)
    for f in fields(ex.ExplainerConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                        help=f"ExplainerConfig.{f.name} (default {f.default})")
    args = ap.parse_args()
    started = time.time()
    try:
        args.tve = files.find_tve(args.tve)
    except ValueError as e:
        fail(str(e))
    threads.configure_script(args.threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = distributed(device)
    budget = None
    try:
        budget = runs.parse_duration(args.time_budget) if args.time_budget else None
    except ValueError as e:
        fail(str(e))
    if budget is not None and args.images is None:
        fail("--time-budget needs --images (the built-in stream's runs are sized by --steps)")
    if budget is not None and args.steps is not None:
        fail("give --steps or --time-budget, not both")

    try:
        b = bundle.Bundle(resolve_bundle(args.model))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        fail(f"{args.model}: not a loadable bundle: {e}")
    m = b.manifest
    try:
        target = trunks.eager_target(b)
    except ImportError as e:  # a timm bundle under Debian's python, which has no timm
        fail(f"{b.path}: rebuilding its model needs {e.name or e}: run this script with the current-torch venv's "
             f"python, $(/usr/bin/python3 scripts/torch_env.py python) scripts/train_explainer.py ...")
    except ValueError as e:
        fail(f"{e}\n  The explainer copies the encoder's first stages, so it needs the model as Python modules: "
             f"make the bundle with scripts/make_bundle.py --torchvision or --timm (docs/own-model.md).")
    grid, radius, size = m["grid"], m["radius"], b.input_size
    if m["input"]["height"] != m["input"]["width"]:
        fail(f"{b.path}: input {m['input']['height']} x {m['input']['width']} is not square; explainers "
             f"are trained on square inputs")

    images = None
    if args.images is not None:
        try:
            images = folder.ImageFolder(args.images, folder.InputSpec.from_manifest(m), holdout=args.holdout)
        except ValueError as e:
            fail(str(e))
    overrides = {f.name: getattr(args, f.name) for f in fields(ex.ExplainerConfig) if getattr(args, f.name) is not None}
    for k, v in SIZES[args.size or "medium"].items():
        overrides.setdefault(k, v)
    if args.smoke:
        base = dict(steps=4, batch=4, centres=2, width=32, depth=1, calib_images=8)
        base.update(overrides)
        overrides = base
    if images is None:
        overrides.setdefault("scene_version", ex.scene_version_of(m))
        overrides.setdefault("pretrain_classes", ex.pretrain_classes_of(m))
    else:
        overrides.setdefault("calib_images", min(32, max(4, len(images.train))))
    run = args.run or default_run(b, images)
    log = Logger(run / "train.log") if dist.leader else (lambda msg: None)
    progress = runs.Progress() if args.progress and dist.leader else None

    source = None
    if images is not None:
        record = images.describe()
        log(f"images: {record['files']} files under {images.root} ({record['train']} for training, "
            f"{record['held_out']} held out for the report)")
        calib_n = overrides["calib_images"]

        def batch_fn(step: int, batch: int = overrides.get("batch", ex.ExplainerConfig.batch)) -> torch.Tensor:
            return images.batch(overrides.get("seed", 0), step, batch, dist.rank, dist.world)

        source = explainer_training.TrainingData(
            batch_fn, lambda: images.batch(overrides.get("seed", 0) + 7919, 0, calib_n),
            {k: record[k] for k in ("listing_sha256", "files", "held_out")})
        if budget is not None and (run / "explainer.ckpt").is_file():
            # Resuming a budgeted run: its step count was fixed when it started, and the budget
            # is for the whole run, so only what the earlier calls left of it remains.
            saved = torch.load(run / "explainer.ckpt", map_location="cpu")["state"]
            overrides["steps"] = saved["config"]["steps"]
            budget = max(60.0, budget - saved["seconds"])
        elif budget is not None:
            trial = ex.ExplainerConfig(**overrides)
            t_step = explainer_training.seconds_per_step(target, grid, radius, size, trial, source, device, trials=1)
            # The budget counts from the start: loading and this trial are spent already. The
            # report's exact occlusion costs 2 G^2 passes per held-out image, against the
            # 2 * batch * centres masked passes (about 80% of a step) that a step costs.
            budget -= time.time() - started
            report_steps = len(images.held_out) * 2 * grid * grid / (2 * trial.batch * trial.centres) / 0.8
            # and calibration, 8 centres on each of calib_images, before the first step
            report_steps += trial.calib_images * min(8, grid * grid) / (trial.batch * trial.centres) / 0.8
            overrides["steps"] = max(1, int(0.95 * budget / t_step - report_steps))
            log(f"time budget {args.time_budget} ({runs.format_duration(budget)} left after loading and a trial "
                f"step): {t_step:.2f} s per step measured -> "
                f"{overrides['steps']} steps (calibration and the report's occlusion counted as {report_steps:.0f} steps)")
        if budget is not None and dist.world > 1:
            # Every rank must run the same steps (DDP waits for all of them at each step): rank 0's
            # count is the run's, and the ranks stop by step count, never each by its own clock.
            import torch.distributed as tdist
            shared = [overrides["steps"]]
            tdist.broadcast_object_list(shared, src=0)
            overrides["steps"], budget = shared[0], None
    cfg = ex.ExplainerConfig(**overrides)
    max_minutes = args.stage_minutes if args.stage_minutes is not None else (85.0 if images is None else 1e9)
    if dist.world > 1:
        max_minutes = 1e9
    if budget is not None:
        max_minutes = min(max_minutes, budget / 60)

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
        model, state = explainer_training.train(target, grid, radius, size, cfg, run, log, max_minutes=max_minutes,
                                                checkpoint_minutes=args.checkpoint_minutes, max_steps=args.max_steps,
                                                eval_fn=eval_fn, eval_every=args.eval_every, source=source,
                                                device=device, dist=dist, progress=progress)
        if not state["done"] and not args.smoke:
            log("not finished: run the same command again to continue")
    if not dist.leader:
        return
    want_export = args.export if args.export is not None else images is not None
    if not (want_export or args.export_only or args.export_to):
        return
    out_dir = args.export_to or b.path
    if images is not None:
        finish_folder_run(b, target, model, state, out_dir, images, grid, radius, device, log, args, budget)
        return
    if not (state["done"] or args.smoke or args.export_only):
        log("not exporting an unfinished run (use --export-only to export the checkpoint anyway)")
        return
    defaults_path = run / "defaults.json"
    if defaults_path.is_file():
        defaults = json.loads(defaults_path.read_text())
    else:
        defaults = {"lambda_pos": 1.0, "lambda_neg": args.lambda_neg, "smooth": args.smooth}
    export(b, model, state, out_dir, defaults, log, emoji_record(state["config"]))


def finish_folder_run(b, target, model, state, out_dir: Path, images: folder.ImageFolder, grid: int, radius: int,
                      device: str, log, args, budget: Optional[float]) -> None:
    """The end of a run on a folder: the fidelity report on the held-out images, the explainer
    exported with the best transfer-rule setting, the deletion AUC against gradcam by tve eval.
    target: the eager encoder the run trained against (frozen, so the report's occlusion uses it)."""
    if not (state["done"] or args.smoke or args.export_only or budget is not None):
        log("not exporting an unfinished run (run the same command again to continue, or --export-only)")
        return
    paths, held = images.held_out_images()
    report, defaults = None, {"lambda_pos": 1.0, "lambda_neg": args.lambda_neg, "smooth": args.smooth}
    if len(paths) >= 2:
        model = model.to(device)
        report = fidelity.held_out_report(model, target.to(device), held.to(device), grid, radius, log)
        defaults = choose_defaults(report)
    else:
        log(f"fidelity report: skipped ({len(paths)} held-out images decode; --holdout N with a larger folder)")
    record = {**images.describe(), "bad_files": len(images.bad),
              "bad_examples": [f"{p}: {why}" for p, why in list(images.bad.items())[:5]]}
    extra = {"device": device, "stopped_early": not state["done"]}
    if report is not None:
        extra["fidelity"] = {"held_out_images": len(paths), "reference": "exact windowed occlusion", **report}
    export(b, model, state, out_dir, defaults, log, record, extra)
    if report is not None:
        auc = deletion_auc_against_gradcam(args.tve, out_dir, paths, log)
        if auc is not None:
            manifest = json.loads((out_dir / "manifest.json").read_text())
            manifest["provenance"]["explainer"]["fidelity"]["tve_eval"] = auc
            files.write_json(out_dir / "manifest.json", manifest)
        print_report(report, defaults, auc, len(paths), log)
    if images.bad:
        log(f"{len(images.bad)} files did not decode and were skipped, e.g. "
            + "; ".join(f"{p}: {why}" for p, why in list(images.bad.items())[:3]))
    log(f"next: build/tve explain IMAGES --model {out_dir} --out overlays/")


def print_report(report: dict, defaults: dict, auc: Optional[dict], n: int, log) -> None:
    key = f"lneg{defaults['lambda_neg']:g}_{'smooth' if defaults['smooth'] else 'raw'}"
    r = report[key]
    log(f"fidelity on {n} held-out images, against exact windowed occlusion (setting {key}, the exported "
        f"default): median Spearman {r['spearman']:.3f}, Pearson {r['pearson']:.3f}, top-10% IoU "
        f"{r['iou_top10']:.3f}; R^2 psi_pos {report['r2_pos']:.3f}, psi_neg {report['r2_neg']:.3f}")
    if auc:
        log("deletion AUC (median, lower is better): " + ", ".join(
            f"{m} {v['deletion_auc']:.4f}" for m, v in auc.items() if "deletion_auc" in v))


if __name__ == "__main__":
    main()
