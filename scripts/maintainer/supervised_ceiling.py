#!/usr/bin/python3
"""Supervised ceiling of a downstream task: a small encoder trained from scratch on the task's own
scenes, scored on the same fixed held-out set as the build's linear probe.

A linear probe on a frozen EmojiScenes encoder can only approach what the same architecture reaches
when it is trained on the task itself, with the same scene generator (position, scale, rotation,
recolouring, clutter). This script measures that reference: if it is far below a probe target, the
scenes, not the encoder's generality, are what limits the probe.

    /usr/bin/python3 scripts/maintainer/supervised_ceiling.py --task mnist
    /usr/bin/python3 scripts/maintainer/supervised_ceiling.py --task fashion --steps 3000 --arch resnet

Training uses the task's training stream (data.TRAIN_SEED, split 'train'): disjoint from the probes'
fixed training set (held-out seed) and from their test set (split 'test').
"""
import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import archs, data, runs, threads, training  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=[t for t in data.TASKS if t != "emoji"])
    ap.add_argument("--arch", default="resnet", choices=list(archs.FAMILIES))
    ap.add_argument("--steps", type=int, default=2000, help="batches of 64 scenes")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--test-n", type=int, default=2000, help="the build's probe test set has 2000")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.steps < 1 or args.test_n < 1:
        ap.error("--steps and --test-n must be positive")
    threads.configure_script(args.threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads

    # The shipped ResNet's recipe (PretrainConfig defaults), on the task's labels instead of emoji.
    cfg = training.PretrainConfig(steps=args.steps, lr=args.lr)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="tve-ceiling-") as run_dir:  # its checkpoints: not kept
        model, _ = training.pretrain(args.arch, cfg, Path(run_dir), runs.Logger(None),
                                     max_minutes=math.inf, eval_every=0, task=args.task)
    top1 = training.evaluate(model, args.task, "test", args.test_n)
    print(f"{args.task}: supervised {args.arch} from scratch, {cfg.steps} steps of {cfg.batch}: "
          f"held-out top-1 {top1:.4f} (n {args.test_n}, {(time.time() - start) / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
