"""Target encoders in eager form, and their parts: the first stages up to the attribution grid (the
explainer's trunk) and the rest (which turns the trunk's output into E(x)).

The explainer copies the encoder's first stages, which needs real nn.Modules rather than the
TorchScript file; distillation (tvelib.training) reads the same grid stage.
"""
from __future__ import annotations

import copy
from typing import List, Tuple

import torch
from torch import nn

from . import archs


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
    source = b.manifest.get("provenance", {}).get("source", {})
    if "torchvision" in source:  # made by scripts/make_bundle.py from a torchvision model
        net = archs.torchvision_network(source["torchvision"], num_classes, source.get("image_size", size))
        return _checked(b, archs.wrap_network(net), state, f"torchvision {source['torchvision']}")
    if "timm" in source:
        from . import timm_archs
        return _checked(b, timm_archs.eager_timm_target(source, num_classes), state, f"timm {source['timm']}")
    if "wrapper" in source:  # made by make_bundle.py --wrapper FILE.py (tvelib.wrapper_route)
        from . import wrapper_route
        return _checked(b, wrapper_route.eager_target(source, num_classes), state, f"the wrapper {source['wrapper']}")
    if arch not in archs.CONFIGS:
        raise ValueError(f"{b.path}: architecture {arch!r} with no record of how the target was made "
                         f"(provenance.source); only the TorchScript file exists")
    for config in archs.CONFIGS[arch]:
        try:
            return _checked(b, archs.build_target(arch, config, num_classes, image_size=size), state, config)
        except ValueError:  # another config: the weights do not load, or compute something else
            continue
    raise ValueError(f"{b.path}: target.pt matches none of the {arch} configs {list(archs.CONFIGS[arch])}")


def _checked(b, model: nn.Module, state: dict, what: str) -> nn.Module:
    """model with the bundle target's weights, checked to compute the same embedding."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{b.path}: target.pt does not load into {what}: {str(e).splitlines()[0]}") from None
    x = torch.randn(2, 3, b.input_size, b.input_size)
    with torch.no_grad():
        if not torch.allclose(model.eval().embed(x), b.target.embed(x), atol=1e-4, rtol=1e-4):
            raise ValueError(f"{b.path}: {what} with target.pt's weights does not reproduce its embeddings")
    return model.eval()


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
    """The channels-last stages after the trunk (Swin's), then the final norm and pooling:
    [B,C,G,G] -> [B,D]."""

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
    target = copy.deepcopy(target)
    to_map: nn.Module = nn.Identity()
    fam = archs.family_of(target)
    if fam.stages is None:  # a token model: the patch embedding and the first blocks
        trunk = VitTrunk(target, vit_depth)
        to_map = TokensToMap(grid)
        rest: nn.Module = VitRest(target, vit_depth)
    else:
        stages = fam.stages(target)
        to_nchw: List[nn.Module] = [ChannelsLastToFirst()] if fam.channels_last else []
        x = torch.zeros(1, 3, image_size, image_size)
        keep = -1
        with torch.no_grad():
            for i, stage in enumerate(stages):
                x = stage.eval()(x)
                h = x.shape[1] if fam.channels_last else x.shape[2]
                if h == grid:
                    keep = i
        if keep < 0:
            raise ValueError(f"no stage of the {fam.name} has a {grid} x {grid} output")
        trunk = nn.Sequential(*stages[:keep + 1], *to_nchw)
        if fam.channels_last:
            rest = SwinRest(stages[keep + 1:], fam.final_norm(target))
        else:
            rest = nn.Sequential(*stages[keep + 1:], fam.embed_tail(target) if fam.embed_tail else PoolFlatten())
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
