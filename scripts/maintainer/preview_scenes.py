#!/usr/bin/python3
"""Saves a PNG grid of generated scenes (top) and their masks (bottom) to eyeball the data.

    /usr/bin/python3 scripts/maintainer/preview_scenes.py --task emoji --out /tmp/emoji.png
    /usr/bin/python3 scripts/maintainer/preview_scenes.py --task mnist --contrast 1000   # how many objects barely show

--contrast N measures, on the first N scenes of the task's fixed held-out set, how much the object
differs from its 4-pixel surround in mean luminance (data.luminance_contrast).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", default="emoji", choices=data.TASKS)
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="the PNG grid")
    ap.add_argument("--contrast", type=int, metavar="N", help="print object/surround contrast statistics instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.contrast:
        c = torch.cat([data.luminance_contrast(s) for s in data.fixed_set(args.task, "test", args.contrast)])
        print(f"{args.task}: {len(c)} held-out scenes, median luminance contrast {float(c.median()):.3f}, "
              f"below 0.05: {float((c < 0.05).float().mean()):.3f}, below 0.1: {float((c < 0.1).float().mean()):.3f}")
        return
    if args.out is None:
        ap.error("--out is required (or --contrast N)")
    from PIL import Image
    s = data.make_scenes(args.task, args.split, args.seed, 0, args.n)
    names = data.class_names(args.task)
    masks = s.masks.unsqueeze(1).float().expand(-1, 3, -1, -1)
    # dim the scene outside the mask so mask and object can be compared
    overlay = s.images * (0.25 + 0.75 * masks)
    rows = torch.cat([torch.cat(list(s.images), 2), torch.cat(list(overlay), 2)], 1)  # [3,2H,nW]
    Image.fromarray((rows.permute(1, 2, 0) * 255).round().byte().numpy()).save(args.out)
    print(" | ".join(names[int(label)] for label in s.labels))


if __name__ == "__main__":
    main()
