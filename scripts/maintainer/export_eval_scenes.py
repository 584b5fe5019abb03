#!/usr/bin/python3
"""Writes a fixed held-out set of scenes as PNG files with their object masks, for `tve eval`;
or, with --split train, a plain folder of training scenes (no masks, no labels needed) to train an
explainer on as a user would (scripts/train_explainer.py --images).

    /usr/bin/python3 scripts/maintainer/export_eval_scenes.py --task emoji --n 40 --out /tmp/eval-emoji
    /usr/bin/python3 scripts/maintainer/export_eval_scenes.py --split train --n 4000 --no-masks --out /tmp/scenes

Each scene is NNNN-<label>.png (8-bit RGB, the models' 112 px) with NNNN-<label>.mask.png beside it
(255 where the main sprite is visible, tvelib.data's ground truth). Same task, split, seed and n, same
files: the sets the models' evaluations use (tvelib.data.fixed_set, held-out seed).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=data.TASKS, default="emoji")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=["test", "train"], default="test",
                        help="test: the held-out set (seed 1000); train: scenes of the training distribution "
                             "(training seed 1, never the held-out seed)")
    parser.add_argument("--masks", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    seed = data.HELDOUT_SEED if args.split == "test" else data.TRAIN_SEED
    args.out.mkdir(parents=True, exist_ok=True)
    names = data.class_names(args.task)
    index = 0
    for scenes in data.fixed_set(args.task, args.split, args.n, seed=seed):
        for image, label, mask in zip(scenes.images, scenes.labels, scenes.masks):
            slug = re.sub(r"[^a-z0-9]+", "-", names[int(label)].lower()).strip("-")
            stem = f"{index:04d}-{slug}"
            rgb = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(rgb).save(args.out / f"{stem}.png")
            if args.masks:
                Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(args.out / f"{stem}.mask.png")
            index += 1
    print(f"{index} {args.task} {args.split} scenes{' with masks' if args.masks else ''} in {args.out}")


if __name__ == "__main__":
    main()
