"""Trains a TVE explainer against a bundle's frozen encoder, without labels, resumably, and
exports it into the bundle.

On your own images (any classifier bundle, e.g. from scripts/make_bundle.py):

    /usr/bin/python3 scripts/train_explainer.py --model my-bundle --images photos/ --time-budget 2h
    /usr/bin/python3 scripts/train_explainer.py --model my-bundle --images photos/ --steps 3000 --size large --device cuda
    torchrun --nproc_per_node 4 scripts/train_explainer.py --model my-bundle --images photos/ --device cuda
    tve-train --model my-bundle --images photos/ ...     # the same, installed: pip install scripts/ (docs/own-model.md)

  The folder is read recursively (any sizes; the bundle's own preprocessing; files that do not
  decode are skipped and counted). Training fills a target bank (the encoder's exact masked
  embeddings of --bank-images images, 32 centres each: the expensive part, each pass spent once)
  and then fits the explainer to it for --steps steps; --time-budget plans both, and the report,
  from costs measured in the first seconds, and holds the plan with deadlines. --holdout images (a
  seeded hash of their paths) are kept out of training for the fidelity report at the end: TVE
  against exact windowed occlusion next to trivial baselines (a centre map, the training images'
  mean occlusion map, Grad-CAM) and, with a built tve, deletion AUC of tve against gradcam,
  printed and stored in the manifest's provenance. The explainer is written into the bundle when
  the run ends (--no-export: keep only the checkpoint; a bundle's explainer made by another run is
  replaced only with --replace-explainer). Ctrl-C or SIGTERM: checkpoint, one line, exit 130/143;
  run the same command again and it resumes. docs/own-model.md has the options and measurements.

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
on the held-out images; otherwise <run>/defaults.json when scripts/maintainer/evaluate_explainer.py has
written it, or --lambda-neg/--smooth.
"""
from __future__ import annotations

import time

STARTED = time.time()  # a --time-budget counts from here: loading torch is part of the run

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import List, NoReturn, Optional

import torch

from tvelib import (bundle, budget, data, explainer as ex, explainer_training, fidelity, files, folder, occlusion,
                    runs, threads, trunks)
from tvelib.runs import Logger

REPO = Path(__file__).resolve().parents[2]  # scripts/tvelib/cli_train.py: the source tree's models/
# The command as the user typed it (train_explainer.py, tve-train), for its messages.
PROG = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "train_explainer.py"


# Explainer sizes (meta head width x depth): a CPU user's, the shipped explainers', a GPU user's.
# Their fidelity and cost on one model are measured in models/README.md ("Explainer sizes").
SIZES = {"small": dict(width=48, depth=1), "medium": dict(width=96, depth=2), "large": dict(width=192, depth=4)}


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
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


def positive(kind, name: str):
    """An argparse type: a number of `kind` that must be > 0, refused with the option's name."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: expected a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: must be greater than 0")
        return value
    return parse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


# ExplainerConfig fields that are counts or rates and must be positive; the others take any value.
POSITIVE_FIELDS = {"steps", "batch", "centres", "width", "depth", "vit_depth", "calib_images", "bank_images", "lr"}
EXIT_INTERRUPTED_DOC = "130 after SIGINT (Ctrl-C), 143 after SIGTERM: checkpoint saved, run again to resume"
# Bank-scheme defaults for runs sized by --steps (a --time-budget sizes both): the measurements
# behind them are in docs/own-model.md ("Cheaper training"): 4400 steps of 16 images fitted to a
# bank of 1760 images, each image seen 40 times. Without --bank-images the bank keeps that ratio
# for any --steps and --batch (so --steps 3 makes a small bank, not 1760 images).
DEFAULT_BANK_CENTRES = 32
DEFAULT_BANK_STEPS = 4400
FITS_PER_BANK_IMAGE = 40


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"Exit codes: 0 done (or nothing left to do), 1 an unexpected error, 2 bad "
                                        f"arguments, files or settings (one line says which), "
                                        f"{EXIT_INTERRUPTED_DOC}.")
    ap.add_argument("--model", required=True, help="bundle folder or name under models/")
    ap.add_argument("--images", type=Path, default=None,
                    help="train on this folder of your own images (recursive, no labels) instead of EmojiScenes")
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="explainer size: " + ", ".join(f"{k} (width {v['width']}, depth {v['depth']})"
                                                        for k, v in SIZES.items()) + "; default medium")
    ap.add_argument("--scheme", choices=["bank", "stream"], default=None,
                    help="how targets are made: bank (computed once, then fitted; the default with --images) or "
                         "stream (fresh targets every step; how the shipped explainers were trained)")
    ap.add_argument("--time-budget", default=None,
                    help="with --images: plan the run (bank size, fitting steps, held-out report) to end within "
                         "this time, everything included, e.g. 45m, 2h")
    ap.add_argument("--max-memory", default="12G",
                    help="keep the run's peak memory under this (default 12G, for a 16 GB machine; lower when "
                         "the machine has less free memory)")
    ap.add_argument("--holdout", type=non_negative_int, default=20,
                    help="with --images: held-out images for the report (a budget may use fewer)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (torchrun: each rank its LOCAL_RANK)")
    ap.add_argument("--tve", type=Path, default=None, help="tve binary for the deletion AUC report "
                                                             "(default build/tve or tve on PATH)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="progress line with loss, images/s and ETA on stderr")
    ap.add_argument("--run", type=Path, default=None, help="run folder (checkpoint, target bank, report cache, log)")
    ap.add_argument("--restart", action="store_true", help="delete the run folder's checkpoint, bank and report "
                                                           "cache first, and start over")
    ap.add_argument("--replace-explainer", action="store_true",
                    help="export into a bundle that already has an explainer made by another run (refused "
                         "otherwise, so that a trained explainer is never replaced by accident)")
    ap.add_argument("--stage-minutes", type=positive(float, "--stage-minutes"), default=None,
                    help="stop (and checkpoint) after this long; run again to continue (default: 85, "
                         "with --images none)")
    ap.add_argument("--checkpoint-minutes", type=positive(float, "--checkpoint-minutes"), default=3.0)
    ap.add_argument("--smoke", action="store_true", help="a few steps of a small configuration")
    ap.add_argument("--max-steps", type=positive(int, "--max-steps"), default=None,
                    help="stop after this many steps in this call")
    ap.add_argument("--eval-every", type=non_negative_int, default=0,
                    help="quick fidelity on 20 held-out emoji scenes")
    ap.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                    help="export into the bundle once all steps are done (default: only with --images)")
    ap.add_argument("--export-only", action="store_true", help="export the current checkpoint, train nothing")
    ap.add_argument("--export-to", type=Path, default=None, help="export into this folder (a bundle copy)")
    ap.add_argument("--lambda-neg", type=float, default=1.0)
    ap.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=positive(int, "--threads"), default=None,
                    help=f"CPU threads (default: the cores this process may use, {threads.usable_cores()} here: "
                         f"its CPU affinity and cgroup quota)")
    for f in fields(ex.ExplainerConfig):
        if f.name == "scheme":
            continue
        kind = type(f.default)
        ap.add_argument("--" + f.name.replace("_", "-"), default=None,
                        type=positive(kind, "--" + f.name.replace("_", "-")) if f.name in POSITIVE_FIELDS else kind,
                        help=f"ExplainerConfig.{f.name} (default {f.default})")
    args = ap.parse_args()
    if args.time_budget is not None:
        try:
            args.time_budget_seconds = runs.parse_duration(args.time_budget)
        except ValueError as e:
            ap.error(f"--time-budget: {e}")
    else:
        args.time_budget_seconds = None
    try:
        args.max_memory_bytes = budget.parse_memory(args.max_memory)
    except ValueError as e:
        ap.error(str(e))
    if args.time_budget_seconds is not None and args.images is None:
        ap.error("--time-budget needs --images (the built-in stream's runs are sized by --steps)")
    if args.time_budget_seconds is not None and (args.steps is not None or args.bank_images is not None):
        ap.error("give --steps/--bank-images or --time-budget, not both: the budget plans them")
    if args.target_precision not in (None, "fp32", "bf16"):
        ap.error(f"--target-precision {args.target_precision!r}: expected fp32 or bf16")
    if args.time_budget_seconds is not None and args.scheme == "stream":
        ap.error("--time-budget plans a bank run; a --scheme stream run is sized by --steps")
    return args


def main() -> None:
    args = parse_args()
    runs.stop_on_signals()
    try:
        run(args)
    except runs.Interrupted as e:
        print(f"{PROG}: stopped by {e}: checkpoint saved; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(e.code)
    except ValueError as e:  # damaged checkpoints, changed settings, folders without usable images...
        fail(str(e))


def run(args: argparse.Namespace) -> None:
    started = STARTED
    try:
        args.tve = files.find_tve(args.tve)
    except ValueError as e:
        fail(str(e))
    n_threads = args.threads or threads.usable_cores()
    threads.configure_script(n_threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = distributed(device)
    time_budget = args.time_budget_seconds

    try:
        b = bundle.Bundle(resolve_bundle(args.model))
    except SystemExit as e:
        fail(str(e))
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
    run_dir = args.run or default_run(b, images)
    want_export = args.export if args.export is not None else images is not None
    out_dir = args.export_to or b.path
    if (want_export or args.export_only) and dist.leader:
        refuse_to_replace(b, out_dir, run_dir, args.replace_explainer)
    if args.restart and dist.leader:
        for name in ("explainer.ckpt", "report.json"):
            (run_dir / name).unlink(missing_ok=True)
        for path in list(run_dir.glob("bank-rank*.pt")) + list(run_dir.glob("report-occlusion/*.pt")):
            path.unlink()
    ckpt_path = run_dir / "explainer.ckpt"
    try:
        saved_state = files.load_data(ckpt_path)["state"] if ckpt_path.is_file() else None
    except ValueError as e:
        fail(f"{e}; delete it, or pass --restart, to start over")

    overrides = {f.name: getattr(args, f.name) for f in fields(ex.ExplainerConfig)
                 if f.name != "scheme" and getattr(args, f.name) is not None}
    overrides["scheme"] = args.scheme or ("bank" if images is not None else "stream")
    for k, v in SIZES[args.size or "medium"].items():
        overrides.setdefault(k, v)
    if "target_precision" not in overrides:
        if saved_state is not None:
            overrides["target_precision"] = saved_state["config"].get("target_precision", "fp32")
        elif overrides["scheme"] == "bank":
            overrides["target_precision"] = auto_precision(target, size, device)
    if overrides["scheme"] == "bank":
        overrides.setdefault("centres", DEFAULT_BANK_CENTRES)
        overrides.setdefault("steps", DEFAULT_BANK_STEPS)
        batch = overrides.get("batch", ex.ExplainerConfig.batch)
        overrides.setdefault("bank_images", max(batch, -(-overrides["steps"] * batch // FITS_PER_BANK_IMAGE)))
    if args.smoke:
        base = dict(steps=4, batch=4, centres=2, width=32, depth=1, calib_images=8, bank_images=8)
        base.update({k: v for k, v in overrides.items() if k != "bank_images" or args.bank_images is not None})
        overrides = base
    if images is None:
        overrides.setdefault("scene_version", ex.scene_version_of(m))
        overrides.setdefault("pretrain_classes", ex.pretrain_classes_of(m))
    else:
        overrides.setdefault("calib_images", min(32, max(4, len(images.train))))
    log = Logger(run_dir / "train.log") if dist.leader else (lambda msg: None)
    progress = runs.Progress() if args.progress and dist.leader else None

    source = None
    plan = None
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
        if time_budget is not None and saved_state is not None:
            # Resuming a budgeted run: its plan was fixed when it started, and the budget is for
            # the whole run, so only what the earlier calls left of it remains.
            for k in ("steps", "bank_images"):
                overrides[k] = saved_state["config"][k]
            plan = saved_state.get("plan")
            used = saved_state["seconds"] + (plan or {}).get("seconds", {}).get("loading and measuring", 0.0)
            time_budget = max(60.0, time_budget - used)
            log(f"time budget {args.time_budget}: resuming the planned run, {runs.format_duration(time_budget)} left")
        elif time_budget is not None:
            plan = plan_run(target, grid, radius, size, overrides, source, device, images, args, time.time() - started,
                            log)
            overrides["steps"], overrides["bank_images"] = plan["steps"], plan["bank_limit"]
        if time_budget is not None and dist.world > 1:
            # Every rank must run the same steps (DDP waits for all of them at each step): rank 0's
            # count is the run's, and the ranks stop by step count, never each by its own clock.
            import torch.distributed as tdist
            shared = [overrides["steps"], overrides["bank_images"]]
            tdist.broadcast_object_list(shared, src=0)
            overrides["steps"], overrides["bank_images"], time_budget = shared[0], shared[1], None
    cfg = ex.ExplainerConfig(**overrides)
    if images is not None and saved_state is not None and saved_state.get("done") and not args.export_only \
            and saved_state["config"] == {**asdict(cfg), "data": source.identity}:
        finished = (run_dir / "report.json").is_file() and not (want_export and not exported_by(out_dir, run_dir))
        if finished and len(images_report_names(run_dir)) >= min(args.holdout, len(images.held_out)):
            report = json.loads((run_dir / "report.json").read_text())
            log(f"{run_dir}: this run is finished and exported; its report (pass --restart to train again, or "
                f"--holdout N for a larger report):")
            print_report(report["fidelity"], report["defaults"], report.get("tve_eval"), report["held_out_images"], log)
            return
    max_minutes = args.stage_minutes if args.stage_minutes is not None else (85.0 if images is None else 1e9)
    if dist.world > 1:
        max_minutes = 1e9
    deadline = started + time_budget if time_budget is not None else None
    fill_stop = fit_deadline = None
    if deadline is not None and plan is not None:
        max_minutes = min(max_minutes, (deadline - budget.FIXED_SECONDS - time.time()) / 60)
        fill_stop, fit_deadline = replanning(plan, deadline, grid, cfg, args, images, log)

    if args.export_only:
        model, state = explainer_training.load_checkpoint(target, grid, radius, size, ckpt_path)
    else:
        eval_fn = None
        if args.eval_every:
            quick = fidelity.occlusion_cache(b, "emoji", 20, log=log)

            def eval_fn(model, step):
                r = fidelity.fidelity(model, b.target.head, quick, grid, radius)
                return {k: {kk: round(vv, 3) for kk, vv in v.items() if kk in ("spearman", "pearson")}
                        if isinstance(v, dict) else round(v, 3) for k, v in r.items() if k != "n"}

        log(f"bundle {b.path} (target {m['target']['sha256'][:12]}...), grid {grid}, radius {radius}, "
            f"run {run_dir}, {threads.describe_threads(n_threads)}, scheme {cfg.scheme}, encoder passes in "
            f"{cfg.target_precision}")
        fit_reserve = plan["seconds"].get("fitting", 0.0) if plan else 0.0
        model, state = explainer_training.train(target, grid, radius, size, cfg, run_dir, log, max_minutes=max_minutes,
                                                checkpoint_minutes=args.checkpoint_minutes, max_steps=args.max_steps,
                                                eval_fn=eval_fn, eval_every=args.eval_every, source=source,
                                                device=device, dist=dist, progress=progress,
                                                fit_reserve_seconds=fit_reserve,
                                                chunk=plan["chunk"] if plan else 256,
                                                new_state={"plan": plan} if plan else None,
                                                fill_stop=fill_stop, fit_deadline=fit_deadline)
        if not state["done"] and not args.smoke:
            log("not finished: run the same command again to continue")
    if not dist.leader:
        return
    if not (want_export or args.export_only or args.export_to):
        return
    if images is not None:
        finish_folder_run(b, target, model, state, out_dir, images, grid, radius, device, log, args, time_budget,
                          run_dir, cfg, deadline)
        return
    if not (state["done"] or args.smoke or args.export_only):
        log("not exporting an unfinished run (use --export-only to export the checkpoint anyway)")
        return
    defaults_path = run_dir / "defaults.json"
    if defaults_path.is_file():
        defaults = json.loads(defaults_path.read_text())
    else:
        defaults = {"lambda_pos": 1.0, "lambda_neg": args.lambda_neg, "smooth": args.smooth}
    export(b, model, state, out_dir, defaults, log, emoji_record(state["config"]), {"run": str(run_dir.resolve())})


def replanning(plan: dict, deadline: float, grid: int, cfg: ex.ExplainerConfig, args, images, log):
    """Closes the bank by the speed it is actually filled at, not only the first seconds' probe:
    after each chunk, the report's size and time are replanned from the observed cost of a pass,
    and the bank closes when what is left is what fitting and that report need. Returns
    (fill_stop, fit_deadline) for explainer_training.train; plan["held_out"] follows.
    A chunk (cfg.batch images) is never started when, at the observed speed, it would end past
    that point: a swin_s chunk took 9 minutes of a 12-minute budget on a loaded machine, and
    checking only the clock started a second one."""
    k = min(cfg.centres, grid * grid)
    end = deadline - budget.FIXED_SECONDS
    fit_seconds = plan["seconds"].get("fitting", 0.0)
    reserve = {"report": plan["seconds"].get("report", 0.0)}

    def fill_stop(images_done: int, seconds: float) -> bool:
        return time.time() + next_chunk_seconds(images_done, seconds) > end - reserve["report"] - fit_seconds

    def next_chunk_seconds(images_done: int, seconds: float) -> float:
        """Replans the report from the observed speed; returns the next chunk's expected time."""
        if images_done < cfg.batch:
            return 0.0  # the probe's estimate is all there is before a whole chunk
        per_pass = seconds / (images_done * (2 * k + 1))
        per_report_image = budget.report_passes(grid) * per_pass
        held = budget.report_images(args.time_budget_seconds, per_report_image, args.holdout,
                                    len(images.held_out))
        if held != plan["held_out"]:
            log(f"replanned from the observed speed ({1e3 * per_pass:.0f} ms per pass): report on {held} "
                f"held-out images")
        plan["held_out"] = held
        reserve["report"] = held * per_report_image
        return seconds / images_done * cfg.batch

    return fill_stop, lambda: end - reserve["report"]


def auto_precision(target, size: int, device: str) -> str:
    """bf16 for the encoder's masked passes where the hardware computes it natively (a GPU, a CPU
    with AVX-512 BF16) and this torch runs the encoder under bfloat16 autocast; fp32 otherwise.
    The maps move by Spearman < 0.0005 (docs/own-model.md); --target-precision fp32 opts out."""
    if not (device.startswith("cuda") or "avx512_bf16" in threads.cpu_flags()):
        return "fp32"
    try:
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            target.to(device).embed(torch.zeros(1, 3, size, size, device=device))
        return "bf16"
    except Exception:  # Debian's torch 1.13 has no bf16 autocast for some attention layers (Swin, ViT)
        return "fp32"


def exported_by(out_dir: Path, run_dir: Path) -> bool:
    """Whether the explainer in out_dir (if any) was exported by this run folder."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("provenance", {}).get("explainer", {}).get("run") == str(run_dir.resolve())


def refuse_to_replace(b: bundle.Bundle, out_dir: Path, run_dir: Path, replace: bool) -> None:
    """Refuses, before any work, to export over an explainer that another run made."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    if "explainer" not in manifest or replace or exported_by(out_dir, run_dir):
        return
    made = manifest.get("provenance", {}).get("explainer", {})
    what = f"trained for {made['steps_done']} steps" if "steps_done" in made else "made elsewhere"
    fail(f"{out_dir} already has an explainer ({what}); this run would replace it: pass --replace-explainer to "
         f"allow that, or --export-to DIR to write a copy of the bundle (--no-export keeps only the checkpoint)")


def images_report_names(run_dir: Path) -> List[Path]:
    return sorted((run_dir / "report-occlusion").glob("*.pt"))


def plan_run(target, grid: int, radius: int, size: int, overrides: dict, source, device: str,
             images: folder.ImageFolder, args, spent: float, log) -> dict:
    """Measures this machine's costs (one batched encoder call, one fitting step, the encoder's
    memory per image) and plans the bank, the fitting steps and the report within the budget."""
    cfg = ex.ExplainerConfig(**{**overrides, "bank_images": overrides.get("bank_images") or 1})
    t0 = time.time()
    x = source.batch(0).to(device)
    masks = occlusion.window_masks(grid, radius, size, size).to(device)
    model = ex.build(target, grid, radius, size, cfg).to(device)
    bank = explainer_training.TargetBank(Path(os.devnull), 1, cfg.batch, cfg.centres, 0, torch.float32)
    step = explainer_training.fit_step_timer(model, target, x, cfg)
    k = min(cfg.centres, grid * grid)
    costs = budget.measure_costs(target.to(device), x, masks, cfg.batch, k, bank.bytes_per_image(model, x), step,
                                 lambda: source.batch(1), precision=cfg.target_precision)
    max_memory = args.max_memory_bytes
    available = budget.available_memory()
    if available is not None and budget.rss_bytes() + available < max_memory:
        log(f"--max-memory {args.max_memory}: this machine has {budget.GIB and (budget.rss_bytes() + available) / budget.GIB:.1f} "
            f"GiB for this process; planning with that")
        max_memory = budget.rss_bytes() + available
    plan = budget.plan_budget(args.time_budget_seconds, spent + time.time() - t0, costs, grid, cfg.centres,
                              cfg.batch, cfg.calib_images, args.holdout, len(images.held_out), max_memory)
    log(f"time budget {args.time_budget}: measured {1e3 * costs.seconds_per_pass:.1f} ms per encoder pass, "
        f"{1e3 * costs.seconds_per_fit_step:.0f} ms per fitting step, {costs.pass_bytes_per_image / 2**20:.0f} MiB "
        f"per image in an encoder call; {costs.resident_bytes / budget.GIB:.1f} GiB resident")
    log(plan.describe())
    for warning in plan.warnings:
        log(f"warning: {warning}")
    if plan.bank_images < cfg.batch or plan.steps < 1:
        fail(f"--time-budget {args.time_budget} leaves no time to train after loading and measuring; "
             + (plan.warnings[-1] if plan.warnings else "give a larger budget"))
    record = plan.record()
    record["costs"] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in vars(costs).items()}
    return record


def finish_folder_run(b, target, model, state, out_dir: Path, images: folder.ImageFolder, grid: int, radius: int,
                      device: str, log, args, time_budget: Optional[float], run_dir: Path, cfg: ex.ExplainerConfig,
                      deadline: Optional[float]) -> None:
    """The end of a run on a folder: the fidelity report on the held-out images next to trivial
    baselines, the explainer exported with the best transfer-rule setting, the deletion AUC against
    gradcam by tve eval. target: the eager encoder the run trained against (frozen, so the
    report's occlusion uses it). The report's occlusion is cached per image in the run folder, so
    a stopped report continues and a finished one is not computed again."""
    if not (state["done"] or args.smoke or args.export_only or time_budget is not None):
        log("not exporting an unfinished run (run the same command again to continue, or --export-only)")
        return
    paths, held = images.held_out_images()
    planned = (state.get("plan") or {}).get("held_out")
    if planned == 0 and paths:
        log("fidelity report: skipped (the time budget leaves no time for exact occlusion of two held-out "
            "images; the plan said which budget would)")
        paths, held = [], held[:0]
    elif planned is not None and planned < len(paths):
        log(f"fidelity report: planned on {planned} of the {len(paths)} held-out images; more while the budget "
            f"lasts")
    report, defaults = None, {"lambda_pos": 1.0, "lambda_neg": args.lambda_neg, "smooth": args.smooth}
    if len(paths) >= 2:
        model = model.to(device)
        training_map = None
        if cfg.scheme == "bank":
            training_map = explainer_training.open_bank(run_dir, cfg).training_mean_map(target.head, grid * grid)
        # Under a budget, the report measures held-out images while one more, and tve eval's curves
        # for all of them (about (4 G + 8) / 2 G^2 of an image's occlusion each), end before the
        # export's reserve; the plan's count is a forecast, not a cap.
        per_planned = (state.get("plan") or {}).get("seconds", {}).get("report", 0.0) / max(1, planned or 1)
        curves_share = (4 * grid + 8) / (2 * grid * grid)

        def stop(done: int, seconds: float) -> bool:
            if runs.stop_requested():
                return True
            if deadline is None:
                return False
            per_image = seconds / done if done else per_planned
            return time.time() + per_image * (1 + curves_share * (done + 1)) > deadline - budget.FIXED_SECONDS

        report = fidelity.held_out_report(model, target.to(device), held.to(device), grid, radius, log,
                                          names=[str(p.relative_to(images.root)) for p in paths],
                                          cache=run_dir / "report-occlusion", stop=stop, training_map=training_map,
                                          precision=cfg.target_precision,
                                          chunk=min(196, (state.get("plan") or {}).get("chunk", 196)))
        runs.raise_if_stop_requested()
        if report["n"] < 2:
            log("fidelity report: skipped (the time budget ended before two held-out images were measured)")
            report = None
        else:
            if report["n"] < len(paths):
                log(f"fidelity report: on {report['n']} of {len(paths)} held-out images (the time budget ended)")
            defaults = choose_defaults(report)
    else:
        log(f"fidelity report: skipped ({len(paths)} held-out images decode; --holdout N with a larger folder)")
    record = {**images.describe(), "bad_files": len(images.bad),
              "bad_examples": [f"{p}: {why}" for p, why in list(images.bad.items())[:5]]}
    extra = {"device": device, "stopped_early": not state["done"], "run": str(run_dir.resolve()),
             "encoder_passes": state.get("encoder_passes"), "peak_memory_bytes": budget.peak_rss_bytes()}
    if state.get("plan"):
        extra["plan"] = state["plan"]
    setting = f"lneg{defaults['lambda_neg']:g}_{'smooth' if defaults['smooth'] else 'raw'}"
    if report is not None:
        gain = fidelity.gain_over_baselines(report, setting)
        extra["fidelity"] = {"held_out_images": report["n"], "reference": "exact windowed occlusion",
                             **report, **({"gain_over_baselines": gain} if gain else {})}
    export(b, model, state, out_dir, defaults, log, record, extra)
    auc = None
    if report is not None:
        if deadline is None or time.time() < deadline - 5:
            auc = deletion_auc_against_gradcam(args.tve, out_dir, paths[:report["n"]], log)
        if auc is not None:
            manifest = json.loads((out_dir / "manifest.json").read_text())
            manifest["provenance"]["explainer"]["fidelity"]["tve_eval"] = auc
            files.write_json(out_dir / "manifest.json", manifest)
        files.write_json(run_dir / "report.json", {"fidelity": report, "defaults": defaults, "tve_eval": auc,
                                                   "held_out_images": report["n"]})
        print_report(report, defaults, auc, report["n"], log)
    if images.bad:
        log(f"{len(images.bad)} files did not decode and were skipped, e.g. "
            + "; ".join(f"{p}: {why}" for p, why in list(images.bad.items())[:3]))
    log(f"peak memory {budget.peak_rss_bytes() / budget.GIB:.2f} GiB; encoder passes {state.get('encoder_passes')}")
    log(f"next: build/tve explain IMAGES --model {out_dir} --out overlays/")


def print_report(report: dict, defaults: dict, auc: Optional[dict], n: int, log) -> None:
    key = f"lneg{defaults['lambda_neg']:g}_{'smooth' if defaults['smooth'] else 'raw'}"
    r = report[key]
    log(f"fidelity on {n} held-out images, against exact windowed occlusion (setting {key}, the exported "
        f"default): median Spearman {r['spearman']:.3f}, Pearson {r['pearson']:.3f}, top-10% IoU "
        f"{r['iou_top10']:.3f}; R^2 psi_pos {report['r2_pos']:.3f}, psi_neg {report['r2_neg']:.3f}")
    base = report.get("baselines", {}).get(key)
    if base:
        log("baselines, median Spearman against the same occlusion maps: "
            + ", ".join(f"{name} {value:.3f}" for name, value in base.items()))
        gain = fidelity.gain_over_baselines(report, key)
        if gain["gain"] <= 0.05:
            log(f"warning: the explainer does not clearly beat the best baseline ({gain['best_baseline']} "
                f"{gain['best_baseline_spearman']:.3f} against {gain['tve']:.3f}): its maps say little beyond "
                f"it; train longer (a larger --time-budget) or on more images")
        else:
            log(f"gain over the best baseline ({gain['best_baseline']}): {gain['gain']:+.3f}")
    if auc:
        log("deletion AUC (median, lower is better): " + ", ".join(
            f"{m} {v['deletion_auc']:.4f}" for m, v in auc.items() if "deletion_auc" in v))


if __name__ == "__main__":
    main()
