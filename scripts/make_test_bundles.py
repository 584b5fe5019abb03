#!/usr/bin/python3
"""Builds the tiny test bundles (random weights, fixed seed) and the broken bundle parts the C++
tests use to check that each malformed bundle gets its own error.

    /usr/bin/python3 scripts/make_test_bundles.py [--out models] [--parts tests/fixtures/bundle_parts]

Every bundle is under 1 MB. Same seed, same weights (tests/python/test_make_test_bundles.py checks
it); the TorchScript files are byte-identical across runs from the same checkout folder with the
same torch version (TorchScript records the scripted code's source paths).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tvelib  # noqa: E402
from tvelib import archs, bundle  # noqa: E402

IMAGE_SIZE = 32
GRID = 4
RADIUS = 1
NUM_CLASSES = 10
LABELS = [f"class-{i}" for i in range(NUM_CLASSES)]
PARITY_LABELS = ["even", "odd"]


def make_bundle(arch: str, out_root: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    target = archs.build_target(arch, "tiny", NUM_CLASSES, image_size=IMAGE_SIZE).eval()
    dim = archs.embedding_dim(target)
    # torchvision zero-initialises ViT heads; random heads give tests predictions that differ
    # from image to image.
    with torch.no_grad():
        for module in target.modules():
            if isinstance(module, nn.Linear) and module.out_features == NUM_CLASSES:
                module.weight.normal_(0.0, 1.0)
                module.bias.normal_(0.0, 0.1)
    explainer = archs.build_explainer(IMAGE_SIZE, GRID, dim, num_layers=1, hidden_dim=16, num_heads=2).eval()
    parity = nn.Linear(dim, len(PARITY_LABELS)).eval()
    return bundle.write_bundle(
        out_root / f"tiny-{arch}", name=f"tiny-{arch}", architecture=arch, target=target, labels=LABELS,
        task="random (test bundle)", input_size=IMAGE_SIZE, grid=GRID, radius=RADIUS, embedding_dim=dim,
        explainer=explainer, heads={"parity": {"module": parity, "labels": PARITY_LABELS}},
        description=f"Tiny {arch} with random weights, for tests only (seed {seed})",
        provenance={"script": "scripts/make_test_bundles.py", "seed": seed, "weights": "random"},
    )


class NonLinearHead(nn.Module):
    """Maps [B,D] to [B,C] but is not affine: TVE's transfer rule must refuse it."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(z)) ** 2


class EmbedOnly(nn.Module):
    """A target with no head() method."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


class PosChangingExplainer(nn.Module):
    """An explainer whose forward_with_embedding changes psi_pos, which only psi_neg may do."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x)

    @torch.jit.export
    def forward_with_embedding(self, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pos, neg = self.inner(x)
        return pos + 1.0, neg


class WithoutEmbedFeatures(nn.Module):
    """A target of the format before embed_features(): gradient methods on features() can then
    explain its own head (through classify) but no other."""

    def __init__(self, inner: archs.VitTarget):
        super().__init__()
        self.inner = inner

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.features(x)

    @torch.jit.export
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.inner.classify(features)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(x)

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def make_parts(parts: Path, seed: int) -> None:
    """Broken pieces for the bundle validation tests, all built for tiny-vit's D and input size."""
    torch.manual_seed(seed)
    dim = archs.CONFIGS["vit"]["tiny"]["hidden_dim"]
    bundle.save_script(nn.Linear(dim + 1, 2), parts / "head_wrong_dim.pt")
    bundle.save_script(NonLinearHead(dim, 2), parts / "head_nonlinear.pt")
    bundle.save_script(EmbedOnly(dim), parts / "target_without_head.pt")
    bundle.save_script(archs.build_explainer(IMAGE_SIZE, GRID, dim + 3, num_layers=1, hidden_dim=16),
                       parts / "explainer_wrong_dim.pt")
    bundle.save_script(archs.build_explainer(IMAGE_SIZE, GRID * 2, dim, num_layers=1, hidden_dim=16),
                       parts / "explainer_wrong_grid.pt")
    bundle.save_script(PosChangingExplainer(archs.build_explainer(IMAGE_SIZE, GRID, dim, num_layers=1, hidden_dim=16)),
                       parts / "explainer_embedding_changes_pos.pt")
    vit = archs.build_target("vit", "tiny", NUM_CLASSES, image_size=IMAGE_SIZE)
    bundle.save_script(WithoutEmbedFeatures(vit), parts / "target_without_embed_features.pt")
    (parts / "not_torchscript.pt").write_bytes(b"this is not a TorchScript archive\n")


class BrightnessEncoder(nn.Module):
    """z = mean brightness of each grid cell, row-major: [B,3,H,W] -> [B,G*G]. Linear in x."""

    def __init__(self, grid: int, classes: int):
        super().__init__()
        self.grid = grid
        # Class 0 sums all cells (a bright patch anywhere raises it); the others are random.
        weight = torch.randn(classes, grid * grid) * 0.1
        weight[0] = 1.0
        self.classifier = nn.Linear(grid * grid, classes)
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.zero_()

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        cells = nn.functional.adaptive_avg_pool2d(x.mean(dim=1, keepdim=True), self.grid)  # [B,1,G,G]
        return cells.flatten(1)  # row-major: cell k = row * G + col

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class OracleExplainer(nn.Module):
    """The exact meta-attributions of BrightnessEncoder: psi_pos[k] = E(x with only S_k kept),
    psi_neg[k] = E(x with S_k removed). Because E is linear and removal sets pixels to 0, both are
    z masked by the window; TVE with this explainer must equal windowed occlusion exactly."""

    def __init__(self, grid: int, radius: int):
        super().__init__()
        rows = torch.arange(grid).repeat_interleave(grid)
        cols = torch.arange(grid).repeat(grid)
        near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
        self.register_buffer("window", near.float())  # [N,N]: window[k, j] = 1 if cell j is in S_k
        self.encoder = BrightnessEncoder(grid, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder.embed(x).unsqueeze(1)  # [B,1,N]
        return z * self.window, z * (1.0 - self.window)  # each [B,N,N] = [B, cells, D]


def make_oracle_bundle(out_root: Path) -> dict:
    """A bundle whose explanations are known exactly: for tests of orientation and of TVE against
    windowed occlusion."""
    torch.manual_seed(0)
    grid, radius = 8, 1
    target = BrightnessEncoder(grid, 3).eval()
    return bundle.write_bundle(
        out_root, name="oracle", architecture="oracle", target=target, labels=["bright", "noise-1", "noise-2"],
        task="brightness (test bundle)", input_size=32, grid=grid, radius=radius, embedding_dim=grid * grid,
        explainer=OracleExplainer(grid, radius), explainer_defaults={"smooth": False},
        description="Hand-built: cell brightness encoder and its exact explainer, for tests only",
        provenance={"script": "scripts/make_test_bundles.py", "weights": "constructed"},
        mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5],
    )


def main() -> None:
    tvelib.reexec_with_fixed_hash_seed()
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=here / "models")
    parser.add_argument("--parts", type=Path, default=here / "tests" / "fixtures" / "bundle_parts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for i, arch in enumerate(archs.FAMILIES):  # vit, resnet, swin: each bundle's seed follows the order
        manifest = make_bundle(arch, args.out, args.seed + i)
        size = sum(p.stat().st_size for p in (args.out / f"tiny-{arch}").rglob("*") if p.is_file())
        print(f"{manifest['name']}: {size / 1e3:.0f} kB")
    make_parts(args.parts, args.seed)
    make_oracle_bundle(args.parts.parent / "bundles" / "oracle")


if __name__ == "__main__":
    main()
