"""Writing and reading model bundles (docs/bundle-format.md, format version 1)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from .files import replace_atomically, write_json

FORMAT_VERSION = 1

# ImageNet statistics: the defaults torchvision's models use, kept for every bundle here so that
# paper-scale bundles with real pretrained weights need no other constants.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_script(module: nn.Module, path: Path) -> str:
    """Scripts (unless already scripted) and saves a module in eval mode; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    replace_atomically(path, lambda tmp: scripted.save(str(tmp)))
    return sha256_of(path)


def write_bundle(out_dir: Path, *, name: str, architecture: str, target: nn.Module, labels: List[str],
                 task: str, input_size: int, grid: int, radius: int, embedding_dim: int,
                 explainer: Optional[nn.Module] = None, explainer_defaults: Optional[dict] = None,
                 heads: Optional[Dict[str, dict]] = None, provenance: Optional[dict] = None,
                 description: str = "", mean: List[float] = IMAGENET_MEAN,
                 std: List[float] = IMAGENET_STD, resize: str = "stretch", crop_fraction: float = 0.875,
                 features_layout: Optional[str] = None) -> dict:
    """Writes a complete bundle and returns its manifest.

    heads: task name -> {"module": nn.Module, "labels": [...], "metrics": {...}}.
    explainer_defaults: lambda_pos, lambda_neg, smooth (transfer-rule defaults).
    resize: "stretch" or "center_crop" (with crop_fraction); features_layout: "map" or "tokens",
    needed only when the architecture is not vit, resnet or swin.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "architecture": architecture,
        "input": {"height": input_size, "width": input_size, "resize": resize,
                  **({"crop_fraction": crop_fraction} if resize == "center_crop" else {}),
                  "mean": list(mean), "std": list(std)},
        "grid": grid,
        "radius": radius,
        "embedding_dim": embedding_dim,
        "target": {"file": "target.pt", "sha256": save_script(target, out_dir / "target.pt"),
                   "task": task, "labels": list(labels)},
    }
    if features_layout is not None:
        manifest["features_layout"] = features_layout
    if explainer is not None:
        defaults = {"lambda_pos": 1.0, "lambda_neg": 1.0, "smooth": True}
        defaults.update(explainer_defaults or {})
        manifest["explainer"] = {"file": "explainer.pt",
                                 "sha256": save_script(explainer, out_dir / "explainer.pt"),
                                 "target_sha256": manifest["target"]["sha256"], **defaults}
    if heads:
        manifest["heads"] = {}
        for task_name, spec in heads.items():
            rel = f"heads/{task_name}.pt"
            entry = {"file": rel, "sha256": save_script(spec["module"], out_dir / rel),
                     "task": spec.get("task", task_name), "labels": list(spec["labels"])}
            if "metrics" in spec:
                entry["metrics"] = spec["metrics"]
            manifest["heads"][task_name] = entry
    if provenance:
        manifest["provenance"] = provenance
    write_json(out_dir / "manifest.json", manifest)
    _remove_unlisted_models(out_dir, manifest)
    return manifest


def _remove_unlisted_models(out_dir: Path, manifest: dict) -> None:
    """Deletes model files a rewritten bundle no longer lists: an explainer.pt left from the previous
    encoder (it explains a target that is gone) or a head that was dropped. Removed only after the
    new manifest is in place, so the folder never lists a file it lacks."""
    listed = {manifest["target"]["file"], *(h["file"] for h in manifest.get("heads", {}).values())}
    if "explainer" in manifest:
        listed.add(manifest["explainer"]["file"])
    for path in [out_dir / "explainer.pt", *sorted((out_dir / "heads").glob("*.pt"))]:
        if path.is_file() and path.relative_to(out_dir).as_posix() not in listed:
            path.unlink()


def normalise(rgb01: torch.Tensor, mean, std) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> (x - mean) / std per channel, as tve's preprocessing does."""
    return (rgb01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class Bundle:
    """A bundle loaded for Python-side evaluation, hashes verified."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}/manifest.json: format_version is not {FORMAT_VERSION}")
        self.target = self._load(self.manifest["target"])
        self.labels = self._labels(self.manifest["target"])
        self.explainer = self._load(self.manifest["explainer"]) if "explainer" in self.manifest else None
        self.heads = {k: self._load(v) for k, v in self.manifest.get("heads", {}).items()}
        self.head_labels = {k: self._labels(v) for k, v in self.manifest.get("heads", {}).items()}

    def _load(self, entry: dict) -> torch.jit.ScriptModule:
        path = self.path / entry["file"]
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            raise ValueError(f"{path}: SHA-256 {digest} does not match the manifest's {entry['sha256']}")
        return torch.jit.load(str(path)).eval()

    def _labels(self, entry: dict) -> List[str]:
        if "labels" in entry:
            return list(entry["labels"])
        return (self.path / entry["labels_file"]).read_text(encoding="utf-8").splitlines()

    @property
    def input_size(self) -> int:
        return int(self.manifest["input"]["height"])

    def normalise(self, rgb01: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] RGB in [0,1] -> normalised input."""
        return normalise(rgb01, self.manifest["input"]["mean"], self.manifest["input"]["std"])


def add_explainer(bundle_dir: Path, module: nn.Module, defaults: dict, provenance: Optional[dict] = None) -> dict:
    """Adds (or replaces) the explainer of an existing bundle without touching target.pt.

    Writes explainer.pt, then the manifest's "explainer" section with target_sha256 set to the
    SHA-256 of the target.pt on disk (checked against the manifest first, so an explainer is never
    bound to a target it was not trained against), and provenance["explainer"] if given. The
    manifest is replaced atomically; returns it.
    defaults: lambda_pos, lambda_neg, smooth (the transfer rule's defaults).
    """
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    target_file = bundle_dir / manifest["target"]["file"]
    target_sha = sha256_of(target_file)
    if target_sha != manifest["target"]["sha256"]:
        raise ValueError(f"{target_file}: SHA-256 {target_sha} does not match the manifest's "
                         f"{manifest['target']['sha256']}; refusing to bind an explainer to it")
    missing = {"lambda_pos", "lambda_neg", "smooth"} - set(defaults)
    if missing:
        raise ValueError(f"explainer defaults lack {sorted(missing)}")
    manifest["explainer"] = {"file": "explainer.pt", "sha256": save_script(module, bundle_dir / "explainer.pt"),
                             "target_sha256": target_sha, "lambda_pos": float(defaults["lambda_pos"]),
                             "lambda_neg": float(defaults["lambda_neg"]), "smooth": bool(defaults["smooth"])}
    if provenance is not None:
        manifest.setdefault("provenance", {})["explainer"] = provenance
    write_json(bundle_dir / "manifest.json", manifest)
    return manifest
