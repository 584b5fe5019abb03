"""The C++ TVE map equals an independent Python computation of docs/design.md, sections 2-4, on the same
bundle and image, for the tiny test bundles and the shipped models with their trained explainers.
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


# The downstream head each bundle is checked with besides its target head.
OTHER_HEAD = {"tiny-vit": "parity", "tiny-resnet": "parity", "tiny-swin": "parity",
              "resnet": "fashion", "vit": "fashion", "swin": "mnist"}


@pytest.mark.skipif(not TVE, reason="set TVE to the built tve binary (ctest does)")
@pytest.mark.parametrize("model", list(OTHER_HEAD))
@pytest.mark.parametrize("head,smooth,lambda_neg", [("target", True, 1.0), ("other", False, 0.0)])
def test_cpp_tve_matches_python(tmp_path, model, head, smooth, lambda_neg):
    b = bundle.Bundle(ROOT / "models" / model)
    head = OTHER_HEAD[model] if head == "other" else head
    # An image at the model's input size, so that no resampling is involved; 8-bit PNG is lossless.
    size = b.input_size
    rng = np.random.default_rng(7)
    rgb8 = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    image_path = tmp_path / "input.png"
    Image.fromarray(rgb8).save(image_path)
    args = [TVE, "explain", str(image_path), "--model", model, "--head", head, "--format", "npy",
            "--out", str(tmp_path / "out"), "--lambda-neg", str(lambda_neg), "--threads", "1",
            "--smooth" if smooth else "--no-smooth"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.splitlines()[0])
    cpp = np.load(record["outputs"]["npy"])[0]
    expected = python_tve(b, rgb8.astype(np.float64) / 255.0, head, 1.0, lambda_neg, smooth)
    assert cpp.shape == expected.shape
    np.testing.assert_allclose(cpp, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())), rtol=0)
