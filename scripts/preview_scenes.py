#!/usr/bin/python3
"""Saves a PNG grid of generated scenes (top) and their masks (bottom) to eyeball the data.

    /usr/bin/python3 scripts/preview_scenes.py --task emoji --out /tmp/emoji.png
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", default="emoji", choices=data.TASKS)
    ap.add_argument("--split", default="train", choices=["train", "test"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
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
