"""TVE explainer networks: what g(x) -> (psi_pos, psi_neg) is, how it is built on a target, and
what it costs. Its training is tvelib.explainer_training, its evaluation tvelib.fidelity; the
masks and the transfer rule are tvelib.occlusion.

The explainer g(x) -> (psi_pos, psi_neg), each [B, G*G, D], is trained (encoder frozen) so that
    psi_pos[k] ~ E(x with everything outside S_k removed)   (the region alone)
    psi_neg[k] ~ E(x with S_k removed)                       (the image without it)
and the transfer rule e[k] = lambda_pos * h(psi_pos[k])[c] - lambda_neg * h(psi_neg[k])[c] then
amortises windowed occlusion e_exact[k] = h(E(x_{S_k}))[c] - h(E(x_{-S_k}))[c] for any linear h.

Explainer architecture (TrunkExplainer): the first stages of the target encoder itself, copied
(and frozen: see explainer_training.param_groups), up to the deepest point where its feature map
has the attribution grid's resolution (ResNet: the stage at stride H/G; ViT: patch tokens after a few blocks; Swin: the stage
at G x G), then a small convolutional "meta head" of depthwise (2r+1) x (2r+1) mixing blocks with
a global-context term, and a 1x1 projection to 2D channels. For ResNet and Swin a copy of the
encoder's remaining stages on the trunk's features gives E(x), and psi_neg is E(x) plus a learned
per-cell change (see TrunkExplainer). The paper initialises its explainer from the encoder too;
starting from what the encoder already computes is what lets a network within 1.5x the target's
forward cost learn in an hour of one CPU thread.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import archs, data
from .trunks import encoder_trunk


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
        pos, neg = self.from_features(f)
        return f, pos, neg

    def from_features(self, f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The trained part alone: trunk features f -> psi_pos and psi_neg without the global term.
        The trunk is a frozen copy of the encoder's first stages, so training on a bank of stored
        features (explainer_training.TargetBank) fits exactly what forward() computes."""
        h = self.blocks(self.inp(self.to_map(f)))  # [B,width,G,G]
        raw = self.out(F.gelu(self.norm(h)))  # [B,2D,G,G]
        psi = raw.flatten(2).transpose(1, 2) * self.std + self.mean  # [B,G*G,2D] row-major
        return psi[..., : self.embedding_dim], psi[..., self.embedding_dim:]

    @torch.jit.ignore
    def from_features_at(self, f: torch.Tensor, cells: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """from_features(f) at the cells [B,K] only -> psi_pos, psi_neg (local) [B,K,D], equal to
        gathering those cells from it. Training supervises K of the G*G cells, and the output
        projection to 2D channels (D 2048 for a ResNet-50) is most of a fitting step's cost."""
        h = self.blocks(self.inp(self.to_map(f)))  # [B,width,G,G]
        h = F.gelu(self.norm(h)).flatten(2)  # [B,width,G*G], normalised over all cells
        # Gathered channels-first, then transposed: with the transpose first, the gradient reaching
        # GroupNorm is non-contiguous, and Debian's torch 1.13 CPU kernel then returns a wrong one
        # (test_outputs_at_the_drawn_cells_equal_the_full_map compares the gradients too).
        h = h.gather(2, cells.unsqueeze(1).expand(-1, h.shape[1], -1)).transpose(1, 2)  # [B,K,width]
        raw = F.linear(h, self.out.weight.flatten(1), self.out.bias)  # the 1x1 conv at those cells
        psi = raw * self.std + self.mean
        return psi[..., : self.embedding_dim], psi[..., self.embedding_dim:]

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


class EncoderExplainer(TrunkExplainer):
    """A TrunkExplainer with the global branch: its trunk and `rest` are an exact copy of the whole
    encoder, so one pass gives E(x) as well. `tve explain` needs E(x) anyway (the head's scores pick
    the classes to explain); with embed_and_explain it runs the encoder's layers once instead of
    twice (target.embed, then the explainer's own trunk), which is most of the explainer's cost at
    224 px (docs/bundle-format.md, docs/performance.md)."""

    def __init__(self, trunk: nn.Module, grid: int, embedding_dim: int, width: int, depth: int,
                 kernel: int, rest: nn.Module, to_map: Optional[nn.Module] = None):
        super().__init__(trunk, grid, embedding_dim, width, depth, kernel, rest, to_map)

    @torch.jit.export
    def embed_and_explain(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, psi_pos, psi_neg): z = E(x) [B,D] from the copied encoder (equal to the target's
        embed(x): tve checks it when it loads the bundle), and forward_with_embedding(x, z)."""
        f, pos, neg = self._local(x)
        z = self.rest(f)
        return z, pos, neg + z.unsqueeze(1)


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
    weight_decay: float = 0.01
    warmup: float = 0.03
    clip: float = 1.0
    width: int = 96
    depth: int = 2
    vit_depth: int = 1
    global_branch: bool = True  # psi_neg = copied encoder's E(x) + learned change
    logit_weight: float = 1.0  # weight of the loss on the target head's logits (0 = embedding only)
    # How targets are made (explainer_training): "stream" draws fresh images and `centres` masked
    # targets for every step; "bank" computes them once for `bank_images` images (and the frozen
    # trunk's features of each), then fits the trained layers to that bank for `steps` steps.
    scheme: str = "stream"
    bank_images: int = 0
    target_precision: str = "fp32"  # or "bf16": the masked passes under bfloat16 autocast
    seed: int = 0
    data_seed: int = data.TRAIN_SEED
    scene_version: int = 1  # tvelib.data.SCENE_VERSION the target was trained on (scene_version_of)
    pretrain_classes: int = data.BASE_PRETRAIN_CLASSES  # EmojiScenes classes of the target (pretrain_classes_of)
    calib_images: int = 32

    @classmethod
    def from_dict(cls, values: dict) -> "ExplainerConfig":
        """From a checkpoint's or a manifest's record, dropping fields of earlier versions
        (trunk_lr_scale, which never acted: the copied stages are frozen)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


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
    if cfg.global_branch:
        return EncoderExplainer(trunk, grid, dim, cfg.width, cfg.depth, 2 * radius + 1, rest, to_map)
    return TrunkExplainer(trunk, grid, dim, cfg.width, cfg.depth, 2 * radius + 1, None, to_map)


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
