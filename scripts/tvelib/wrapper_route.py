"""The wrapper route: classifiers outside tvelib.archs' family table (ConvNeXt, EfficientNet, RegNet,
MobileNet, any torchvision or timm CNN, your own), described by a short Python file of yours
(docs/own-model.md, "Other architectures: the wrapper route"):

    def build(num_classes):  # the network, random weights, num_classes outputs
        return torchvision.models.convnext_tiny(weights=None, num_classes=num_classes)

    def parts(net):          # where the bundle's methods are in it
        return {"stages": list(net.features),                      # image -> feature map [B,C,h,w], in order
                "pool": nn.Sequential(net.avgpool, net.classifier[0], net.classifier[1]),  # map -> z [B,D]
                "head": net.classifier[2]}                         # the nn.Linear classifier z -> logits

Optional module constants: IMAGE_SIZE (default 224), ARCHITECTURE (the manifest's name, default
the file's stem).

StagesTarget turns those parts into a bundle-shaped target (embed, head, forward, features,
embed_features, classify) with a "map" features layout. It carries its own archs.Family record
(FAMILY), so archs.family_of(), archs.embedding_dim() and trunks.encoder_trunk() (the explainer's
trunk: the stages up to the one on the G x G grid, then the remaining stages and `pool`) work on it
as on the built-in families; trunks.eager_target() rebuilds it from the bundle's provenance.source
by running the same wrapper file again, checked by its SHA-256.

Loading a wrapper file runs it: it is the user's own code, as any script passed to Python.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import List

import torch
from torch import nn

from . import archs


class WrapperError(ValueError):
    """A wrapper file that cannot describe a bundle; the message names the file and what is wrong."""


class StagesEncoder(nn.Module):
    """A network given as stages (image -> [B,C,h,w]), pool ([B,C,h,w] -> z [B,D]) and a linear
    head, with the bundle's required methods only (embed, head, forward): what a network whose last
    map is not D wide becomes (for_bundle), since the format's features() must give [B,D,h,w]."""

    def __init__(self, stages: List[nn.Module], pool: nn.Module, head: nn.Linear):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.pool = pool
        self.fc = head

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x))

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class StagesTarget(StagesEncoder):
    """StagesEncoder with features() = the last map [B,D,h,w] (its width the embedding's), and
    embed_features / classify, for the gradient methods."""

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # [B,C,h,w]

    @torch.jit.export
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.pool(features)

    @torch.jit.export
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))


def for_bundle(target: StagesTarget, size: int) -> StagesEncoder:
    """`target` when its last map is as wide as the embedding (the bundle format's features() is
    [B,D,h,w]); else a StagesEncoder of the same modules: no features(), so tve's Grad-CAM and
    Grad-CAM++ are unavailable, while the other methods and TVE work (MobileNetV3: 576 channels, a
    1024-wide embedding after a Linear and Hardswish in `pool`)."""
    with torch.no_grad():
        channels = int(target.stages(torch.zeros(1, 3, size, size)).shape[1])
    if channels == target.fc.in_features:
        return target
    return StagesEncoder(list(target.stages.children()), target.pool, target.fc).eval()


def _no_build(*_args, **_kwargs):
    raise ValueError("a wrapper-route target is built by its wrapper file (tvelib.wrapper_route.load)")


# Not in archs.FAMILIES (which lists the built-in families the test bundles and shipped models are
# made of); archs.family_of() finds it on the target's class instead.
StagesEncoder.FAMILY = archs.Family(  # StagesTarget inherits it
    "wrapper", StagesEncoder, "map", _no_build, lambda t: int(t.fc.in_features),
    stages=lambda t: list(t.stages.children()), embed_tail=lambda t: t.pool)


def sha256_of_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load(path: Path) -> ModuleType:
    """Imports the wrapper file (running it) and checks it defines build() and parts()."""
    path = Path(path)
    if not path.is_file():
        raise WrapperError(f"{path}: no such wrapper file")
    spec = importlib.util.spec_from_file_location(f"tve_wrapper_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise WrapperError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise WrapperError(f"{path}: running it failed: {type(e).__name__}: {str(e).strip()[:200]}") from None
    missing = [f for f in ("build", "parts") if not callable(getattr(module, f, None))]
    if missing:
        raise WrapperError(f"{path}: defines no {' and no '.join(f + '()' for f in missing)} (docs/own-model.md, "
                           f"'Other architectures: the wrapper route')")
    return module


def build_network(module: ModuleType, path: Path, num_classes: int) -> nn.Module:
    try:
        net = module.build(num_classes)
    except Exception as e:
        raise WrapperError(f"{path}: build({num_classes}) failed: {type(e).__name__}: {str(e).strip()[:200]}") from None
    if not isinstance(net, nn.Module):
        raise WrapperError(f"{path}: build() returned a {type(net).__name__}, not an nn.Module")
    return net.eval()


def wrap(module: ModuleType, path: Path, net: nn.Module) -> StagesTarget:
    """StagesTarget of `net` from the wrapper's parts(), checked for shape (features a 4-D map, a
    linear head) but not yet against the network's own output (check_against)."""
    try:
        p = module.parts(net)
    except Exception as e:
        raise WrapperError(f"{path}: parts(net) failed: {type(e).__name__}: {str(e).strip()[:200]}") from None
    if not isinstance(p, dict) or not {"stages", "pool", "head"} <= set(p):
        raise WrapperError(f"{path}: parts() must return a dict with 'stages', 'pool' and 'head' "
                           f"(got {type(p).__name__}{' with ' + ', '.join(map(str, p)) if isinstance(p, dict) else ''})")
    stages = list(p["stages"]) if not isinstance(p["stages"], nn.Module) else [p["stages"]]
    if not stages or not all(isinstance(s, nn.Module) for s in stages) or not isinstance(p["pool"], nn.Module):
        raise WrapperError(f"{path}: parts()['stages'] must be a list of nn.Modules and parts()['pool'] an nn.Module")
    if not isinstance(p["head"], nn.Linear):
        raise WrapperError(f"{path}: parts()['head'] is a {type(p['head']).__name__}, not one nn.Linear: tve explains "
                           f"a linear head on an encoder (put the layers before it into 'pool')")
    return StagesTarget(stages, p["pool"], p["head"]).eval()


def check_against(path: Path, net: nn.Module, target: StagesTarget, size: int) -> None:
    """The parts must compute the network: same logits on random input, features [B,C,h,w]."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            f = target.features(x)
            got, want = target.classify(f), net(x)
    except Exception as e:
        raise WrapperError(f"{path}: running the parts on a {size} px input failed: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[-1][:200]}") from None
    if f.dim() != 4:
        raise WrapperError(f"{path}: the stages give {tuple(f.shape)}, not a feature map [B,C,h,w] "
                           f"(a channels-last stage needs a permute at the end of 'stages')")
    # The same modules in the same order: equal up to rounding, relative to the logits' scale
    # (random-weight heads give logits of 1e-3, where an absolute tolerance would pass anything).
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or \
            float((got - want).abs().max()) > 1e-4 * float(want.abs().max()):
        diff = (f"largest logit difference {float((got - want).abs().max()):.3g}"
                if isinstance(want, torch.Tensor) and want.shape == got.shape
                else f"the network gives {getattr(want, 'shape', type(want).__name__)}, the parts {tuple(got.shape)}")
        raise WrapperError(f"{path}: head(pool(stages(x))) is not the network's output ({diff}); parts() "
                           f"leaves out or repeats a layer")


def stage_grids(target: StagesTarget, size: int) -> List[int]:
    """The output side length of each stage at input size `size` (the explainer's trunk ends at
    the stage whose side is the attribution grid)."""
    x = torch.zeros(1, 3, size, size)
    sides = []
    with torch.no_grad():
        for stage in target.stages.children():
            x = stage(x)
            sides.append(int(x.shape[-1]) if x.dim() == 4 else -1)
    return sides


def eager_target(source: dict, num_classes: int) -> StagesEncoder:
    """The eager target of a bundle made through the wrapper route, rebuilt from provenance.source
    by running the same wrapper file (random weights: the caller loads target.pt's into it)."""
    path = Path(source["wrapper"])
    if not path.is_file():
        raise WrapperError(f"{path}: the wrapper file this bundle was made with is gone; the explainer's "
                           f"training rebuilds the model with it: put it back (or remake the bundle)")
    digest = sha256_of_file(path)
    if digest != source.get("wrapper_sha256"):
        raise WrapperError(f"{path}: changed since the bundle was made (SHA-256 {digest[:12]}..., the bundle "
                           f"recorded {str(source.get('wrapper_sha256'))[:12]}...): remake the bundle with it")
    module = load(path)
    net = build_network(module, path, num_classes)
    return for_bundle(wrap(module, path, net), int(source["image_size"]))
