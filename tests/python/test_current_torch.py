"""Bundles exported by current PyTorch (2.x, from PyPI) load and compute the same in tve, which is
built on Debian's LibTorch 1.13 (docs/own-model.md, "Current PyTorch").

Runs under the current-torch venv (`scripts/torch_env.py exec -m pytest`, ctest python.current_torch)
with TVE set to the tve binary. Each family is exported here by torch 2.x through the same code
make_bundle.py uses (tvelib.archs.wrap_network; ViTs with portable attention), then `tve predict`
classifies a real image file and its probabilities are compared with torch 2.x's own on the same
pixels; `tve models --check` loads every file; Debian's python (torch 1.13, where the explainer is
trained) rebuilds the eager model from the manifest.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tvelib import archs, bundle, folder

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "tests" / "fixtures" / "images" / "rgb8.png"  # 32 x 32 RGB: no resize at input 32

if int(torch.__version__.split(".")[0]) < 2:
    if os.environ.get("TVE_TORCH_ENV"):
        raise RuntimeError(f"the current-torch venv runs torch {torch.__version__}")
    pytest.skip("needs current PyTorch: run under scripts/torch_env.py exec", allow_module_level=True)


def tve() -> str:
    path = os.environ.get("TVE") or str(REPO / "build" / "tve")
    if not Path(path).is_file():
        pytest.fail(f"no tve binary at {path} (set TVE)")
    return path


def tiny_network(family: str) -> torch.nn.Module:
    """The tiny configuration of each family (tvelib.archs.CONFIGS), as torchvision's own class."""
    from torchvision.models.resnet import BasicBlock
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    cfg = dict(archs.CONFIGS[family]["tiny"])
    if family == "vit":
        net = VisionTransformer(num_classes=5, **cfg)
        torch.nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision starts ViT heads at 0
        return net
    if family == "swin":
        return SwinTransformer(num_classes=5, stochastic_depth_prob=0.0, **cfg)
    return archs._NarrowResNet(BasicBlock, cfg["layers"], 5, cfg["width"])


@pytest.mark.parametrize("family", ["resnet", "vit", "swin"])
def test_current_torch_bundle_runs_in_tve(tmp_path, family):
    net = tiny_network(family).eval()
    target = archs.wrap_network(net).eval()
    out = tmp_path / family
    bundle.write_bundle(out, name=family, architecture=family, target=target, labels=[f"c{i}" for i in range(5)],
                        task="test", input_size=32, grid=4, radius=1, embedding_dim=archs.embedding_dim(target),
                        provenance={"torch": torch.__version__})
    check = subprocess.run([tve(), "models", "--check", "--model", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    done = subprocess.run([tve(), "predict", str(IMAGE), "--model", str(out), "--top-k", "5", "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.splitlines()[0])
    got = torch.tensor([k["probability"] for k in sorted(record["top_k"], key=lambda k: k["index"])])
    spec = folder.InputSpec(32, 32)
    x = folder.normalise(folder.load_rgb01(IMAGE, spec).unsqueeze(0), spec)
    with torch.no_grad():
        want = torch.softmax(net(x), dim=1)[0]
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    # gradient methods use features()/classify(): a Grad-CAM map from the same file
    cam = subprocess.run([tve(), "explain", str(IMAGE), "--model", str(out), "--method", "gradcam",
                          "--out", str(tmp_path / "cam"), "--threads", "1"], capture_output=True, text=True)
    assert cam.returncode == 0, cam.stderr


def test_make_bundle_under_current_torch(tmp_path):
    """make_bundle.py itself under torch 2.x (the user's environment), a torchvision ResNet from a
    .pth; then Debian's python (torch 1.13, where train_explainer.py runs) rebuilds its eager model."""
    import sys
    import torchvision
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    out = tmp_path / "b"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_bundle.py"), "--torchvision", "resnet18",
                           "--weights", str(weights), "--image-size", "64", "--out", str(out), "--tve", tve()],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rebuild = subprocess.run(["/usr/bin/python3", "-c",
                              "import sys; sys.path.insert(0, 'scripts'); import torch; "
                              "from tvelib import bundle, trunks; b = bundle.Bundle(sys.argv[1]); "
                              "t = trunks.eager_target(b); print(torch.__version__, type(t).__name__)", str(out)],
                             capture_output=True, text=True, cwd=REPO)
    assert rebuild.returncode == 0, rebuild.stderr
    assert rebuild.stdout.startswith("1.13") and "ResNetTarget" in rebuild.stdout
