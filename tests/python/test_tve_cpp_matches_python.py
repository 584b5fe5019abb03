"""The C++ TVE map equals an independent Python computation of DESIGN.md section 2 on the same
bundle and image. Tolerance: 1e-4 absolute on maps of magnitude ~1-10 (float32 rounding in a
different order of operations).

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


@pytest.mark.skipif(not TVE, reason="set TVE to the built tve binary (ctest does)")
@pytest.mark.parametrize("model", ["tiny-vit", "tiny-resnet", "tiny-swin"])
@pytest.mark.parametrize("head,smooth,lambda_neg", [("target", True, 1.0), ("parity", False, 0.0)])
def test_cpp_tve_matches_python(tmp_path, model, head, smooth, lambda_neg):
    image_path = ROOT / "tests/fixtures/images/rgb8.png"  # 32x32: no resampling involved
    args = [TVE, "explain", str(image_path), "--model", model, "--head", head, "--format", "npy",
            "--out", str(tmp_path), "--lambda-neg", str(lambda_neg), "--threads", "1",
            "--smooth" if smooth else "--no-smooth"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.splitlines()[0])
    cpp = np.load(record["outputs"]["npy"])[0]
    b = bundle.Bundle(ROOT / "models" / model)
    rgb01 = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float64) / 255.0
    expected = python_tve(b, rgb01, head, 1.0, lambda_neg, smooth)
    assert cpp.shape == expected.shape
    np.testing.assert_allclose(cpp, expected, atol=1e-4, rtol=0)
