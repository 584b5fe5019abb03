#!/usr/bin/python3
"""Linear-probe diagnostics for an encoder: how generic are its features?

Fits nn.Linear(D, C) probes on frozen embed(x) for downstream tasks, on smaller fixed sets than the
build uses, optionally on a randomly initialised encoder (the floor) or on downstream scenes without
distractors (how much clutter costs).

    /usr/bin/python3 scripts/maintainer/probe_encoder.py --bundle models/resnet
    /usr/bin/python3 scripts/maintainer/probe_encoder.py --random resnet
    /usr/bin/python3 scripts/maintainer/probe_encoder.py --bundle models/resnet --max-distractors 0
    /usr/bin/python3 scripts/maintainer/probe_encoder.py --bundle models/resnet --features stages

--features stages / stages+max probes a ResNet's pooled layer2, layer3 and layer4 maps together
(average-pooled, or average- and max-pooled) instead of embed(x): whether the information the
downstream tasks need is in earlier stages and lost by the last one.
"""
import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import archs, bundle, data, threads, training  # noqa: E402


class StagePooling(torch.nn.Module):
    """embed(x) = the ResNet's layer2, layer3 and layer4 maps, each pooled over space, concatenated."""

    def __init__(self, target, with_max: bool):
        super().__init__()
        self.net, self.with_max = target.net, with_max

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # Walks the stages itself: the shipped TorchScript targets export no per-stage outputs.
        n = self.net
        f = n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))
        pooled = []
        for stage in (n.layer2, n.layer3, n.layer4):
            f = stage(f)  # [B,C,h,w]
            pooled.append(f.mean((2, 3)))
            if self.with_max:
                pooled.append(f.amax((2, 3)))
        return torch.cat(pooled, 1)  # [B, 448] (or 896 with max)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="a bundle folder (its target.pt is probed)")
    src.add_argument("--random", choices=list(archs.FAMILIES), help="a random 'small' encoder, seed 0")
    ap.add_argument("--tasks", nargs="+", default=["mnist", "fashion"], choices=data.TASKS)
    ap.add_argument("--train-n", type=int, default=2000)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--max-distractors", type=int, default=2)
    ap.add_argument("--features", choices=["embed", "stages", "stages+max"], default="embed",
                    help="what the probe sees (stages: ResNet only)")
    args = ap.parse_args()
    threads.configure_script(1)  # OpenBLAS kernels; LibTorch and OpenBLAS threads
    if args.max_distractors != 2:
        # fixed_set draws through make_scenes; the same seeds give the same scenes minus clutter
        data.make_scenes = functools.partial(data.make_scenes, max_distractors=args.max_distractors)
    model = (bundle.Bundle(args.bundle).target if args.bundle
             else training.build_encoder(args.random, data.num_classes("emoji"), seed=0).eval())
    if args.features != "embed":
        if not hasattr(getattr(model, "net", None), "layer4"):
            ap.error(f"--features {args.features} needs a ResNet encoder")
        model = StagePooling(model, with_max=args.features == "stages+max")
    for task in args.tasks:
        z, y = training.embed_set(model, task, "train", args.train_n)  # [N,D]
        zt, yt = training.embed_set(model, task, "test", args.test_n)
        head, info = training.fit_linear_probe(z, y, data.num_classes(task))
        print(f"{task}: held-out top-1 {training.probe_top1(head, zt, yt):.4f} "
              f"(train {training.probe_top1(head, z, y):.4f}, l2 {info['l2']}, "
              f"n {args.train_n}/{args.test_n}, max distractors {args.max_distractors})", flush=True)


if __name__ == "__main__":
    main()
