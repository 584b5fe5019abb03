#!/usr/bin/python3
"""Re-exports the target.pt of a bundle written by this project's scripts with the current wrappers
(scripts/tvelib/archs.py), same weights, and rebinds the manifest to it.

    /usr/bin/python3 scripts/upgrade_bundle.py models/resnet [models/vit ...]

Used when the wrappers gain a method (embed_features, which gradient methods need to explain a
downstream head): the weights are loaded into the eager wrapper, checked to give the same
embeddings as the old file, scripted, and saved; target.sha256 and explainer.target_sha256 are
updated together (the explainer was trained against these same weights). Bundles that already have
every method are left untouched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import bundle, trunks  # noqa: E402
from tvelib.files import write_json  # noqa: E402

REQUIRED = ("embed", "head", "features", "embed_features", "classify")


def upgrade(bundle_dir: Path) -> bool:
    """Returns True when target.pt was rewritten."""
    b = bundle.Bundle(bundle_dir)
    if all(hasattr(b.target, name) for name in REQUIRED):
        return False
    eager = trunks.eager_target(b)  # checks the embeddings against the old file
    x = torch.randn(2, 3, b.input_size, b.input_size)
    with torch.no_grad():
        if not torch.allclose(eager(x), b.target(x), atol=1e-4, rtol=1e-4):
            raise ValueError(f"{bundle_dir}: the rebuilt target's logits differ from target.pt")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    digest = bundle.save_script(eager, bundle_dir / manifest["target"]["file"])
    manifest["target"]["sha256"] = digest
    if "explainer" in manifest:
        manifest["explainer"]["target_sha256"] = digest
    write_json(bundle_dir / "manifest.json", manifest)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    for bundle_dir in args.bundles:
        print(f"{bundle_dir}: {'target.pt re-exported' if upgrade(bundle_dir) else 'already current'}")


if __name__ == "__main__":
    main()
