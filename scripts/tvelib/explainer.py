"""TVE explainers: masks, the transfer rule, windowed occlusion, fidelity metrics, pre-training.

Conventions (identical to src/attribution.cpp; the spec is docs/design.md, sections 2-4):
    cell k = row * G + col, row 0 at the top of the image;
    pixel row p lies in cell row floor(p*G/H) (columns likewise), i.e. cell i spans the real
    interval [i*H/G, (i+1)*H/G); 112 px over 14 cells: 8 px each;
    S_k = the cells within Chebyshev distance r of k, clipped at the border;
    removed pixels take the value 0 in normalised space (the dataset mean colour);
    smoothing = avg_pool2d(kernel 2r+1, stride 1, padding r, count_include_pad=False).

The explainer g(x) -> (psi_pos, psi_neg), each [B, G*G, D], is trained (encoder frozen) so that
    psi_pos[k] ~ E(x with everything outside S_k removed)   (the region alone)
    psi_neg[k] ~ E(x with S_k removed)                       (the image without it)
and the transfer rule e[k] = lambda_pos * h(psi_pos[k])[c] - lambda_neg * h(psi_neg[k])[c] then
amortises windowed occlusion e_exact[k] = h(E(x_{S_k}))[c] - h(E(x_{-S_k}))[c] for any linear h.

Explainer architecture (TrunkExplainer): the first stages of the target encoder itself, copied
(and, as trained so far, frozen: see _param_groups), up to the deepest point where its feature map has the attribution grid's
resolution (ResNet: the stage at stride H/G; ViT: patch tokens after a few blocks; Swin: the stage
at G x G), then a small convolutional "meta head" of depthwise (2r+1) x (2r+1) mixing blocks with
a global-context term, and a 1x1 projection to 2D channels. For ResNet and Swin a copy of the
encoder's remaining stages on the trunk's features gives E(x), and psi_neg is E(x) plus a learned
per-cell change (see TrunkExplainer). The paper initialises its explainer from the encoder too;
starting from what the encoder already computes is what lets a network within 1.5x the target's
forward cost learn in an hour of one CPU thread.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import archs, data, threads
from .training import atomic_save, resume_checkpoint, save_checkpoint

# ---- masks, transfer rule, windowed occlusion ------------------------------------------------


def pixel_cells(size: int, grid: int) -> torch.Tensor:
    """[size] int64: the grid row (or column) each pixel row (column) belongs to, floor(p*G/size).

    As src/attribution.cpp: cell i spans the pixels p with i*size/G <= p < (i+1)*size/G (real
    boundaries), i.e. [ceil(i*size/G), ceil((i+1)*size/G)); the same as floor boundaries whenever
    G divides the size (112 px over 14 cells: 8 px each).
    """
    return torch.div(torch.arange(size) * grid, size, rounding_mode="floor")


def window_masks(grid: int, radius: int, height: int, width: int) -> torch.Tensor:
    """[N,1,H,W] float32, N = G*G: mask k is 1 on the pixels of S_k (row-major k), 0 elsewhere."""
    rows, cols = pixel_cells(height, grid), pixel_cells(width, grid)  # [H], [W]
    k = torch.arange(grid * grid)
    cell_row, cell_col = k // grid, k % grid  # [N]
    in_rows = (rows.unsqueeze(0) - cell_row.unsqueeze(1)).abs() <= radius  # [N,H]
    in_cols = (cols.unsqueeze(0) - cell_col.unsqueeze(1)).abs() <= radius  # [N,W]
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1).float()


def smooth_maps(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """[...,G,G] -> same shape, (2r+1) average filter with border cells averaged over valid cells."""
    if radius == 0:
        return maps
    shape = maps.shape
    flat = maps.reshape(-1, 1, shape[-2], shape[-1])
    out = F.avg_pool2d(flat, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    return out.reshape(shape)


def rule(pos_logits: torch.Tensor, neg_logits: torch.Tensor, classes: torch.Tensor, grid: int,
         lambda_pos: float, lambda_neg: float, smooth: bool, radius: int) -> torch.Tensor:
    """The TVE transfer rule on per-cell logits [B,N,C] (N = G*G) for classes [B] -> maps [B,G,G].

    The same rule turns exact occlusion logits (h(E(x_{S_k})), h(E(x_{-S_k}))) into e_exact.
    """
    idx = classes.view(-1, 1, 1).expand(-1, pos_logits.shape[1], 1)  # [B,N,1]
    e = lambda_pos * pos_logits.gather(2, idx) - lambda_neg * neg_logits.gather(2, idx)  # [B,N,1]
    maps = e.view(-1, grid, grid)  # row-major: [B,row,col]
    return smooth_maps(maps, radius) if smooth else maps


@torch.no_grad()
def occlusion_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: int,
                         radius: int, chunk: int = 196) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact windowed-occlusion embeddings: x [B,3,H,W] normalised -> (E(x_{S_k}), E(x_{-S_k})),
    each [B,N,D]. 2*N encoder passes per image; the heavy part of evaluation, so it is cached."""
    masks = window_masks(grid, radius, x.shape[2], x.shape[3])  # [N,1,H,W]
    pos, neg = [], []
    for image in x:
        kept, removed = [], []
        for lo in range(0, masks.shape[0], chunk):
            m = masks[lo:lo + chunk]
            kept.append(embed(image.unsqueeze(0) * m))  # baseline 0 outside S_k
            removed.append(embed(image.unsqueeze(0) * (1 - m)))  # baseline 0 inside S_k
        pos.append(torch.cat(kept))
        neg.append(torch.cat(removed))
    return torch.stack(pos), torch.stack(neg)


# ---- metrics -----------------------------------------------------------------------------------


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """[B,N] -> [B,N] float64 ranks 0..N-1, ties given their average rank (as scipy's rankdata)."""
    v = v.double()
    order = v.argsort(dim=1)
    ranks = torch.empty_like(v)
    ranks.scatter_(1, order, torch.arange(v.shape[1], dtype=torch.float64).expand_as(v).contiguous())
    # Average tied ranks (smoothed maps and flat occlusion maps do produce exact ties).
    for b in range(v.shape[0]):
        vals, inverse, counts = torch.unique(v[b], return_inverse=True, return_counts=True)
        if len(vals) < v.shape[1]:
            sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inverse, ranks[b])
            ranks[b] = (sums / counts)[inverse]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of [B,N] x [B,N] -> [B]; 0 where a row is constant."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp(min=1e-300), torch.zeros_like(den))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman rank correlation (Pearson of average ranks) [B,N] x [B,N] -> [B]."""
    return pearson(_ranks(a), _ranks(b))


def topk_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Per-row IoU of the top ceil(fraction*N) cells of a and of b: [B,N] x [B,N] -> [B]."""
    k = max(1, math.ceil(fraction * a.shape[1]))
    ta = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    tb = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
    return (ta & tb).sum(1).double() / (ta | tb).sum(1).double()


def pointing_hits(maps: torch.Tensor, cell_cover: torch.Tensor) -> torch.Tensor:
    """[B,G,G] maps, [B,G,G] fraction of each cell covered by the object -> [B] bool.

    A hit when the map's maximum cell contains object pixels. With 8 px cells this is the usual
    pointing game with a tolerance of under one cell (Zhang et al. use 15 px).
    """
    flat = maps.flatten(1)
    return cell_cover.flatten(1).gather(1, flat.argmax(1, keepdim=True)).squeeze(1) > 0


# ---- target encoders in eager form -------------------------------------------------------------


def eager_target(b) -> nn.Module:
    """Rebuilds the eager torchvision target of a bundle (tvelib.bundle.Bundle) and loads its weights.

    The explainer copies the encoder's first stages, which needs real nn.Modules rather than the
    TorchScript file; the architecture size ('tiny', 'small', 'paper') is whichever config the
    state dict loads into exactly. Raises ValueError when none does.
    """
    arch = b.manifest["architecture"]
    size = b.input_size
    state = b.target.state_dict()
    num_classes = len(b.labels)
    for config in archs.CONFIGS[arch]:
        try:
            model = archs.build_target(arch, config, num_classes, image_size=size)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError):
            continue
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            if not torch.allclose(model.eval().embed(x), b.target.embed(x), atol=1e-4, rtol=1e-4):
                continue
        return model.eval()
    raise ValueError(f"{b.path}: target.pt matches none of the {arch} configs {list(archs.CONFIGS[arch])}")


# ---- explainer architecture ---------------------------------------------------------------------


class VitTrunk(nn.Module):
    """A ViT target's patch embedding and first `depth` blocks -> [B,1+g*g,W] tokens (0: class)."""

    def __init__(self, target: archs.VitTarget, depth: int):
        super().__init__()
        self.conv_proj = target.conv_proj
        self.class_token = target.class_token
        self.pos_embedding = target.pos_embedding
        self.blocks = nn.Sequential(*list(target.early_blocks.children())[:depth])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv_proj(x).flatten(2).transpose(1, 2)  # [B,g*g,W] row-major
        t = torch.cat([self.class_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embedding
        return self.blocks(t)


class TokensToMap(nn.Module):
    """[B,1+g*g,W] tokens -> [B,W,g,g] patch-token map (the class token dropped)."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], self.grid, self.grid)


class VitRest(nn.Module):
    """The ViT blocks after the trunk, the last block and the final norm: tokens -> class token z."""

    def __init__(self, target: archs.VitTarget, depth: int):
        super().__init__()
        self.blocks = nn.Sequential(*list(target.early_blocks.children())[depth:])
        self.last_block = target.last_block
        self.ln = target.ln

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.ln(self.last_block(self.blocks(t)))[:, 0]


class ChannelsLastToFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)  # [B,h,w,C] -> [B,C,h,w]


class PoolFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # [B,C,h,w] -> [B,C], what ResNet's/Swin's avgpool + flatten do


class SwinRest(nn.Module):
    """The Swin stages after the trunk, then the final norm and pooling: [B,C,G,G] -> [B,D]."""

    def __init__(self, stages: List[nn.Module], norm: nn.Module):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.norm = norm

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.stages(f.permute(0, 2, 3, 1)))  # channels-last [B,h,w,D]
        return x.mean(dim=(1, 2))


def encoder_trunk(target: nn.Module, grid: int, image_size: int,
                  vit_depth: int = 1) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """Copies of the target's parts: (trunk, to_map, rest).

    trunk: the first stages, up to the deepest one on the G x G grid (ViT: the patch embedding and
    the first vit_depth blocks); to_map: trunk output -> [B,C,G,G]; rest: the remaining stages,
    trunk output -> z = E(x) [B,D], so that rest(trunk(x)) reproduces the encoder exactly.
    """
    import copy
    target = copy.deepcopy(target)
    to_map: nn.Module = nn.Identity()
    if isinstance(target, archs.VitTarget):
        trunk = VitTrunk(target, vit_depth)
        to_map = TokensToMap(grid)
        rest: nn.Module = VitRest(target, vit_depth)
    else:
        if isinstance(target, archs.ResNetTarget):
            n = target.net
            stages = [n.conv1, n.bn1, n.relu, n.maxpool, n.layer1, n.layer2, n.layer3, n.layer4]
            to_nchw: List[nn.Module] = []
        elif isinstance(target, archs.SwinTarget):
            stages = list(target.net.features.children())
            to_nchw = [ChannelsLastToFirst()]
        else:
            raise TypeError(f"no trunk for {type(target).__name__}")
        x = torch.zeros(1, 3, image_size, image_size)
        keep = -1
        with torch.no_grad():
            for i, stage in enumerate(stages):
                x = stage.eval()(x)
                h = x.shape[1] if to_nchw else x.shape[2]  # swin is channels-last
                if h == grid:
                    keep = i
        if keep < 0:
            raise ValueError(f"no stage of the {type(target).__name__} has a {grid} x {grid} output")
        trunk = nn.Sequential(*stages[:keep + 1], *to_nchw)
        if isinstance(target, archs.ResNetTarget):
            rest = nn.Sequential(*stages[keep + 1:], PoolFlatten())
        else:
            rest = SwinRest(stages[keep + 1:], target.net.norm)
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        f = trunk.eval()(x)
        out = to_map(f)
        if not torch.allclose(rest.eval()(f), target.embed(x), atol=1e-4, rtol=1e-3):
            raise AssertionError("trunk + rest does not reproduce the encoder")  # a wiring bug
    if tuple(out.shape[2:]) != (grid, grid):
        raise ValueError(f"trunk output {tuple(out.shape)} is not on the {grid} x {grid} grid")
    trunk.out_channels = int(out.shape[1])
    return trunk, to_map, rest


class MixBlock(nn.Module):
    """Depthwise (2r+1)^2 spatial mixing, a global-context term, then a pointwise MLP; residual.

    The window S_k spans (2r+1)^2 cells, so each block widens the receptive field by one window;
    the global term carries what psi_neg needs from the rest of the image.
    """

    def __init__(self, width: int, kernel: int, expand: int = 2):
        super().__init__()
        self.spatial = nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=width)
        self.context = nn.Linear(width, width)
        self.norm = nn.GroupNorm(1, width)  # LayerNorm over channels and cells
        self.mlp = nn.Sequential(nn.Conv2d(width, expand * width, 1), nn.GELU(),
                                 nn.Conv2d(expand * width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial(x) + self.context(x.mean(dim=(2, 3))).unsqueeze(-1).unsqueeze(-1)
        return x + self.mlp(self.norm(y))


class TrunkExplainer(nn.Module):
    """g(x) -> (psi_pos, psi_neg), each [B,G*G,D], cell k = row*G + col, row 0 at the top.

    Outputs are standardised: psi = mean + std * raw, with per-dimension mean/std of the targets
    measured once on a calibration batch, so that the regression starts well conditioned.

    With a global branch (`rest`: the encoder's remaining stages on the trunk's features, so
    z_hat ~ E(x)), psi_neg[k] = z_hat + std_neg * raw_neg[k]: removing one window changes the
    embedding only a little, so the head learns just that change, in units of its own spread
    (std_neg is then the spread of E(x_{-S_k}) - E(x), not of E(x_{-S_k})). Without it the head
    would have to reproduce the whole encoder's output at every cell, and the small per-window
    differences that make the map would drown in the per-image variance.
    """

    def __init__(self, trunk: nn.Module, grid: int, embedding_dim: int, width: int, depth: int,
                 kernel: int, rest: Optional[nn.Module] = None, to_map: Optional[nn.Module] = None):
        super().__init__()
        self.trunk = trunk
        self.to_map = to_map if to_map is not None else nn.Identity()
        self.has_global = rest is not None
        self.rest = rest if rest is not None else nn.Identity()
        self.grid = grid
        self.embedding_dim = embedding_dim
        self.inp = nn.Conv2d(trunk.out_channels, width, 1)
        self.blocks = nn.Sequential(*[MixBlock(width, kernel) for _ in range(depth)])
        self.norm = nn.GroupNorm(1, width)
        self.out = nn.Conv2d(width, 2 * embedding_dim, 1)
        nn.init.zeros_(self.out.weight)  # start at the calibration mean
        nn.init.zeros_(self.out.bias)
        self.register_buffer("mean", torch.zeros(2 * embedding_dim))
        self.register_buffer("std", torch.ones(2 * embedding_dim))

    def _local(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk features f, psi_pos, and psi_neg without the global term."""
        f = self.trunk(x)  # [B,C,G,G] (ViT: [B,1+G*G,C] tokens)
        h = self.blocks(self.inp(self.to_map(f)))  # [B,width,G,G]
        raw = self.out(F.gelu(self.norm(h)))  # [B,2D,G,G]
        psi = raw.flatten(2).transpose(1, 2) * self.std + self.mean  # [B,G*G,2D] row-major
        return f, psi[..., : self.embedding_dim], psi[..., self.embedding_dim:]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f, pos, neg = self._local(x)
        if self.has_global:
            neg = neg + self.rest(f).unsqueeze(1)  # [B,1,D] broadcast over cells
        return pos, neg

    @torch.jit.export
    def forward_with_embedding(self, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """As forward(), with the target's own embedding z = E(x) [B,D] in place of the global
        branch's estimate of it. The caller has z from the forward pass that picks the class, so
        the encoder's remaining stages (about a third of the explainer's cost for ResNet) are not
        run twice. psi_pos is unchanged; psi_neg moves by the same vector z - rest(f) at every
        cell, so a map moves by one constant per image and class (docs/bundle-format.md)."""
        f, pos, neg = self._local(x)
        if self.has_global:
            neg = neg + z.unsqueeze(1)
        return pos, neg


@dataclass
class ExplainerConfig:
    """Everything that defines a training run; a checkpoint refuses to resume under another one.

    Defaults: the shipped resnet explainer's run (models/README.md). width/depth were picked under
    the 1.5x-forward cost cap (96 x 2: 1.39x the small ResNet's FLOPs); logit_weight 1 and the
    global branch by short trials (150 steps) on the quick held-out set.
    """
    steps: int = 1100
    batch: int = 16  # images per step
    centres: int = 8  # centres k per image per step (each costs 2 encoder passes)
    lr: float = 1e-3
    trunk_lr_scale: float = 0.3  # the copied encoder stages move slower than the new head
    weight_decay: float = 0.01
    warmup: float = 0.03
    clip: float = 1.0
    width: int = 96
    depth: int = 2
    vit_depth: int = 1
    global_branch: bool = True  # psi_neg = copied encoder's E(x) + learned change
    logit_weight: float = 1.0  # weight of the loss on the target head's logits (0 = embedding only)
    seed: int = 0
    data_seed: int = data.TRAIN_SEED
    scene_version: int = 1  # tvelib.data.SCENE_VERSION the target was trained on (scene_version_of)
    pretrain_classes: int = data.BASE_PRETRAIN_CLASSES  # EmojiScenes classes of the target (pretrain_classes_of)
    calib_images: int = 32


def scene_version_of(manifest: dict) -> int:
    """The EmojiScenes generator version a bundle's encoder saw (its provenance; 1 when absent).

    The explainer trains and is evaluated on the same scene distribution as its encoder.
    """
    return int(_pretrain_data(manifest).get("scene_version", 1))


def pretrain_classes_of(manifest: dict) -> int:
    """How many EmojiScenes classes a bundle's encoder was pre-trained on (the first bundles' 200
    when absent): the explainer trains and is evaluated on the scenes of those classes."""
    return int(_pretrain_data(manifest).get("num_classes", data.BASE_PRETRAIN_CLASSES))


def _pretrain_data(manifest: dict) -> dict:
    """The manifest's record of the data its encoder was pre-trained on ({} when absent)."""
    return manifest.get("provenance", {}).get("pretrain", {}).get("data", {})


def use_scene_version(version: int) -> None:
    """Selects the scene generator version for this process (tvelib.data reads it per batch)."""
    data.SCENE_VERSION = version


def build(target: nn.Module, grid: int, radius: int, image_size: int, cfg: ExplainerConfig) -> TrunkExplainer:
    torch.manual_seed(cfg.seed)
    trunk, to_map, rest = encoder_trunk(target, grid, image_size, cfg.vit_depth)
    dim = archs.embedding_dim(target)
    return TrunkExplainer(trunk, grid, dim, cfg.width, cfg.depth, 2 * radius + 1,
                          rest if cfg.global_branch else None, to_map)


def freeze_norm_stats(model: nn.Module) -> None:
    """BatchNorm in the copied trunk keeps the encoder's running statistics (eval mode)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


# ---- cost -------------------------------------------------------------------------------------


def count_flops(model: Callable[[torch.Tensor], object], modules: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds x 2 of conv, linear and attention layers in one call model(x), by hooks.

    Counts what dominates (matrix products); norms, activations and pooling are left out.
    """
    total = [0]

    def conv(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += 2 * out.numel() * k

    def linear(m: nn.Linear, inp, out):
        total[0] += 2 * (out.numel() // m.out_features) * m.in_features * m.out_features

    def mha(m: nn.MultiheadAttention, inp, out):
        # The output has the query's shape ([B,L,E] with batch_first); torchvision passes the
        # inputs as keywords, which forward hooks do not see. Projections plus QK^T and AV:
        q = out[0]
        bsz, n, e = (q.shape[0], q.shape[1], q.shape[2]) if m.batch_first else (q.shape[1], q.shape[0], q.shape[2])
        total[0] += bsz * (2 * n * e * 3 * e + 2 * n * e * e + 4 * n * n * e)

    handles = []
    for m in modules.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear) and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_hook(mha))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def time_call(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of fn() after one warm-up call."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


# ---- training -----------------------------------------------------------------------------------


def lr_at(cfg: ExplainerConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 5% of the peak, a pure function of the step."""
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"centres|{seed}|{step}".encode()).digest()[:8], "little") >> 1


def draw_centres(seed: int, step: int, batch: int, cells: int, centres: int) -> torch.Tensor:
    """[B,K] distinct random centres per image, a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(_step_seed(seed, step))
    return torch.stack([torch.randperm(cells, generator=g)[:centres] for _ in range(batch)])


@torch.no_grad()
def masked_targets(encoder: nn.Module, x: torch.Tensor, masks: torch.Tensor, centres: torch.Tensor,
                   chunk: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Frozen-encoder targets: x [B,3,H,W], masks [N,1,H,W], centres [B,K] -> (z_pos, z_neg) [B,K,D].

    All 2*B*K masked images go through the encoder in large batches: this is the expensive part.
    """
    b, k = centres.shape
    m = masks[centres.flatten()].view(b, k, 1, *masks.shape[2:])  # [B,K,1,H,W]
    xs = x.unsqueeze(1)  # [B,1,3,H,W]
    inputs = torch.cat([(xs * m).flatten(0, 1), (xs * (1 - m)).flatten(0, 1)])  # [2BK,3,H,W]
    z = torch.cat([encoder.embed(inputs[i:i + chunk]) for i in range(0, len(inputs), chunk)])
    return z[: b * k].view(b, k, -1), z[b * k:].view(b, k, -1)


def calibrate(model: TrunkExplainer, encoder: nn.Module, masks: torch.Tensor, cfg: ExplainerConfig,
              image_size: int) -> None:
    """Sets the explainer's output mean/std from a fixed calibration batch (its own data seed)."""
    s = data.make_scenes("emoji", "train", cfg.data_seed + 7919, 0, cfg.calib_images, size=image_size)
    x = data.normalise(s.images)
    c = draw_centres(cfg.seed + 7919, 0, len(x), masks.shape[0], min(8, masks.shape[0]))
    zp, zn = masked_targets(encoder, x, masks, c)  # [B,K,D] each
    if model.has_global:
        with torch.no_grad():
            zn = zn - encoder.embed(x).unsqueeze(1)  # the change that removing S_k makes
    d = zp.shape[-1]
    zp, zn = zp.reshape(-1, d), zn.reshape(-1, d)
    # The global branch starts exact, so the learned change starts at zero mean.
    model.mean.copy_(torch.cat([zp.mean(0), torch.zeros(d) if model.has_global else zn.mean(0)]))
    model.std.copy_(torch.cat([zp.std(0), zn.std(0)]).clamp(min=1e-3))


def _param_groups(model: TrunkExplainer, cfg: ExplainerConfig) -> List[dict]:
    # The copied encoder stages (trunk and global branch) were meant to move slower than the new
    # head (trunk_lr_scale). But train() freezes the target before build() copies it, and the
    # copies keep requires_grad=False, so they do not move at all: every explainer trained so far
    # (the shipped resnet one included) holds exact copies of its encoder's stages, which is why
    # forward_with_embedding gives the same maps as forward for it. Kept as trained, to keep the
    # runs reproducible; sharing those stages with the target is the next speed lever
    # (docs/performance.md).
    trunk = list(model.trunk.parameters()) + list(model.rest.parameters())
    trunk_ids = {id(p) for p in trunk}
    rest = [p for p in model.parameters() if id(p) not in trunk_ids]
    decay = [p for p in rest if p.ndim > 1]
    no_decay = [p for p in rest if p.ndim <= 1]
    return [{"params": trunk, "weight_decay": cfg.weight_decay, "scale": cfg.trunk_lr_scale},
            {"params": decay, "weight_decay": cfg.weight_decay, "scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "scale": 1.0}]


def losses(model: TrunkExplainer, encoder: nn.Module, x: torch.Tensor, masks: torch.Tensor,
           centres: torch.Tensor, logit_weight: float) -> Tuple[torch.Tensor, Dict[str, float], Dict[str, float]]:
    """One training objective evaluation. Returns (loss, parts, seconds spent per phase)."""
    t0 = time.perf_counter()
    z_pos, z_neg = masked_targets(encoder, x, masks, centres)  # [B,K,D] each
    t1 = time.perf_counter()
    psi_pos, psi_neg = model(x)  # [B,N,D] each
    idx = centres.unsqueeze(-1).expand(-1, -1, psi_pos.shape[-1])  # [B,K,D]
    p_pos, p_neg = psi_pos.gather(1, idx), psi_neg.gather(1, idx)
    d = model.embedding_dim
    # MSE in units of each dimension's spread: dimensions with tiny variance count as much as
    # those with large variance, as a downstream linear head may weigh any of them.
    l_pos = ((p_pos - z_pos) / model.std[:d]).pow(2).mean()
    l_neg = ((p_neg - z_neg) / model.std[d:]).pow(2).mean()
    loss = l_pos + l_neg
    parts = {"pos": float(l_pos), "neg": float(l_neg)}
    if logit_weight > 0:
        # The target head's logits on psi vs on the true embeddings, scaled by the logits' spread.
        w = encoder.head(torch.eye(d)) - encoder.head(torch.zeros(1, d))  # [D,C] = W^T
        w = w.detach()
        scale = (z_pos @ w).std().detach().clamp(min=1e-6) ** 2
        l_log = (((p_pos - z_pos) @ w).pow(2).mean() + ((p_neg - z_neg) @ w).pow(2).mean()) / scale
        loss = loss + logit_weight * l_log
        parts["logit"] = float(l_log)
    return loss, parts, {"targets": t1 - t0}


def train(target: nn.Module, grid: int, radius: int, image_size: int, cfg: ExplainerConfig, run_dir: Path,
          log: Callable[[str], None], *, max_minutes: float = 85.0, checkpoint_minutes: float = 3.0,
          max_steps: Optional[int] = None, eval_fn: Optional[Callable[[TrunkExplainer, int], dict]] = None,
          eval_every: int = 0) -> Tuple[TrunkExplainer, dict]:
    """Trains (or resumes) an explainer against the frozen target encoder on the 'emoji' stream.

    Stops at cfg.steps, at max_steps (a smoke run), or after max_minutes (a stage); state["done"]
    says whether cfg.steps was reached. A checkpoint (model, optimiser, step) is written every
    checkpoint_minutes and at every stop, atomically, so a killed run continues from the last one.
    """
    torch.manual_seed(cfg.seed)
    use_scene_version(cfg.scene_version)
    data.use_pretrain_classes(cfg.pretrain_classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "explainer.ckpt"
    target = target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    masks = window_masks(grid, radius, image_size, image_size)  # [N,1,H,W]
    model = build(target, grid, radius, image_size, cfg)
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    state = resume_checkpoint(ckpt_path, model, opt, asdict(cfg), "delete it (or use another --run) to start over")
    if state is not None:
        log(f"resumed at step {state['step']}/{cfg.steps} ({state['seconds'] / 60:.1f} min so far)")
    else:
        state = {"step": 0, "seconds": 0.0, "target_seconds": 0.0, "images": 0, "config": asdict(cfg),
                 "history": [], "evals": []}
        calibrate(model, target, masks, cfg, image_size)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"start: {n_params / 1e6:.3f}M params ({sum(p.numel() for p in model.trunk.parameters()) / 1e6:.3f}M "
            f"in the copied trunk), {asdict(cfg)}")
    threads.record_threads(state)
    log(f"this stage runs on {threads.describe_threads(torch.get_num_threads())}")

    def save() -> None:
        save_checkpoint(ckpt_path, model, opt, state)

    stage_start = last_ckpt = time.time()
    seg = {"t": time.time(), "n": 0, "pos": 0.0, "neg": 0.0, "logit": 0.0, "targets": 0.0}
    start_step = state["step"]
    stream = data.train_batches("emoji", cfg.batch, start=state["step"], seed=cfg.data_seed)
    model.train()
    freeze_norm_stats(model)
    stop_reason = None
    while state["step"] < cfg.steps:
        t0 = time.time()
        step = state["step"]
        scenes = next(stream)
        x = data.normalise(scenes.images)  # [B,3,H,W] f32 normalised RGB
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        centres = draw_centres(cfg.seed, step, len(x), masks.shape[0], min(cfg.centres, masks.shape[0]))
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step) * group["scale"]
        loss, parts, phases = losses(model, target, x, masks, centres, cfg.logit_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        state["step"] += 1
        state["images"] += len(x)
        dt = time.time() - t0
        state["seconds"] += dt
        state["target_seconds"] += phases["targets"]
        seg["n"] += 1
        seg["targets"] += phases["targets"]
        for k, v in parts.items():
            seg[k] += v
        if state["step"] % 25 == 0 or state["step"] == cfg.steps:
            el = time.time() - seg["t"]
            msg = (f"step {state['step']}/{cfg.steps} loss pos {seg['pos'] / seg['n']:.4f} "
                   f"neg {seg['neg'] / seg['n']:.4f}")
            if cfg.logit_weight > 0:
                msg += f" logit {seg['logit'] / seg['n']:.4f}"
            msg += (f" lr {lr_at(cfg, state['step'] - 1):.2e} {seg['n'] * cfg.batch / el:.1f} img/s "
                    f"({seg['n'] * cfg.batch * cfg.centres / el:.0f} centres/s, "
                    f"{100 * seg['targets'] / el:.0f}% of time in encoder targets)")
            log(msg)
            state["history"].append({"step": state["step"], "pos": seg["pos"] / seg["n"],
                                     "neg": seg["neg"] / seg["n"], "img_per_s": seg["n"] * cfg.batch / el})
            seg = {"t": time.time(), "n": 0, "pos": 0.0, "neg": 0.0, "logit": 0.0, "targets": 0.0}
        if eval_fn is not None and eval_every and state["step"] % eval_every == 0:
            model.eval()
            result = eval_fn(model, state["step"])
            state["evals"].append({"step": state["step"], **result})
            log(f"step {state['step']} eval {json.dumps(result)}")
            model.train()
            freeze_norm_stats(model)
        if time.time() - last_ckpt > checkpoint_minutes * 60:
            save()
            last_ckpt = time.time()
        if max_steps is not None and state["step"] - start_step >= max_steps:
            stop_reason = f"max_steps {max_steps} reached"
            break
        if (time.time() - stage_start) / 60 > max_minutes:
            stop_reason = f"stage time limit ({max_minutes} min) reached"
            break
    state["done"] = state["step"] >= cfg.steps
    save()
    log(f"stopped at step {state['step']}/{cfg.steps}: {stop_reason or 'all steps done'}")
    return model.eval(), state


def load_checkpoint(target: nn.Module, grid: int, radius: int, image_size: int,
                    ckpt_path: Path) -> Tuple[TrunkExplainer, dict]:
    ck = torch.load(ckpt_path)
    cfg = ExplainerConfig(**ck["state"]["config"])
    model = build(target, grid, radius, image_size, cfg)
    model.load_state_dict(ck["model"])
    return model.eval(), ck["state"]


# ---- fidelity evaluation ----------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("TVE_CACHE", Path.home() / ".cache" / "tve"))


def occlusion_cache(b, task: str, n: int, seed: int = data.HELDOUT_SEED,
                    log: Callable[[str], None] = print) -> Dict[str, torch.Tensor]:
    """Exact windowed-occlusion embeddings of the fixed held-out set (task, 'test', seed, n).

    Keyed by the target's SHA-256, task, seed, n, grid and radius; stored under
    $TVE_CACHE/occlusion/ (default ~/.cache/tve). Returns {"pos","neg": [n,N,D], "clean": [n,D],
    "cover": [n,G,G] object coverage per cell, "images": [n,3,H,W] normalised}.
    """
    m = b.manifest
    grid, radius, size = m["grid"], m["radius"], b.input_size
    version = scene_version_of(m)
    use_scene_version(version)
    data.use_pretrain_classes(pretrain_classes_of(m))  # the target's SHA-256 in the key fixes it
    key = f"{m['target']['sha256'][:16]}-{task}-s{seed}-n{n}-g{grid}-r{radius}"
    if version != 1:
        key += f"-v{version}"
    path = cache_dir() / "occlusion" / f"{key}.pt"
    if path.is_file():
        return torch.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out: Dict[str, List[torch.Tensor]] = {"pos": [], "neg": [], "clean": [], "cover": [], "images": []}
    t = time.time()
    # data.fixed_set's default batching, so that the first n images are the same set the encoder
    # and probe metrics (tvelib.training) are measured on.
    for s in data.fixed_set(task, "test", n, seed=seed):
        x_all = b.normalise(s.images)  # [b,3,112,112] f32 normalised RGB
        masks_all = s.masks  # [b,112,112] bool
        if x_all.shape[-1] != size:
            x_all = F.interpolate(x_all, size=(size, size), mode="bilinear", align_corners=False)
            masks_all = F.interpolate(masks_all.float().unsqueeze(1), size=(size, size),
                                      mode="nearest").squeeze(1) > 0.5
        for lo in range(0, len(x_all), 25):
            x, masks = x_all[lo:lo + 25], masks_all[lo:lo + 25]
            pos, neg = occlusion_embeddings(b.target.embed, x, grid, radius)
            out["pos"].append(pos)
            out["neg"].append(neg)
            with torch.no_grad():
                out["clean"].append(b.target.embed(x))
            out["cover"].append(data.grid_mask(masks, grid))
            out["images"].append(x)
            log(f"occlusion {task}: {sum(len(p) for p in out['pos'])}/{n} images, {time.time() - t:.0f} s")
    result = {k: torch.cat(v) for k, v in out.items()}
    atomic_save(result, path)
    return result


SETTINGS = [(0.0, False), (0.0, True), (1.0, False), (1.0, True)]  # (lambda_neg, smooth)


@torch.no_grad()
def fidelity(explainer: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]], head: Callable,
             occ: Dict[str, torch.Tensor], grid: int, radius: int, batch: int = 50) -> Dict[str, dict]:
    """TVE against exact windowed occlusion on one cached held-out set, for each (lambda_neg, smooth).

    The class explained is the head's top-1 on the clean image. Per setting: medians over images of
    Spearman / Pearson / top-10% IoU between TVE's map and occlusion's map under the same rule
    (both smoothed or both raw), Spearman against the raw occlusion map, and the pointing game of
    TVE and of occlusion.
    """
    n = occ["pos"].shape[0]
    classes = head(occ["clean"]).argmax(1)  # [n]
    psi_pos, psi_neg = [], []
    for i in range(0, n, batch):
        p, q = explainer(occ["images"][i:i + batch])
        psi_pos.append(p)
        psi_neg.append(q)
    psi_pos, psi_neg = torch.cat(psi_pos), torch.cat(psi_neg)  # [n,N,D]
    cells = grid * grid

    def logits(z: torch.Tensor) -> torch.Tensor:  # [n,N,D] -> [n,N,C]
        return head(z.reshape(n * cells, -1)).view(n, cells, -1)

    tve_pos, tve_neg = logits(psi_pos), logits(psi_neg)
    occ_pos, occ_neg = logits(occ["pos"]), logits(occ["neg"])
    results = {}
    for lambda_neg, smooth in SETTINGS:
        t = rule(tve_pos, tve_neg, classes, grid, 1.0, lambda_neg, smooth, radius)
        o = rule(occ_pos, occ_neg, classes, grid, 1.0, lambda_neg, smooth, radius)
        o_raw = rule(occ_pos, occ_neg, classes, grid, 1.0, lambda_neg, False, radius)
        tf, of = t.flatten(1), o.flatten(1)
        results[f"lneg{lambda_neg:g}_{'smooth' if smooth else 'raw'}"] = {
            "spearman": float(spearman(tf, of).median()),
            "pearson": float(pearson(tf, of).median()),
            "iou_top10": float(topk_iou(tf, of).median()),
            "spearman_vs_raw_occlusion": float(spearman(tf, o_raw.flatten(1)).median()),
            "pointing_tve": float(pointing_hits(t, occ["cover"]).double().mean()),
            "pointing_occlusion": float(pointing_hits(o, occ["cover"]).double().mean()),
        }
    # Embedding-space fit, independent of any head: R^2 of psi against the exact embeddings.
    for name, p, z in (("pos", psi_pos, occ["pos"]), ("neg", psi_neg, occ["neg"])):
        var = (z - z.mean((0, 1))).pow(2).sum()
        results[f"r2_{name}"] = float(1 - (p - z).pow(2).sum() / var)
    results["n"] = n
    return results
