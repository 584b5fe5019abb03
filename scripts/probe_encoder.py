#!/usr/bin/python3
"""Linear-probe diagnostics for an encoder: how generic are its features?

Fits nn.Linear(D, C) probes on frozen embed(x) for downstream tasks, on smaller fixed sets than the
build uses, optionally on a randomly initialised encoder (the floor) or on downstream scenes without
distractors (how much clutter costs).

    /usr/bin/python3 scripts/probe_encoder.py --bundle models/resnet
    /usr/bin/python3 scripts/probe_encoder.py --random resnet
    /usr/bin/python3 scripts/probe_encoder.py --bundle models/resnet --max-distractors 0
"""
import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import bundle, data, threads, training  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="a bundle folder (its target.pt is probed)")
    src.add_argument("--random", choices=["vit", "resnet", "swin"], help="a random 'small' encoder, seed 0")
    ap.add_argument("--tasks", nargs="+", default=["mnist", "fashion"], choices=data.TASKS)
    ap.add_argument("--train-n", type=int, default=2000)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--max-distractors", type=int, default=2)
    args = ap.parse_args()
    threads.use_threads(1)  # LibTorch and OpenBLAS alike
    if args.max_distractors != 2:
        # fixed_set draws through make_scenes; the same seeds give the same scenes minus clutter
        data.make_scenes = functools.partial(data.make_scenes, max_distractors=args.max_distractors)
    model = (bundle.Bundle(args.bundle).target if args.bundle
             else training.build_encoder(args.random, data.num_classes("emoji"), seed=0).eval())
    for task in args.tasks:
        z, y = training.embed_set(model, task, "train", args.train_n)  # [N,D]
        zt, yt = training.embed_set(model, task, "test", args.test_n)
        head, info = training.fit_linear_probe(z, y, data.num_classes(task))
        print(f"{task}: held-out top-1 {training.probe_top1(head, zt, yt):.4f} "
              f"(train {training.probe_top1(head, z, y):.4f}, l2 {info['l2']}, "
              f"n {args.train_n}/{args.test_n}, max distractors {args.max_distractors})", flush=True)


if __name__ == "__main__":
    main()
