"""A folder of the user's own images as training and held-out data for an explainer: no labels,
any sizes and formats PIL reads, preprocessed as the bundle's manifest says (the same resize,
alpha and normalisation as `tve`'s C++ preprocessing, docs/bundle-format.md), bad files skipped
and counted. Batches are a pure function of (seed, step), so a resumed run sees the same images.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFile

from . import bundle

# Extensions tve explain also walks (docs/bundle-format.md "Inputs"); masks (*.mask.png) are not images.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a bad file, not a grey half-image
Image.MAX_IMAGE_PIXELS = 20000 * 20000  # as tve's decoder limit; larger is refused, not read


@dataclass
class InputSpec:
    """The manifest's "input" section."""
    height: int
    width: int
    resize: str = "stretch"
    crop_fraction: float = 0.875
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "InputSpec":
        i = manifest["input"]
        return cls(int(i["height"]), int(i["width"]), i.get("resize", "stretch"),
                   float(i.get("crop_fraction", 0.875)), list(i["mean"]), list(i["std"]))


def list_images(root: Path) -> List[Path]:
    """Image files under root, recursively, sorted by relative path (hidden folders and
    *.mask.png skipped). Raises ValueError naming root when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of images")
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.lower().endswith(".mask.png"):
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_rgb01(path: Path, spec: InputSpec) -> torch.Tensor:
    """One image -> [3,H,W] RGB in [0,1] at the bundle's input size. Raises OSError/ValueError
    (PIL's, with the file named by the caller) for a file that does not decode.

    Alpha is composited over the normalisation mean, as tve does, so transparent pixels are the
    baseline 0 after normalising; 16-bit and grayscale images are scaled to [0,1] RGB.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            rgba = _to_float_rgba(im)
    h, w = rgba.shape[:2]
    if spec.resize == "center_crop":
        aspect = spec.width / spec.height
        crop_w = min(w, h * aspect) * spec.crop_fraction
        crop_h = crop_w / aspect
        left, top = (w - crop_w) / 2, (h - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
    else:
        box = (0, 0, w, h)
    chans = [Image.fromarray(rgba[..., c], mode="F").resize((spec.width, spec.height), Image.BILINEAR, box=box)
             for c in range(4)]
    out = np.stack([np.asarray(c) for c in chans])  # [4,H,W]
    rgb, alpha = out[:3], np.clip(out[3:], 0.0, 1.0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    return torch.from_numpy(np.clip(rgb * alpha + mean * (1 - alpha), 0.0, 1.0).astype(np.float32))


def _to_float_rgba(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> [H,W,4] float32 in [0,1] (16-bit and 32-bit integer modes scaled by their range)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        a = a / (65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0)
        return np.stack([a, a, a, np.ones_like(a)], axis=-1)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.stack([a, a, a, np.ones_like(a)], axis=-1)
    return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0


def normalise(rgb01: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> (x - mean) / std with the spec's constants."""
    return bundle.normalise(rgb01, spec.mean, spec.std)


@dataclass
class ImageFolder:
    """The usable images of a folder, split once into training and held-out files.

    The held-out files are the `holdout` ones with the smallest seeded hash of their relative
    path: a function of the listing alone (not of file order or times). A run is tied to its
    listing (train_explainer.py refuses to resume on another), so the sets never mix. Files that do not decode are found when first read and
    recorded in `bad` (path -> reason); a batch then takes the next good file instead.
    """
    root: Path
    spec: InputSpec
    holdout: int = 20
    seed: int = 0
    files: List[Path] = field(init=False)
    train: List[Path] = field(init=False)
    held_out: List[Path] = field(init=False)
    bad: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.files = list_images(self.root)
        if not self.files:
            raise ValueError(f"{self.root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found, recursively")
        ranked = sorted(self.files, key=self._rank)
        n_hold = min(self.holdout, len(self.files) // 5)  # at most a fifth of a small folder
        self.held_out = sorted(ranked[:n_hold])
        self.train = sorted(ranked[n_hold:])

    def _rank(self, p: Path) -> bytes:
        return hashlib.sha256(f"{self.seed}|{p.relative_to(self.root).as_posix()}".encode()).digest()

    def describe(self) -> dict:
        """What the run trained on, for the checkpoint's config and the manifest's provenance."""
        listing = "\n".join(p.relative_to(self.root).as_posix() for p in self.files)
        return {"folder": str(self.root.resolve()), "files": len(self.files), "train": len(self.train),
                "held_out": len(self.held_out), "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}

    def read(self, path: Path) -> torch.Tensor | None:
        """[3,H,W] in [0,1], or None (and the reason recorded) when the file does not decode."""
        if path in self.bad:
            return None
        try:
            return load_rgb01(path, self.spec)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            self.bad[path] = f"{type(e).__name__}: {e}"
            return None

    def batch(self, seed: int, step: int, size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Training batch `step` for process `rank` of `world`: [size,3,H,W] normalised.

        Epoch e is a seeded permutation of the training files; step s takes the next size*world
        of them and this process its own slice. Bad files are replaced by the following good ones.
        """
        n = len(self.train)
        first = (step * world + rank) * size
        images, i = [], first
        while len(images) < size:
            if i - first > n + size:  # went round the whole folder without enough good files
                raise ValueError(f"{self.root}: fewer than {size} training images decode "
                                 f"({len(self.bad)} bad files, e.g. {next(iter(self.bad), '')})")
            epoch, pos = divmod(i, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            x = self.read(self.train[int(order[pos])])
            if x is not None:
                images.append(x)
            i += 1
        return normalise(torch.stack(images), self.spec)

    def held_out_images(self) -> Tuple[List[Path], torch.Tensor]:
        """The held-out files that decode and their normalised images [n,3,H,W]."""
        paths, images = [], []
        for p in self.held_out:
            x = self.read(p)
            if x is not None:
                paths.append(p)
                images.append(x)
        if not images:
            return [], torch.zeros(0, 3, self.spec.height, self.spec.width)
        return paths, normalise(torch.stack(images), self.spec)
