"""The test-bundle script regenerates bundles that load and hold the same weights as the shipped ones.

File hashes are not compared: TorchScript archives record the source file paths of the scripted
code, so the bytes depend on where the checkout lives.
"""
import subprocess
import sys
from pathlib import Path

import torch

from tvelib import bundle

ROOT = Path(__file__).resolve().parents[2]


def without_hashes(value):
    if isinstance(value, dict):
        return {k: without_hashes(v) for k, v in value.items() if "sha256" not in k}
    return value


def test_regenerated_bundles_load_and_match_the_shipped_ones(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tests/fixtures/generators/make_test_bundles.py"), "--out", str(tmp_path / "models"),
                    "--parts", str(tmp_path / "parts")], check=True, capture_output=True)
    for arch in ["vit", "resnet", "swin"]:
        regenerated = bundle.Bundle(tmp_path / "models" / f"tiny-{arch}")
        shipped = bundle.Bundle(ROOT / "models" / f"tiny-{arch}")
        assert without_hashes(regenerated.manifest) == without_hashes(shipped.manifest), f"tiny-{arch} manifest"
        for mine, theirs in [(regenerated.target, shipped.target), (regenerated.explainer, shipped.explainer),
                             (regenerated.heads["parity"], shipped.heads["parity"])]:
            a, b = mine.state_dict(), theirs.state_dict()
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), f"tiny-{arch} weights differ from the shipped bundle"
        x = torch.randn(2, 3, 32, 32)
        z = regenerated.target.embed(x)
        assert z.shape == (2, regenerated.manifest["embedding_dim"])
        assert torch.allclose(regenerated.target.head(z), regenerated.target(x), atol=1e-5)
        pos, neg = regenerated.explainer(x)
        assert pos.shape == neg.shape == (2, 16, z.shape[1])
        for size in (p.stat().st_size for p in (tmp_path / "models" / f"tiny-{arch}").rglob("*.pt")):
            assert size < 1_000_000


def test_a_changed_file_fails_its_hash(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tests/fixtures/generators/make_test_bundles.py"), "--out", str(tmp_path / "models"),
                    "--parts", str(tmp_path / "parts")], check=True, capture_output=True)
    head = tmp_path / "models" / "tiny-vit" / "heads" / "parity.pt"
    head.write_bytes(head.read_bytes() + b"x")
    try:
        bundle.Bundle(tmp_path / "models" / "tiny-vit")
    except ValueError as error:
        assert "parity.pt" in str(error) and "SHA-256" in str(error)
    else:
        raise AssertionError("a changed head file must be refused")
