"""Makes a tve bundle (docs/bundle-format.md) from your own classifier.

    /usr/bin/python3 scripts/make_bundle.py --torchvision resnet50 --weights my.pth --labels labels.txt --out my-bundle
    /usr/bin/python3 scripts/make_bundle.py --torchvision vit_b_16 --weights my.pth --head birds=birds.pth --out b
    /usr/bin/python3 scripts/make_bundle.py --timm deit_small_patch16_224 --weights my.pth --out b
    /usr/bin/python3 scripts/make_bundle.py --torchscript model.pt --labels labels.txt --image-size 224 --out b
    /usr/bin/python3 scripts/make_bundle.py --wrapper convnext_wrapper.py --weights my.pth --out b
    tve-bundle --torchvision resnet50 ...     # the same, installed: pip install scripts/ (docs/own-model.md)

--torchvision NAME: any torchvision ResNet, ViT or Swin classifier (resnet18..152, resnext, wide_resnet,
vit_b_16..vit_h_14, swin_t/s/b, swin_v2_t/s/b). --timm NAME: timm's ResNet, ViT, DeiT and Swin models
(timm must be importable: the current-torch environment has it, docs/own-model.md). --weights:
a state dict saved with torch.save(model.state_dict()) (also inside {"state_dict": ...} or
{"model": ...}, "module." prefixes of DataParallel stripped) or, with --trust-pickle, a whole pickled model (loading one runs code from the file); without it,
seed-fixed random weights (--seed), for trying the pipeline. The encoder/head split, features()
and its layout, input size, mean/std and resize policy come from the family; --image-size,
--mean, --std, --resize, --crop-fraction, --grid and --radius override them.

--wrapper FILE.py: any other classifier (ConvNeXt, EfficientNet, RegNet, MobileNet, timm CNNs):
a Python file of yours with build(num_classes) and parts(net), which says where the network's
stages, pooling and linear head are (docs/own-model.md, "Other architectures: the wrapper route").

Weights files load as tensors only; a file that would run code when unpickled (a whole pickled
model) is refused unless --trust-pickle (docs/bundle-format.md, "Trust model").

--torchscript FILE: a scripted model that already has the bundle's methods (embed, head,
forward; features, embed_features, classify for the gradient methods), copied as it is.

--head NAME=FILE.pth adds a downstream linear head (a saved nn.Linear or its state dict) on the
same encoder, with labels from --head-labels NAME=FILE (one per line). The result is checked by
loading it back (and with `tve models --check` when a tve binary is found); what to do next is
printed. Works with Debian's torch 1.13 and with current PyTorch 2.x: the exported TorchScript
loads in tve's LibTorch 1.13 either way (ViTs get portable attention; docs/own-model.md).
"""
from __future__ import annotations

import argparse
import functools
import io
import pickletools
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Tuple

import torch
from torch import nn

from tvelib import archs, bundle, files
from tvelib.bundle import IMAGENET_MEAN, IMAGENET_STD

# The command as the user typed it (make_bundle.py, tve-bundle), for its messages.
PROG = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "make_bundle.py"
RADIUS = 2  # windows of 5 x 5 cells, as the shipped models
CROP_FRACTION = 0.875  # torchvision's classification transforms: resize 256, crop 224


class BundleError(Exception):
    """A user input that cannot make a bundle; the message names the file and what is wrong."""


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_labels(path: Path, expected: Optional[int]) -> List[str]:
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read labels: {e}") from None
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise BundleError(f"{path}: no labels (expected one per line)")
    if any(not label for label in labels):
        raise BundleError(f"{path}: line {labels.index('') + 1} is empty (expected one label per line)")
    lines: Dict[str, List[int]] = {}
    for number, label in enumerate(labels, 1):
        lines.setdefault(label, []).append(number)
    repeated = [(label, numbers) for label, numbers in lines.items() if len(numbers) > 1]
    if repeated:  # tve names classes by label (-c NAME, reports, golden files): one name, one class
        label, numbers = repeated[0]
        more = f" (and {len(repeated) - 1} more repeated label(s))" if len(repeated) > 1 else ""
        raise BundleError(f"{path}: label {label!r} is on lines {', '.join(map(str, numbers))}{more}; "
                          f"each class needs a name of its own")
    if expected is not None and len(labels) != expected:
        raise BundleError(f"{path}: {len(labels)} labels, but the model has {expected} classes")
    return labels


# What a tensors-only load may build: tensors, their storages, OrderedDict. Plain values (numbers,
# strings, lists, dicts, tuples) need no global. Anything else in a pickle is a class or function
# the unpickler would import and call: code from the file.
_TENSOR_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                   ("torch._utils", "_rebuild_parameter"), ("torch", "Size"), ("torch", "device")}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}
_MEMO_PUTS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


class NotAPickle(ValueError):
    """The file is not a readable torch.save file (truncated, or something else entirely)."""


def _globals_of_pickle(stream) -> List[str]:
    """'module.name' of every global one pickle in `stream` would import, read with pickletools
    (which decodes opcodes and runs nothing). A global whose name is computed is '?'."""
    found, pushed, memo = [], [], {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                found.append(".".join(str(arg).split(" ", 1)))
            elif op.name == "STACK_GLOBAL":
                # module and name are the two values pushed just before (a memo put between is fine)
                found.append(".".join(pushed[-2:]) if len(pushed) >= 2 and None not in pushed[-2:] else "?")
            elif op.name.startswith("EXT"):
                found.append("?")  # copyreg's extension registry: some global, by number
            if op.name in _STRING_OPS:
                pushed.append(str(arg))
            elif op.name in _MEMO_PUTS:
                memo[arg if op.name != "MEMOIZE" else len(memo)] = pushed[-1] if pushed else None
            elif op.name in _MEMO_GETS:
                pushed.append(memo.get(arg))
            else:
                pushed.append(None)
    except Exception as e:  # genops raises ValueError and others on bytes that are not a pickle
        raise NotAPickle(f"{type(e).__name__}: {e}") from None
    return found


def pickle_globals(path: Path) -> List[str]:
    """The globals torch.load(path) would import (NotAPickle when it is no torch.save file): the
    .pkl records of the zip format, or the first pickles of the legacy one."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return [g for n in z.namelist() if n.endswith(".pkl") for g in _globals_of_pickle(io.BytesIO(z.read(n)))]
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise NotAPickle(f"{type(e).__name__}: {e}") from None
    with open(path, "rb") as f:  # legacy: magic number, protocol, system info, the object, storage keys
        return [g for _ in range(5) for g in _globals_of_pickle(f)]


# torchvision's weight enum members (resnet50's IMAGENET1K_V2, DEFAULT): names, not files
_WEIGHTS_ENUM_NAME = re.compile(r"(?:\w+_Weights\.)?(?:[A-Z0-9]+_)*(?:V\d+|DEFAULT)")


def is_torchscript_archive(path: Path) -> bool:
    """True for a file torch.jit.save wrote (a zip with constants.pkl and code/), read without
    loading it."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_weights(path: Path, trust_pickle: bool = False) -> Dict[str, torch.Tensor] | nn.Module:
    """A state dict (plain, or under "state_dict"/"model"/"module", DataParallel's "module."
    prefix stripped) or, with trust_pickle only, a whole pickled nn.Module, from `path`.

    Nothing from the file runs unless trust_pickle: torch's weights_only loading first, then, for
    what it refuses, the globals the pickle would import are read without running it (pickle_globals);
    a file that needs more than tensors' own is refused, naming them and the flag.
    docs/bundle-format.md, 'Trust model'."""
    if not path.exists():
        if _WEIGHTS_ENUM_NAME.fullmatch(str(path)):
            raise BundleError(f"{path}: no such file; --weights takes a file, and {path} looks like the name of "
                              f"torchvision's pretrained weights, which this machine cannot download: save them on "
                              f"one that can (docs/own-model.md, 'Pretrained weights from torchvision') and pass "
                              f"the .pth")
        raise BundleError(f"{path}: no such file")
    if not path.is_file():
        raise BundleError(f"{path}: not a regular file (a folder?); --weights takes a .pth or .safetensors file")
    if path.suffix == ".safetensors":  # how timm and Hugging Face publish weights: tensors only by design
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BundleError(f"{path}: reading .safetensors needs the safetensors package (the current-torch "
                              f"venv has it: scripts/torch_env.py)") from None
        try:
            return load_file(str(path))
        except Exception as e:
            raise BundleError(f"{path}: not a safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    if is_torchscript_archive(path):
        raise BundleError(f"{path}: a TorchScript file (torch.jit.save), not weights; if it has the bundle's "
                          f"methods, pass it as --torchscript {path}; else save the eager model's "
                          f"state_dict() (docs/own-model.md, 'Scripted models')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises many types for a foreign or corrupt file
        # torch 1.13's weights_only refuses even floats (a checkpoint's {"epoch": 3, "lr": 0.1}), so
        # read what the file would import before calling it untrusted: only tensors' own globals ->
        # loading runs no code from the file.
        try:
            imports = pickle_globals(path)
        except NotAPickle as e:
            raise BundleError(f"{path}: not a PyTorch weights file (truncated, or not written by torch.save: "
                              f"{str(e)[:160]})") from None
        foreign = [g for g in dict.fromkeys(imports) if tuple(g.rsplit(".", 1)) not in _TENSOR_GLOBALS
                   and not (g.startswith("torch.") and g.endswith("Storage") and g.count(".") == 1)]
        # in the file's order (the outermost object first, a pickled model's class), builtins last
        foreign.sort(key=lambda g: g.startswith(("__builtin__.", "builtins.")))
        if foreign and not trust_pickle:
            raise BundleError(f"{path}: holds Python objects besides tensors ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}), and loading it would run code from the "
                              f"file; if you trust the file, pass --trust-pickle, or save model.state_dict() "
                              f"instead (docs/bundle-format.md, 'Trust model')")
        if foreign:  # said before loading: what the file runs may never give control back
            print(f"{PROG}: --trust-pickle: loading {path} with Python's full unpickler (it imports "
                  f"{', '.join(foreign[:3])}; code from the file runs now)", file=sys.stderr, flush=True)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise BundleError(f"{path}: not a PyTorch weights file ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[-1][:200]})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module", "model_state_dict"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        return obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors or a model")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def head_shape(state: Dict[str, torch.Tensor], net: nn.Module) -> Optional[Tuple[int, int]]:
    """(classes, embedding dim) of the last linear layer's weight in `state` (keyed as in net)."""
    last = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        return None
    w = state.get(f"{last[-1]}.weight")
    return tuple(w.shape) if w is not None and w.ndim == 2 else None


def describe_mismatch(net: nn.Module, state: Dict[str, torch.Tensor], limit: int = 4) -> str:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shapes differ (file vs model), e.g. " + "; ".join(shapes[:limit]))
    if missing:
        parts.append(f"{len(missing)} keys missing, e.g. " + ", ".join(missing[:limit]))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. " + ", ".join(unexpected[:limit]))
    return "; ".join(parts)


def torchvision_target(name: str, weights: Optional[Path], num_classes: Optional[int],
                       image_size: Optional[int], seed: int,
                       trust_pickle: bool = False) -> Tuple[nn.Module, nn.Module, dict]:
    """(torchvision network with the user's weights, its bundle wrapper, source record)."""
    try:
        probe = archs.torchvision_network(name, 1000, image_size)
    except ValueError as e:  # an unknown name: the message lists the known ones
        raise BundleError(f"{e}; for other classifiers: --wrapper (docs/own-model.md, 'Other architectures: "
                          f"the wrapper route')") from None
    try:
        archs.family_of_network(probe)
    except ValueError:
        raise BundleError(f"torchvision's {name} is a {type(probe).__name__}, outside tve's family table (ResNet, "
                          f"ViT, Swin): describe it in a short wrapper file and pass --wrapper FILE.py "
                          f"(docs/own-model.md, 'Other architectures: the wrapper route')") from None
    loaded = load_weights(weights, trust_pickle) if weights is not None else None
    if isinstance(loaded, nn.Module):
        net = loaded
        try:
            fam = archs.family_of_network(net)
        except ValueError as e:
            raise BundleError(f"{weights}: the pickled model is a {e}") from None
        if type(probe) is not type(net):
            raise BundleError(f"{weights}: a pickled {type(net).__name__}, not torchvision's {name}")
        state = net.state_dict()
    else:
        state = loaded
        shape = head_shape(state, probe) if state is not None else None
        if num_classes is None:
            num_classes = shape[0] if shape else 1000
        torch.manual_seed(seed)
        net = archs.torchvision_network(name, num_classes, image_size)
        if state is not None:
            problem = describe_mismatch(net, state)
            if problem:
                raise BundleError(f"{weights}: does not fit torchvision's {name}"
                                  f"{f' at {image_size} px' if image_size else ''} with {num_classes} classes: {problem}")
            net.load_state_dict(state)
    net.eval()
    fam = archs.family_of_network(net)
    last = _last_layer(fam, net)
    if not isinstance(last, nn.Linear):
        raise BundleError(f"{weights or name}: the model's last layer is a {type(last).__name__}, not one nn.Linear: "
                          f"tve explains a linear head on an encoder (fold extra layers into the encoder's "
                          f"TorchScript and use --torchscript)")
    try:
        target = archs.wrap_network(net)
    except ValueError as e:
        raise BundleError(f"{weights or name}: {e}") from None
    size = image_size or _native_size(fam, net)
    source = {"torchvision": name, "num_classes": int(last.out_features), "image_size": size}
    return net, target.eval(), source


def _last_layer(fam: archs.Family, net: nn.Module) -> nn.Module:
    if fam.name == "vit":
        return net.heads[-1] if len(net.heads) == 1 else net.heads
    return net.fc if fam.name == "resnet" else net.head


def _native_size(fam: archs.Family, net: nn.Module) -> int:
    """The input size torchvision trained the family at: a ViT's own image_size; Swin V2's 256;
    224 otherwise."""
    if fam.name == "vit":
        return int(net.image_size)
    if fam.name == "swin" and type(net.features[0][0]).__name__ == "Conv2d" and \
            any(type(m).__name__ == "PatchMergingV2" for m in net.modules()):
        return 256
    return 224


def timm_target(name: str, weights: Optional[Path], num_classes: Optional[int],
                image_size: Optional[int], seed: int,
                trust_pickle: bool = False) -> Tuple[nn.Module, nn.Module, dict]:
    try:
        from tvelib import timm_archs
    except ImportError as e:
        raise BundleError(f"--timm needs the timm package ({e}); it is in the current-torch environment: "
                          f"scripts/torch_env.py python scripts/make_bundle.py --timm ...") from None
    return timm_archs.timm_target(name, weights, num_classes, image_size, seed,
                                  functools.partial(load_weights, trust_pickle=trust_pickle), describe_mismatch,
                                  BundleError)


def wrapper_target(path: Path, weights: Optional[Path], num_classes: Optional[int], image_size: Optional[int],
                   seed: int, trust_pickle: bool = False) -> Tuple[nn.Module, nn.Module, dict]:
    """(network, its StagesTarget, source record) for --wrapper FILE.py: the wrapper file builds the
    network and says where its stages, pool and linear head are (tvelib.wrapper_route)."""
    from tvelib import wrapper_route
    try:
        module = wrapper_route.load(path)
        state = None
        if weights is not None:
            loaded = load_weights(weights, trust_pickle)
            state = loaded.state_dict() if isinstance(loaded, nn.Module) else loaded
        if num_classes is None:  # the head's row count in the file, found by the head's name in a probe
            probe = wrapper_route.build_network(module, path, 1000)
            head = wrapper_route.wrap(module, path, probe).fc
            key = next((f"{n}.weight" for n, m in probe.named_modules() if m is head), None)
            w = state.get(key) if state is not None and key is not None else None
            num_classes = int(w.shape[0]) if w is not None and w.ndim == 2 else 1000
        torch.manual_seed(seed)
        net = wrapper_route.build_network(module, path, num_classes)
        if state is not None:
            problem = describe_mismatch(net, state)
            if problem:
                raise BundleError(f"{weights}: does not fit what {path} builds with {num_classes} classes: {problem}")
            net.load_state_dict(state)
        net.eval()
        target = wrapper_route.wrap(module, path, net)
        size = image_size or int(getattr(module, "IMAGE_SIZE", 224))
        wrapper_route.check_against(path, net, target, size)
        target = wrapper_route.for_bundle(target, size)
    except wrapper_route.WrapperError as e:
        raise BundleError(str(e)) from None
    source = {"wrapper": str(path.resolve()), "wrapper_sha256": wrapper_route.sha256_of_file(path),
              "num_classes": int(target.fc.out_features), "image_size": size,
              "architecture": str(getattr(module, "ARCHITECTURE", path.stem)),
              "stage_grids": wrapper_route.stage_grids(target, size),
              "features": isinstance(target, wrapper_route.StagesTarget)}
    return net, target.eval(), source


def torchscript_target(path: Path, image_size: int) -> Tuple[torch.jit.ScriptModule, int, int, Optional[str]]:
    """(module, classes, embedding dim, features layout or None) of a scripted model with the
    bundle's methods, checked by calling them."""
    if not path.is_file():
        raise BundleError(f"{path}: no such file")
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        raise BundleError(f"{path}: not a TorchScript file this torch ({torch.__version__}) loads: "
                          f"{str(e).strip().splitlines()[0][:200]}") from None
    missing = [m for m in ("embed", "head", "forward") if not hasattr(module, m)]
    if missing:
        raise BundleError(f"{path}: lacks the bundle method(s) {', '.join(missing)} (docs/bundle-format.md, "
                          f"'TorchScript methods'); for a torchvision or timm model use --torchvision/--timm")
    x = torch.zeros(2, 3, image_size, image_size)
    try:
        with torch.no_grad():
            z = module.embed(x)
            logits = module.head(z)
            layout = None
            if hasattr(module, "features"):
                f = module.features(x)
                layout = "map" if f.dim() == 4 else "tokens" if f.dim() == 3 else None
                if layout is None:
                    raise BundleError(f"{path}: features() gives {tuple(f.shape)}, neither [B,D,h,w] nor [B,1+N,D]")
    except BundleError:
        raise
    except Exception as e:
        raise BundleError(f"{path}: calling embed/head/features on a {image_size} px input failed "
                          f"(--image-size?): {str(e).strip().splitlines()[-1][:200]}") from None
    if z.dim() != 2 or logits.dim() != 2:
        raise BundleError(f"{path}: embed() gives {tuple(z.shape)} and head() {tuple(logits.shape)}; "
                          f"expected [B,D] and [B,C]")
    return module, int(logits.shape[1]), int(z.shape[1]), layout


def read_head(spec: str, labels_spec: Dict[str, Path], dim: int, trust_pickle: bool = False) -> Tuple[str, dict]:
    name, sep, file = spec.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise BundleError(f"--head {spec!r}: expected NAME=FILE.pth with NAME of letters, digits, _ and -")
    loaded = load_weights(Path(file), trust_pickle)
    if isinstance(loaded, nn.Module):
        if not isinstance(loaded, nn.Linear):
            raise BundleError(f"{file}: a pickled {type(loaded).__name__}, not an nn.Linear head")
        state = loaded.state_dict()
    else:
        state = loaded
    w, b = state.get("weight"), state.get("bias")
    if w is None or w.ndim != 2 or set(state) - {"weight", "bias"}:
        raise BundleError(f"{file}: expected an nn.Linear's state dict (weight [C,D], bias [C]); "
                          f"found keys {sorted(state)[:6]}")
    if w.shape[1] != dim:
        raise BundleError(f"{file}: head weight {tuple(w.shape)} takes {w.shape[1]} features; the encoder gives {dim}")
    linear = nn.Linear(dim, w.shape[0], bias=b is not None)
    linear.load_state_dict(state)
    labels = (read_labels(labels_spec[name], w.shape[0]) if name in labels_spec
              else [f"{name} {i}" for i in range(w.shape[0])])
    return name, {"module": linear.eval(), "labels": labels, "task": name}


def constant_head_warnings(head, what: str, labels: List[str], dim: int, weights: Optional[Path]) -> List[str]:
    """Warnings for classes whose logit does not depend on the embedding (a zero weight row, as
    torchvision initialises a ViT's head): every map of such a class is zero, whatever the method.
    Measured by calling the head (so a scripted one is checked too) on random embeddings."""
    z = torch.randn(16, dim, generator=torch.Generator().manual_seed(0)) * 10
    with torch.no_grad():
        logits = head(z)
    flat = (logits - logits[:1]).abs().amax(0) == 0  # [C]: the same logit for every embedding
    n = int(flat.sum())
    if n == 0:
        return []
    cause = "its weights are zero? torchvision starts a ViT's head at zero; " if weights is None else ""
    fix = ("give trained weights (--weights), or add a trained head with --head NAME=FILE.pth" if weights is None
           else f"check that {weights} holds the trained head")
    if n == len(labels):
        return [f"{what} gives the same logits for every image ({cause}every map tve makes with it is zero): {fix}"]
    which = ", ".join(repr(labels[i]) for i in torch.nonzero(flat).flatten()[:3].tolist())
    return [f"{what}: {n} of {len(labels)} classes ({which}{', ...' if n > 3 else ''}) have a logit that does not "
            f"depend on the image, so their maps are zero: {fix}"]


# The ranges tve's manifest check accepts (src/bundle.cpp, docs/bundle-format.md): a bundle made
# outside them would be refused by `tve models --check` at the end instead of here.
MANIFEST_BOUNDS = {"mean": (0.0, 1.0), "std": (0.001, 100.0), "crop_fraction": (0.1, 1.0)}


def parse_floats(text: Optional[str], what: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BundleError(f"--{what} {text!r}: expected three comma-separated numbers, e.g. 0.5,0.5,0.5") from None
    low, high = MANIFEST_BOUNDS[what]
    if len(values) != 3 or not all(low <= v <= high for v in values):
        raise BundleError(f"--{what} {text!r}: expected three numbers in [{low:g}, {high:g}] (the range tve's "
                          f"manifest check accepts, docs/bundle-format.md)")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", metavar="NAME", help="torchvision constructor, e.g. resnet50, vit_b_16, swin_t")
    src.add_argument("--timm", metavar="NAME", help="timm model name, e.g. deit_small_patch16_224")
    src.add_argument("--torchscript", type=Path, metavar="FILE", help="a scripted model with the bundle's methods")
    src.add_argument("--wrapper", type=Path, metavar="FILE.py",
                     help="any other classifier: a Python file with build(num_classes) and parts(net) saying where "
                          "its stages, pooling and linear head are (docs/own-model.md, 'Other architectures')")
    ap.add_argument("--weights", type=Path, help="state dict (.pth, .safetensors) or, with --trust-pickle, a "
                                                  "pickled model; default: random, --seed")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow weights files that hold more than tensors (a pickled model, a checkpoint with "
                         "objects): loading them runs code from the file (docs/bundle-format.md, 'Trust model')")
    ap.add_argument("--labels", type=Path, help="class names, one per line (default: ImageNet's for 1000 "
                                                 "classes, else 'class N')")
    ap.add_argument("--num-classes", type=int, help="classes of the head (default: from the weights)")
    ap.add_argument("--head", action="append", default=[], metavar="NAME=FILE.pth", help="a downstream linear head")
    ap.add_argument("--head-labels", action="append", default=[], metavar="NAME=FILE", help="labels of --head NAME")
    ap.add_argument("--out", type=Path, required=True, help="bundle folder to write (must not exist, or --force)")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    ap.add_argument("--name", help="bundle name (default: the folder's name)")
    ap.add_argument("--architecture", help="with --torchscript: the family name for the manifest (default custom)")
    ap.add_argument("--image-size", type=int, help="input height = width (default: the family's, 224 for --torchscript)")
    ap.add_argument("--mean", help="per-channel mean, R,G,B in [0,1] (default ImageNet's)")
    ap.add_argument("--std", help="per-channel std (default ImageNet's)")
    ap.add_argument("--resize", choices=["stretch", "center_crop"], default="center_crop",
                    help="how tve fits an image to the input (default center_crop, as torchvision's transforms)")
    ap.add_argument("--crop-fraction", type=float, default=CROP_FRACTION,
                    help="center_crop: input / resized shorter side (default 0.875, timm: the model's crop_pct)")
    ap.add_argument("--grid", type=int, help="attribution grid G (default: stride-16 cells, or the ViT's patches)")
    ap.add_argument("--radius", type=int, help="occlusion window radius in cells (default 2 on grids of 12 or "
                                               "more, as the shipped models; 1 on smaller grids, 0 below 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of random weights when --weights is not given")
    ap.add_argument("--tve", type=Path, help="tve binary for the final check (default build/tve or tve on PATH)")
    args = ap.parse_args()
    try:
        make(args)
    except BundleError as e:
        fail(str(e))


def make(args: argparse.Namespace) -> None:
    try:
        tve = files.find_tve(args.tve)
    except ValueError as e:
        raise BundleError(str(e)) from None
    if args.out.exists() and not args.force:
        raise BundleError(f"{args.out}: exists (choose another --out, or --force to replace it)")
    if args.image_size is not None and args.image_size < 16:
        raise BundleError(f"--image-size {args.image_size}: too small (at least 16)")
    low, high = MANIFEST_BOUNDS["crop_fraction"]
    if not low <= args.crop_fraction <= high:
        raise BundleError(f"--crop-fraction {args.crop_fraction}: must be in [{low:g}, {high:g}]")
    mean = parse_floats(args.mean, "mean") or IMAGENET_MEAN
    std = parse_floats(args.std, "std") or IMAGENET_STD
    labels_for_heads = {}
    for spec in args.head_labels:
        name, sep, file = spec.partition("=")
        if not sep:
            raise BundleError(f"--head-labels {spec!r}: expected NAME=FILE")
        labels_for_heads[name] = Path(file)
    provenance: dict = {"script": "scripts/make_bundle.py", "torch": torch.__version__}
    features_layout = None
    if args.torchscript is not None:
        size = args.image_size or 224
        target, classes, dim, features_layout = torchscript_target(args.torchscript, size)
        architecture = args.architecture or "custom"
        grid = args.grid or size // 16
        provenance["source"] = {"torchscript": str(args.torchscript), "sha256": bundle.sha256_of(args.torchscript)}
        default_labels = None
    else:
        make_target = torchvision_target if args.torchvision else timm_target if args.timm else wrapper_target
        name = args.torchvision or args.timm or args.wrapper
        net, target, source = make_target(name, args.weights, args.num_classes, args.image_size, args.seed,
                                          args.trust_pickle)
        size, classes = source["image_size"], source["num_classes"]
        # timm records each model's own normalisation and crop (e.g. 0.5/0.5 for some ViTs)
        mean = parse_floats(args.mean, "mean") or source.get("mean", mean)
        std = parse_floats(args.std, "std") or source.get("std", std)
        if "crop_fraction" in source and args.crop_fraction == CROP_FRACTION:
            args.crop_fraction = float(source["crop_fraction"])
        fam = archs.family_of(target) if args.torchvision else None
        architecture = fam.name if fam else source["architecture"]
        grid = args.grid or (fam.default_grid(net, size) if fam else source.get("grid", size // 16))
        if args.wrapper:
            features_layout = "map" if source["features"] else None
            if not source["features"]:
                print(f"{PROG}: warning: the last map of {args.wrapper} is not as wide as the embedding "
                      f"({target.fc.in_features}; 'pool' has layers with weights), and the bundle format's "
                      f"features() must be [B,{target.fc.in_features},h,w]: the bundle has no features(), so "
                      f"gradcam and gradcam++ are unavailable; the other methods and TVE work",
                      file=sys.stderr)
            if grid not in source["stage_grids"]:  # the explainer's trunk ends at the stage on the grid
                print(f"{PROG}: warning: no stage of {args.wrapper} gives a {grid} x {grid} map (their sides "
                      f"at {size} px: {source['stage_grids']}); the classic methods work, but train_explainer.py "
                      f"needs --grid to be one of those sides", file=sys.stderr)
        dim = int(target.embed(torch.zeros(1, 3, size, size)).shape[1])
        if args.weights is not None:
            source.update(weights=str(args.weights), weights_sha256=bundle.sha256_of(args.weights))
        else:
            source.update(weights=f"random initialisation (torch.manual_seed({args.seed}))")
        provenance["source"] = source
        default_labels = _imagenet_labels(args.torchvision) if args.torchvision and classes == 1000 else None
    if grid < 1 or size % grid:
        raise BundleError(f"--grid {grid}: the input size {size} must be a multiple of it")
    radius = args.radius if args.radius is not None else RADIUS if grid >= 12 else 1 if grid >= 4 else 0
    if not 0 <= radius < grid:
        raise BundleError(f"--radius {radius}: must be in [0, grid {grid})")
    labels = (read_labels(args.labels, classes) if args.labels is not None
              else default_labels or [f"class {i}" for i in range(classes)])
    heads = dict(read_head(spec, labels_for_heads, dim, args.trust_pickle) for spec in args.head)
    unknown = set(labels_for_heads) - set(heads)
    if unknown:
        raise BundleError(f"--head-labels for {sorted(unknown)}, which no --head names")
    for warning in constant_head_warnings(target.head, "the target head", labels, dim, args.weights):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    for head_name, spec in heads.items():
        for warning in constant_head_warnings(spec["module"], f"head {head_name!r}", spec["labels"], dim, None):
            print(f"{PROG}: warning: {warning}", file=sys.stderr)

    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    name = args.name or args.out.resolve().name
    bundle.write_bundle(tmp, name=name, architecture=architecture, target=target, labels=labels,
                        task=f"{name} classes", input_size=size, grid=grid, radius=radius, embedding_dim=dim,
                        heads=heads, provenance=provenance, mean=mean, std=std,
                        description=f"{provenance['source'].get('torchvision') or provenance['source'].get('timm') or provenance['source'].get('architecture') or 'TorchScript'}"
                                    f" made by scripts/make_bundle.py", resize=args.resize,
                        crop_fraction=args.crop_fraction, features_layout=features_layout)
    check_loads_back(tmp, target, size)
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    if tve is not None:
        done = subprocess.run([str(tve), "models", "--check", "--model", str(args.out)], capture_output=True, text=True)
        if done.returncode != 0:
            hint = ""
            if "Unknown builtin op" in done.stdout + done.stderr:
                hint = ("\n  The TorchScript uses an operator newer than tve's LibTorch 1.13 (PyTorch 2.x attention, "
                        "most often): make the bundle with --torchvision or --timm, which export portable "
                        "attention (docs/own-model.md, 'Current PyTorch').")
            raise BundleError(f"{args.out}: written, but `tve models --check` refused it (exit {done.returncode}):\n"
                              f"{done.stdout}{done.stderr}{hint}")
        print(done.stdout.strip())
    else:
        print("(no tve binary found: run `tve models --check --model " f"{args.out}` once tve is built)")
    print(f"wrote {args.out}: {architecture}, {size} px, grid {grid}, {classes} classes"
          f"{', heads ' + ', '.join(heads) if heads else ''}\n"
          f"next:\n"
          f"  tve explain IMAGE --model {args.out} --method gradcam     # works now\n"
          f"  /usr/bin/python3 scripts/train_explainer.py --model {args.out} --images YOUR_IMAGES/ --time-budget 1h\n"
          f"  tve explain IMAGES/ --model {args.out} --out overlays/     # TVE, once the explainer is trained")


def _imagenet_labels(name: str) -> Optional[List[str]]:
    """torchvision's ImageNet-1k category names (in the weights enum's metadata, no download)."""
    import torchvision.models as tvm
    try:
        weights = tvm.get_model_weights(name)
        return list(next(iter(weights)).meta["categories"])
    except (ValueError, StopIteration, KeyError):
        return None


def check_loads_back(path: Path, eager: nn.Module, size: int) -> None:
    """Loads the written bundle and compares its target with the eager model on random input."""
    b = bundle.Bundle(path)
    x = b.normalise(torch.rand(2, 3, size, size))
    with torch.no_grad():
        want, got = eager.eval()(x), b.target(x)
    if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
        raise BundleError(f"{path}: the scripted target differs from the model by {float((got - want).abs().max()):.3g}")


if __name__ == "__main__":
    main()
