#!/usr/bin/python3
"""Re-exports the target.pt and explainer.pt of a bundle written by this project's scripts with the
current wrappers (scripts/tvelib/archs.py, scripts/tvelib/explainer.py), same weights, and rebinds
the manifest to them.

    /usr/bin/python3 scripts/upgrade_bundle.py models/resnet [models/vit ...]

Used when the wrappers gain a method: the target's embed_features (which gradient methods need to
explain a downstream head), the explainer's embed_and_explain (E(x) and the meta-attributions in
one pass, docs/bundle-format.md). The weights are loaded into the eager module, checked to give the
same outputs as the old file, scripted, and saved; target.sha256 and explainer.target_sha256 are
updated together (the explainer was trained against these same weights), explainer.sha256 with
its file. Files that already have every method are left untouched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import bundle, explainer, trunks  # noqa: E402
from tvelib.files import write_json  # noqa: E402

REQUIRED = ("embed", "head", "features", "embed_features", "classify")
EXPLAINER_REQUIRED = ("forward_with_embedding", "embed_and_explain")


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


def upgrade_explainer(bundle_dir: Path) -> bool:
    """Returns True when explainer.pt was rewritten. Only explainers train_explainer.py or
    build_models.py made with the global branch (a copy of the whole encoder) can embed."""
    b = bundle.Bundle(bundle_dir)
    if b.explainer is None or all(hasattr(b.explainer, name) for name in EXPLAINER_REQUIRED):
        return False
    record = b.manifest.get("provenance", {}).get("explainer", {})
    if "config" not in record:
        raise ValueError(f"{bundle_dir}: the explainer has no provenance.explainer.config to rebuild it from")
    cfg = explainer.ExplainerConfig.from_dict(record["config"])
    if not cfg.global_branch:
        return False  # no copy of the encoder's last stages: it cannot give E(x)
    eager = explainer.build(trunks.eager_target(b), b.manifest["grid"], b.manifest["radius"], b.input_size, cfg)
    eager.load_state_dict(b.explainer.state_dict(), strict=True)
    eager.eval()
    x = torch.randn(2, 3, b.input_size, b.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = b.target.embed(x)
        for old, new in zip(b.explainer.forward_with_embedding(x, z), eager.forward_with_embedding(x, z)):
            if not torch.allclose(old, new, atol=1e-5, rtol=1e-4):
                raise ValueError(f"{bundle_dir}: the rebuilt explainer's outputs differ from explainer.pt")
        z_own = eager.embed_and_explain(x)[0]
        if not torch.allclose(z_own, z, atol=1e-4, rtol=1e-4):
            raise ValueError(f"{bundle_dir}: the rebuilt explainer's copy of the encoder differs from target.pt")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["explainer"]["sha256"] = bundle.save_script(eager, bundle_dir / manifest["explainer"]["file"])
    write_json(bundle_dir / "manifest.json", manifest)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    for bundle_dir in args.bundles:
        print(f"{bundle_dir}: {'target.pt re-exported' if upgrade(bundle_dir) else 'target.pt already current'}; "
              f"{'explainer.pt re-exported' if upgrade_explainer(bundle_dir) else 'explainer.pt already current'}")


if __name__ == "__main__":
    main()
