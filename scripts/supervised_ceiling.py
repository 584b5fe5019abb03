#!/usr/bin/python3
"""Supervised ceiling of a downstream task: a small encoder trained from scratch on the task's own
scenes, scored on the same fixed held-out set as the build's linear probe.

A linear probe on a frozen EmojiScenes encoder can only approach what the same architecture reaches
when it is trained on the task itself, with the same scene generator (position, scale, rotation,
recolouring, clutter). This script measures that reference: if it is far below a probe target, the
scenes, not the encoder's generality, are what limits the probe.

    /usr/bin/python3 scripts/supervised_ceiling.py --task mnist
    /usr/bin/python3 scripts/supervised_ceiling.py --task fashion --steps 3000 --arch resnet

Training uses the task's training stream (data.TRAIN_SEED, split 'train'): disjoint from the probes'
fixed training set (held-out seed) and from their test set (split 'test').
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import data, threads, training  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=[t for t in data.TASKS if t != "emoji"])
    ap.add_argument("--arch", default="resnet", choices=["vit", "resnet", "swin"])
    ap.add_argument("--steps", type=int, default=2000, help="batches of 64 scenes")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--test-n", type=int, default=2000, help="the build's probe test set has 2000")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.steps < 1 or args.test_n < 1:
        ap.error("--steps and --test-n must be positive")
    threads.use_threads(args.threads)

    # The shipped ResNet's recipe (PretrainConfig defaults), on the task's labels instead of emoji.
    cfg = training.PretrainConfig(steps=args.steps, lr=args.lr)
    model = training.build_encoder(args.arch, data.num_classes(args.task), cfg.seed)
    opt = torch.optim.AdamW(training._param_groups(model, cfg.weight_decay), lr=cfg.lr)
    start = seg_start = time.time()
    seg_correct = seg_images = 0
    model.train()
    for step, scenes in enumerate(data.train_batches(args.task, cfg.batch)):
        if step >= cfg.steps:
            break
        for group in opt.param_groups:
            group["lr"] = training.lr_at(cfg, step)
        logits = model(data.normalise(scenes.images))
        loss = F.cross_entropy(logits, scenes.labels, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        seg_correct += int((logits.argmax(1) == scenes.labels).sum())
        seg_images += cfg.batch
        if (step + 1) % 100 == 0:
            print(f"{args.task}: step {step + 1}/{cfg.steps} loss {float(loss):.3f} "
                  f"train-top1 {seg_correct / seg_images:.3f} "
                  f"{seg_images / (time.time() - seg_start):.1f} img/s", flush=True)
            seg_start, seg_correct, seg_images = time.time(), 0, 0
    top1 = training.evaluate(model, args.task, "test", args.test_n)
    print(f"{args.task}: supervised {args.arch} from scratch, {cfg.steps} steps of {cfg.batch}: "
          f"held-out top-1 {top1:.4f} (n {args.test_n}, {(time.time() - start) / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
