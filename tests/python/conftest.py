import sys
from pathlib import Path

# Let tests import the scripts' package (scripts/tvelib) without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture()
def bare_bundle(tmp_path) -> Path:
    """A copy of the tiny ResNet bundle without its explainer: what make_bundle gives a user."""
    b = tmp_path / "bundle"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "tiny-resnet", b)
    m = json.loads((b / "manifest.json").read_text())
    m.pop("explainer")
    (b / "manifest.json").write_text(json.dumps(m))
    (b / "explainer.pt").unlink()
    return b
