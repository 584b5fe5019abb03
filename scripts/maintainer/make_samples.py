#!/usr/bin/python3
"""Writes data/samples: real photographs from Debian's python3-skimage, and two held-out scenes
of each task (EmojiScenes and the three downstream tasks), see data/SOURCES.md.

    /usr/bin/python3 scripts/maintainer/make_samples.py
"""
import re
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import data, sources  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "data" / "samples"
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png"]
SCENES_PER_TASK = 2
SCENE_SEED = 7  # not a seed the evaluation sets use


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = Image.open(sources.skimage_data_dir() / name).convert("RGB")
        image.thumbnail((320, 320))  # small enough to keep in git, large enough to show detail
        target = OUT / name.replace(".png", ".jpg")
        image.save(target, quality=88)
        print(target, image.size)
    for task in data.TASKS:
        scenes = data.make_scenes(task, "test", SCENE_SEED, 0, SCENES_PER_TASK)
        names = data.class_names(task)
        for i in range(SCENES_PER_TASK):
            label = re.sub(r"[^A-Za-z0-9]+", "-", names[int(scenes.labels[i])]).strip("-").lower()
            rgb = (scenes.images[i].permute(1, 2, 0) * 255).round().byte().numpy()  # [H,W,3] RGB
            target = OUT / f"{task}-{i}-{label}.png"
            Image.fromarray(rgb).save(target)
            print(target)


if __name__ == "__main__":
    main()
