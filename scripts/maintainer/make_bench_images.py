"""Distinct JPEGs for benchmarks, made from the sample photos: random crops, flips and sizes
(160 to 320 px), fixed seed, 1,000 per sub-folder.

    /usr/bin/python3 scripts/maintainer/make_bench_images.py COUNT OUT_DIR
"""
import random
import sys
from pathlib import Path

from PIL import Image, ImageOps


def main(count: int, out: Path) -> None:
    samples = Path(__file__).resolve().parents[2] / "data" / "samples"
    photos = [Image.open(p).convert("RGB") for p in sorted(samples.glob("*.jpg"))]
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = photos[i % len(photos)]
        w, h = image.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        side = rng.randint(160, 320)
        crop.thumbnail((side, side))
        (out / f"{i // 1000}").mkdir(exist_ok=True)
        crop.save(out / f"{i // 1000}" / f"{i:05d}.jpg", quality=90)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
