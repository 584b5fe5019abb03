"""tve's attribution methods (docs/methods.md) computed by the libraries users already trust, on the
eager target of a bundle: Captum (saliency, smoothgrad, ig, occlusion, kernelshap) and
pytorch-grad-cam (gradcam, gradcam++); RISE, which neither has, from its definition here with its
own masks. Each function returns the G x G map of one class, row 0 at the top, as float64, in the
units the library gives (pytorch-grad-cam's are min-max normalised).

Needs the reference venv (scripts/reference_env.py: Captum and grad-cam over Debian's torch); the
parity tests (tests/python/test_methods_match_references.py) and scripts/maintainer/bench_methods.py use it.
Also here: driving the real `tve explain` binary for one image and reading its map.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from captum.attr import IntegratedGradients, KernelShap, NoiseTunnel, Occlusion, Saliency
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from . import archs, trunks
from .bundle import Bundle

# ---- grid cells --------------------------------------------------------------------------------


def pixel_cells(size: int, grid: int) -> np.ndarray:
    """[size]: the grid row (column) of each pixel row (column), floor(p * G / size)."""
    return (np.arange(size) * grid) // size


def cell_sum(a: np.ndarray, grid: int) -> np.ndarray:
    """[H,W] per-pixel values -> [G,G], summed over each cell's pixels."""
    rows, cols = pixel_cells(a.shape[0], grid), pixel_cells(a.shape[1], grid)
    out = np.zeros((grid, grid))
    np.add.at(out, (rows[:, None], cols[None, :]), np.asarray(a, dtype=np.float64))
    return out


def cell_mean(a: np.ndarray, grid: int) -> np.ndarray:
    """[H,W] per-pixel values -> [G,G], averaged over each cell's pixels."""
    return cell_sum(a, grid) / cell_sum(np.ones(a.shape), grid)


def cell_ids(height: int, width: int, grid: int) -> torch.Tensor:
    """[H,W] int64: the cell k = row * G + col of each pixel (Captum's feature_mask)."""
    rows, cols = pixel_cells(height, grid), pixel_cells(width, grid)
    return torch.from_numpy(rows[:, None] * grid + cols[None, :]).long()


# ---- the model as the references see it --------------------------------------------------------


class Explained(nn.Module):
    """x -> the logits of one head, through the target's features():
    head(embed_features(features(x))). `features_out` is an identity on features(x), the layer
    pytorch-grad-cam hooks: exactly the tensor tve's gradcam differentiates with respect to."""

    def __init__(self, target: nn.Module, head: Optional[Callable] = None):
        super().__init__()
        self.target = target
        self.features_out = nn.Identity()
        self.head_fn = target.head if head is None else head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features_out(self.target.features(x))
        return self.head_fn(self.target.embed_features(f))


def reference_model(b: Bundle, head: str = "target", target: Optional[nn.Module] = None) -> Explained:
    """The bundle's eager target (tvelib.trunks.eager_target: torchvision modules with the bundle's
    weights, checked against target.pt; or `target`, made so before) with head `head`: target or
    one of the bundle's heads. Parameters keep requires_grad, as a user's model has it:
    pytorch-grad-cam's backward() then also computes their gradients, part of what it costs."""
    target = trunks.eager_target(b) if target is None else target
    return Explained(target, None if head == "target" else b.heads[head]).eval()


def tokens_to_map(grid_h: int, grid_w: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's reshape_transform for a `tokens` features layout: [B,1+N,D] -> [B,D,h,w],
    the class token dropped, the patch tokens row-major on their h x w grid."""
    def transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], grid_h, grid_w)
    return transform


def features_layout(b: Bundle) -> str:
    return b.manifest.get("features_layout") or archs.family(b.manifest["architecture"]).features_layout


def reshape_transform(b: Bundle, model: Explained, x: torch.Tensor):
    """None for a `map` layout; for `tokens`, tokens_to_map on the patch grid (sqrt N, square)."""
    if features_layout(b) != "tokens":
        return None
    with torch.no_grad():
        n = model.target.features(x).shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patch tokens are not a square grid")
    return tokens_to_map(side, side)


# ---- the references, one G x G map each ---------------------------------------------------------


def saliency(model: nn.Module, x: torch.Tensor, c: int, grid: int) -> np.ndarray:
    """Captum Saliency (|gradient|), max over channels, summed over each cell."""
    a = Saliency(model).attribute(x, target=c, abs=True)
    return cell_sum(a[0].max(0).values.detach().numpy(), grid)


def smoothgrad(model: nn.Module, x: torch.Tensor, c: int, grid: int, n: int, seed: int = 0,
               batch: int = 25) -> np.ndarray:
    """Captum NoiseTunnel(Saliency), smoothgrad, sigma = 0.15 (max x - min x); as saliency after."""
    torch.manual_seed(seed)
    sigma = float(0.15 * (x.max() - x.min()))
    a = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=batch,
                                               stdevs=sigma, target=c, abs=True)
    return cell_sum(a[0].max(0).values.detach().numpy(), grid)


def integrated_gradients(model: nn.Module, x: torch.Tensor, c: int, grid: int, m: int) -> np.ndarray:
    """Captum IntegratedGradients from the zero baseline, m-point Gauss-Legendre; summed over channels
    and over each cell."""
    a = IntegratedGradients(model).attribute(x, baselines=0.0, target=c, n_steps=m, method="gausslegendre",
                                             internal_batch_size=m)
    return cell_sum(a[0].sum(0).detach().numpy(), grid)


def occlusion(model: nn.Module, x: torch.Tensor, c: int, grid: int, batch: int = 64) -> np.ndarray:
    """Captum Occlusion with one-cell windows (the input size a multiple of G): per pixel
    y_c(x) - y_c(x without its cell), averaged over each cell."""
    height, width = x.shape[2:]
    if height % grid or width % grid:
        raise ValueError(f"Occlusion's windows need an input size divisible by G = {grid}")
    ch, cw = height // grid, width // grid
    with torch.no_grad():
        a = Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], ch, cw), strides=(x.shape[1], ch, cw),
                                       baselines=0.0, target=c, perturbations_per_eval=batch)
    return cell_mean(a[0, 0].numpy(), grid)


def gradcam(b: Bundle, model: Explained, x: torch.Tensor, c: int, plusplus: bool = False) -> np.ndarray:
    """pytorch-grad-cam GradCAM (GradCAMPlusPlus) on features(): its H x W map (ReLU, min-max
    normalised, cv2 bilinear resize, normalised again), averaged over each cell."""
    cls = GradCAMPlusPlus if plusplus else GradCAM
    cam = cls(model=model, target_layers=[model.features_out], reshape_transform=reshape_transform(b, model, x))
    try:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])  # [1,H,W] float32
    finally:
        cam.activations_and_grads.release()
    return cell_mean(out[0], b.manifest["grid"])


def kernel_shap(model: nn.Module, x: torch.Tensor, c: int, grid: int, n: int, seed: int = 0,
                batch: int = 64) -> np.ndarray:
    """Captum KernelShap over the G x G cells, removed cells at 0, n coalitions."""
    torch.manual_seed(seed)
    mask = cell_ids(x.shape[2], x.shape[3], grid).expand(1, x.shape[1], -1, -1)
    with torch.no_grad():
        a = KernelShap(model).attribute(x, target=c, baselines=0.0, feature_mask=mask, n_samples=n,
                                        perturbations_per_eval=batch)
    return cell_mean(a[0, 0].numpy(), grid)


def rise_masks(n: int, grid: int, height: int, width: int, generator: torch.Generator,
               cells: Optional[int] = None) -> torch.Tensor:
    """[n,1,H,W] RISE masks (Petsiuk et al. 2018; docs/methods.md): a binary s x s grid, each cell
    kept with probability 1/2 (s = ceil(G/2)), upsampled bilinearly (half-pixel centres) to
    (s+1) ceil(H/s) x (s+1) ceil(W/s) and cropped to H x W at a random offset within one coarse cell."""
    s = cells or math.ceil(grid / 2)
    cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
    binary = (torch.rand(n, 1, s, s, generator=generator) < 0.5).float()
    up = F.interpolate(binary, size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell_h, (n,), generator=generator)
    dx = torch.randint(0, cell_w, (n,), generator=generator)
    return torch.stack([up[i, :, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(n)])


def rise(model: nn.Module, x: torch.Tensor, c: int, grid: int, n: int, seed: int = 0,
         batch: int = 100) -> np.ndarray:
    """RISE from its definition: S(p) = sum_i P_c(x * M_i) M_i(p) / (n / 2), P_c the head's
    softmax probability; averaged over each cell. Masks drawn here (torch's generator), not tve's."""
    generator = torch.Generator().manual_seed(seed)
    height, width = x.shape[2:]
    total = torch.zeros(height, width, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n, batch):
            m = rise_masks(min(batch, n - start), grid, height, width, generator)
            p = torch.softmax(model(x * m), dim=1)[:, c]
            total += (p[:, None, None] * m[:, 0]).sum(0).double()
    return cell_mean((total / (n / 2)).numpy(), grid)


# ---- images and the tve binary ----------------------------------------------------------------


def input_image(source: Path, size: int, dest: Path) -> Path:
    """`source` resized (stretched, PIL bilinear) to size x size RGB and saved as PNG at `dest`: an
    image tve reads at the model's input size, so neither side resamples."""
    Image.open(source).convert("RGB").resize((size, size), Image.BILINEAR).save(dest)
    return dest


def blocky_image(size: int, seed: int, dest: Path, block: int = 8) -> Path:
    """A random image of block x block squares, size x size, saved as PNG."""
    rng = np.random.default_rng(seed)
    n = -(-size // block)
    rgb8 = (rng.random((n, n, 3)) * 255).astype(np.uint8).repeat(block, 0).repeat(block, 1)[:size, :size]
    Image.fromarray(rgb8).save(dest)
    return dest


# tve turns 8-bit pixels into [0,1] with OpenCV's convertTo(CV_32F, 1.0 / 255.0) (src/image.cpp,
# to_unit_float), which rounds the scale to float32 and multiplies: p * float32(1/255), one float32
# rounding. Dividing by 255 instead rounds differently for 126 of the 256 values (by one unit in the
# last place, up to 6e-8), so the references would explain a slightly different input.
U8_TO_UNIT = np.float32(1.0 / 255.0)


def unit_float(rgb8: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0,1], bit for bit as tve converts them."""
    if rgb8.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {rgb8.dtype}")
    return rgb8.astype(np.float32) * U8_TO_UNIT


def load_input(b: Bundle, path: Path) -> torch.Tensor:
    """A PNG at the input size -> [1,3,H,W] normalised, bit for bit as tve preprocesses it
    (unit_float, then bundle.normalise's float32 (x - mean) / std, as src/image.cpp computes it)."""
    rgb = unit_float(np.asarray(Image.open(path).convert("RGB")))
    if rgb.shape[:2] != (b.input_size, b.input_size):
        raise ValueError(f"{path}: {rgb.shape[:2]} is not the input size {b.input_size}")
    return b.normalise(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0))


def run_tve(tve: str, image: Path, model: str, method: str, head: str = "target", cls: Optional[int] = None,
            threads: int = 1, options: Sequence[str] = ()) -> dict:
    """`tve explain IMAGE --format none` with the method's options; its JSON record."""
    args = [tve, "explain", str(image), "--model", model, "--method", method, "--head", head,
            "--threads", str(threads), "--format", "none", "--quiet", *options]
    if cls is not None:
        args += ["-c", str(cls)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
    return json.loads(out.stdout.splitlines()[0])


def record_map(record: dict) -> np.ndarray:
    """The map of the first class explained, [G,G] float64."""
    return np.asarray(record["explained"][0]["values"], dtype=np.float64)


# ---- agreement ----------------------------------------------------------------------------------


def affine_fit(ours: np.ndarray, ref: np.ndarray):
    """Least squares ref ~ a * ours + b: (a, b, largest residual relative to ref's range)."""
    A = np.stack([ours.ravel(), np.ones(ours.size)], 1)
    (a, b), *_ = np.linalg.lstsq(A, ref.ravel(), rcond=None)
    residual = np.abs(A @ np.array([a, b]) - ref.ravel()).max()
    return float(a), float(b), float(residual / max(np.ptp(ref), 1e-30))


def pearson(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.corrcoef(u.ravel(), v.ravel())[0, 1])


def spearman(u: np.ndarray, v: np.ndarray) -> float:
    rank = lambda a: np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable").astype(np.float64)
    return pearson(rank(u), rank(v))
