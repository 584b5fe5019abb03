"""The C++ TVE and windowed-occlusion maps equal independent Python computations of docs/design.md,
sections 2-4, on the same bundle and image, for the tiny test bundles and the shipped models with
their trained explainers.
Tolerance: 1e-4 absolute on maps of magnitude ~1-10 (float32 rounding in a different order of
operations), relative to the map's largest magnitude when that exceeds 1.

Needs the built binary: ctest sets TVE; run alone, `TVE=build/tve pytest tests/python`.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tvelib import bundle

ROOT = Path(__file__).resolve().parents[2]
TVE = os.environ.get("TVE")


def python_tve(b: bundle.Bundle, rgb01: np.ndarray, head: str, lambda_pos: float, lambda_neg: float,
               smooth: bool) -> np.ndarray:
    """Top-1 TVE map of a [H,W,3] image already at the input size: [G,G]."""
    x = b.normalise(torch.from_numpy(rgb01).permute(2, 0, 1).unsqueeze(0).float())
    head_fn = b.target.head if head == "target" else b.heads[head]
    with torch.no_grad():
        c = int(head_fn(b.target.embed(x)).argmax(1))
        pos, neg = b.explainer(x)  # [1,N,D] each
        e = lambda_pos * head_fn(pos[0])[:, c] - lambda_neg * head_fn(neg[0])[:, c]  # [N]
        grid = b.manifest["grid"]
        m = e.reshape(1, 1, grid, grid)
        if smooth:
            r = b.manifest["radius"]
            m = F.avg_pool2d(m, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    return m[0, 0].numpy()


def input_image(folder: Path, size: int, seed: int):
    """A random blocky RGB image at the model's input size, so that no resampling is involved,
    saved as 8-bit PNG (lossless): ([size,size,3] uint8, its path)."""
    rng = np.random.default_rng(seed)
    rgb8 = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    path = folder / "input.png"
    Image.fromarray(rgb8).save(path)
    return rgb8, path


# The downstream head each bundle is checked with besides its target head.
OTHER_HEAD = {"tiny-vit": "parity", "tiny-resnet": "parity", "tiny-swin": "parity",
              "resnet": "fashion", "vit": "fashion", "swin": "mnist"}


@pytest.mark.skipif(not TVE, reason="set TVE to the built tve binary (ctest does)")
@pytest.mark.parametrize("model", list(OTHER_HEAD))
@pytest.mark.parametrize("head,smooth,lambda_neg", [("target", True, 1.0), ("other", False, 0.0)])
def test_cpp_tve_matches_python(tmp_path, model, head, smooth, lambda_neg):
    b = bundle.Bundle(ROOT / "models" / model)
    head = OTHER_HEAD[model] if head == "other" else head
    rgb8, image_path = input_image(tmp_path, b.input_size, seed=7)
    args = [TVE, "explain", str(image_path), "--model", model, "--head", head, "--format", "npy",
            "--out", str(tmp_path / "out"), "--lambda-neg", str(lambda_neg), "--threads", "1",
            "--smooth" if smooth else "--no-smooth"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.splitlines()[0])
    cpp = np.load(record["outputs"]["npy"])[0]
    expected = python_tve(b, rgb8.astype(np.float64) / 255.0, head, 1.0, lambda_neg, smooth)
    assert cpp.shape == expected.shape
    np.testing.assert_allclose(cpp, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())), rtol=0)


def python_occlusion(b: bundle.Bundle, rgb01: np.ndarray, head: str, lambda_pos: float, lambda_neg: float) -> np.ndarray:
    """Top-1 windowed-occlusion map (docs/design.md, section 3) of a [H,W,3] image at the input size:
    [G,G]. Masks built here from the definitions, not from tvelib: pixel row p in cell row p*G//H,
    S_k the cells within Chebyshev distance r of k, removed pixels 0 in normalised space."""
    x = b.normalise(torch.from_numpy(rgb01).permute(2, 0, 1).unsqueeze(0).float())
    head_fn = b.target.head if head == "target" else b.heads[head]
    grid, radius = b.manifest["grid"], b.manifest["radius"]
    height, width = x.shape[2], x.shape[3]
    rows, cols = (np.arange(height) * grid) // height, (np.arange(width) * grid) // width
    masks = np.stack([(np.abs(rows - k // grid) <= radius)[:, None] & (np.abs(cols - k % grid) <= radius)[None, :]
                      for k in range(grid * grid)])  # [N,H,W] bool, row-major k
    m = torch.from_numpy(masks).float().unsqueeze(1)  # [N,1,H,W]
    with torch.no_grad():
        c = int(head_fn(b.target.embed(x)).argmax(1))
        kept = torch.cat([head_fn(b.target.embed(x * part))[:, c] for part in m.split(64)])
        removed = torch.cat([head_fn(b.target.embed(x * (1 - part)))[:, c] for part in m.split(64)])
    return (lambda_pos * kept - lambda_neg * removed).reshape(grid, grid).numpy()


@pytest.mark.skipif(not TVE, reason="set TVE to the built tve binary (ctest does)")
@pytest.mark.parametrize("model", ["tiny-vit", "tiny-resnet", "tiny-swin", "resnet", "swin"])
def test_cpp_occlusion_matches_python(tmp_path, model):
    """With the bundle's own lambdas (swin's lambda_neg is 0), as `tve explain --method occlusion` uses them."""
    b = bundle.Bundle(ROOT / "models" / model)
    head = OTHER_HEAD[model]
    rgb8, image_path = input_image(tmp_path, b.input_size, seed=11)
    args = [TVE, "explain", str(image_path), "--model", model, "--head", head, "--method", "occlusion",
            "--format", "npy", "--out", str(tmp_path / "out"), "--threads", "1"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.splitlines()[0])
    explainer = b.manifest["explainer"]
    assert record["parameters"] == {"radius": b.manifest["radius"], "lambda_pos": explainer["lambda_pos"],
                                    "lambda_neg": explainer["lambda_neg"]}
    cpp = np.load(record["outputs"]["npy"])[0]
    expected = python_occlusion(b, rgb8.astype(np.float64) / 255.0, head, explainer["lambda_pos"], explainer["lambda_neg"])
    assert cpp.shape == expected.shape
    np.testing.assert_allclose(cpp, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())), rtol=0)
