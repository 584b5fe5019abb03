#!/usr/bin/python3
"""Copies the real photographs in data/samples from Debian's python3-skimage (see data/SOURCES.md).

    /usr/bin/python3 scripts/make_samples.py

Scenes of the downstream tasks are added by the data scripts (scripts/tvelib/data.py).
"""
from pathlib import Path

try:
    from skimage import data
except ImportError as error:  # pragma: no cover - depends on the machine
    raise SystemExit("python3-skimage is missing: apt-get install python3-skimage") from error
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "data" / "samples"
PHOTOS = {"chelsea.jpg": data.chelsea, "coffee.jpg": data.coffee, "astronaut.jpg": data.astronaut}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        image = Image.fromarray(load())
        image.thumbnail((320, 320))  # small enough to keep in git, large enough to show detail
        image.save(OUT / name, quality=88)
        print(OUT / name, image.size)


if __name__ == "__main__":
    main()
