"""timm's ResNet, VisionTransformer (ViT, DeiT) and SwinTransformer as bundle targets.

tvelib.archs already has bundle-shaped wrappers for torchvision's versions of these three families
(VitTarget, ResNetTarget, SwinTarget: embed, head, forward, features, embed_features, classify).
timm's networks compute the same functions from modules of the same roles, so instead of a second
set of wrappers this module hands timm's own modules (blocks, stages, norms, classifier) to those
wrappers, in containers laid out the way the wrappers and their archs.Family records expect:

    timm ResNet          -> archs.ResNetTarget(container: conv1, bn1, relu, maxpool, layer1..4, avgpool, fc)
    timm VisionTransformer -> archs.VitTarget(container: conv_proj, class_token, encoder.pos_embedding,
                                              encoder.layers, encoder.ln, heads, patch_size, hidden_dim)
    timm SwinTransformer -> archs.SwinTarget(container: features = [patch embedding, stages...],
                                             norm, avgpool, head)

The result is an ordinary archs wrapper: archs.family_of(), archs.embedding_dim(),
trunks.encoder_trunk() (the explainer's trunk) and the distillation in tvelib.training work on it
unchanged, and its TorchScript has the same methods and layouts as a torchvision target's.

Portability: the TorchScript must load in tve's LibTorch 1.13 whatever torch exports it. timm's
attention modules call F.scaled_dot_product_attention when their `fused_attn` flag is set (by
default on torch 2.x), an operator 1.13 does not know; wrap_network() clears the flag on every
module, which makes them compute softmax(q k^T / sqrt(d)) v with matrix products (the flag is a
TorchScript constant, so the fused branch is not even compiled). timm's PatchEmbed does not
script under torch 1.13 (its output-format enum), so its convolution and norm are taken out of it
(NhwcPatchEmbed for Swin; ViT's patch norm is refused, it is absent from ViT and DeiT).

Needs timm (imported here, so that `import tvelib.timm_archs` failing is how callers learn it is
missing); tested with timm 1.0.31 under torch 1.13 and 2.x.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Type

import timm
import timm.models
import torch
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import archs

# timm module (of the model's entry point) -> the tvelib family its models belong to
FAMILY_OF_TIMM_MODULE: Dict[str, str] = {
    "timm.models.vision_transformer": "vit",
    "timm.models.deit": "vit",
    "timm.models.resnet": "resnet",
    "timm.models.swin_transformer": "swin",
}
TIMM_CLASS: Dict[str, type] = {"vit": VisionTransformer, "resnet": ResNet, "swin": SwinTransformer}
# named in error messages; all build at their native size in a few seconds
EXAMPLES = ["vit_tiny_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224",
            "resnet18", "resnet50", "swin_tiny_patch4_window7_224"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- containers: timm's modules under the attribute names of torchvision's networks ------------


class NhwcPatchEmbed(nn.Module):
    """Swin's patch embedding (timm's PatchEmbed with output_fmt NHWC, which does not script under
    torch 1.13): [B,3,H,W] -> conv -> [B,h,w,C] channels-last -> norm."""

    def __init__(self, proj: nn.Module, norm: nn.Module):
        super().__init__()
        self.proj = proj
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class _ResNetParts(nn.Module):
    """timm ResNet's modules as archs.ResNetTarget reads them (torchvision's names: timm's act1 is
    `relu`, its global average pool `avgpool`). Holds modules only; no forward of its own."""

    def __init__(self, net: ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # what timm's SelectAdaptivePool2d('avg') computes
        self.fc = net.fc


class _SwinParts(nn.Module):
    """timm SwinTransformer's modules as archs.SwinTarget reads them: `features` is the patch
    embedding then the stages, all channels-last [B,h,w,C] (torchvision's layout too)."""

    def __init__(self, net: SwinTransformer):
        super().__init__()
        self.features = nn.Sequential(NhwcPatchEmbed(net.patch_embed.proj, net.patch_embed.norm),
                                      *net.layers.children())
        self.norm = net.norm
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = net.head.fc


class _VitEncoder(nn.Module):
    def __init__(self, pos_embedding: nn.Parameter, layers: nn.Sequential, ln: nn.Module):
        super().__init__()
        self.pos_embedding = pos_embedding
        self.layers = layers
        self.ln = ln


class _VitParts(nn.Module):
    """timm VisionTransformer's modules as archs.VitTarget's constructor reads a torchvision
    VisionTransformer. VitTarget keeps the parts and drops this container."""

    def __init__(self, net: VisionTransformer):
        super().__init__()
        self.conv_proj = net.patch_embed.proj
        self.class_token = net.cls_token
        # timm's fc_norm (after pooling) is per token, so norm-then-fc_norm on all tokens and then
        # taking the class token is the same as timm's pool-then-fc_norm.
        ln = net.norm if isinstance(net.fc_norm, nn.Identity) else nn.Sequential(net.norm, net.fc_norm)
        self.encoder = _VitEncoder(net.pos_embed, net.blocks, ln)
        self.heads = nn.Sequential(net.head)
        self.patch_size = int(net.patch_embed.patch_size[0])
        self.hidden_dim = int(net.embed_dim)


def _check_vit(net: VisionTransformer) -> None:
    """ValueError naming what makes a timm VisionTransformer something other than the class-token
    ViT that archs.VitTarget computes."""
    name = type(net).__name__
    if getattr(net, "dist_token", None) is not None or hasattr(net, "head_dist"):
        raise ValueError(f"timm's {name} is a distilled DeiT (class and distillation tokens, two heads averaged); "
                         f"tve wraps the non-distilled ones, e.g. deit_small_patch16_224")
    if net.cls_token is None:
        raise ValueError(f"this timm ViT has no class token (global_pool={net.global_pool!r}); tve wraps "
                         f"class-token ViTs (global_pool='token')")
    if net.global_pool != "token" or getattr(net, "attn_pool", None) is not None:
        raise ValueError(f"this timm ViT pools with global_pool={net.global_pool!r}; tve wraps class-token "
                         f"pooling only (global_pool='token')")
    unsupported = [what for what, present in [
        ("register tokens", getattr(net, "num_reg_tokens", 0) > 0),
        ("position embeddings without the class token (no_embed_class)", net.no_embed_class),
        ("a norm before the blocks (pre_norm)", not isinstance(net.norm_pre, nn.Identity)),
        ("a norm in the patch embedding", not isinstance(net.patch_embed.norm, nn.Identity)),
        ("dynamic image size", getattr(net, "dynamic_img_size", False)),
        ("no position embedding", net.pos_embed is None),
    ] if present]
    if unsupported:
        raise ValueError(f"this timm ViT has {', '.join(unsupported)}, which tve's ViT wrapper does not compute")
    ph, pw = net.patch_embed.patch_size
    if ph != pw:
        raise ValueError(f"this timm ViT has non-square patches {ph} x {pw}")


def _classifier(fam: str, net: nn.Module) -> nn.Module:
    return net.head.fc if fam == "swin" else net.fc if fam == "resnet" else net.head


def _check_head(fam: str, net: nn.Module) -> None:
    """ValueError unless the classifier is one nn.Linear after average / class-token pooling."""
    last = _classifier(fam, net)
    if not isinstance(last, nn.Linear):
        what = ("nn.Identity (a model built with num_classes=0 has no classifier)" if isinstance(last, nn.Identity)
                else type(last).__name__)
        raise ValueError(f"the classifier of this timm {type(net).__name__} is a {what}, not one nn.Linear: tve "
                         f"explains a linear head on an encoder (fold extra layers into the encoder's TorchScript "
                         f"and use --torchscript)")
    pool = net.global_pool if fam == "resnet" else net.head.global_pool if fam == "swin" else None
    if pool is not None and getattr(pool, "pool_type", "avg") != "avg":
        raise ValueError(f"this timm {type(net).__name__} pools with {pool.pool_type!r}; tve wraps average pooling")


def family_of_network(net: nn.Module) -> str:
    """'vit', 'resnet' or 'swin' for a timm network of those classes (ValueError otherwise)."""
    for fam, cls in TIMM_CLASS.items():
        if isinstance(net, cls):
            return fam
    raise ValueError(f"{type(net).__name__} is none of timm's classes tve wraps "
                     f"({', '.join(c.__name__ for c in TIMM_CLASS.values())})")


def use_portable_attention(net: nn.Module) -> nn.Module:
    """Clears timm's `fused_attn` flag on every module (in place): attention then runs as matrix
    products instead of aten::scaled_dot_product_attention, which LibTorch 1.13 lacks."""
    for m in net.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return net


def keep_buffers_in_state_dict(net: nn.Module) -> nn.Module:
    """Makes every buffer persistent (in place). timm's Swin registers its relative position index
    and shifted-window mask with persistent=False, but a scripted module's state_dict() has all
    buffers, so target.pt's state dict would not load strictly into the eager wrapper
    (trunks.eager_target does that). The values are fixed by the architecture either way."""
    for m in net.modules():
        m._non_persistent_buffers_set.clear()
    return net


def wrap_network(net: nn.Module) -> nn.Module:
    """A timm ResNet / VisionTransformer / SwinTransformer -> its archs wrapper (VitTarget,
    ResNetTarget or SwinTarget), sharing the network's modules. ValueError, naming the part, for
    variants the wrappers do not compute (distilled DeiT, average-pooled or class-token-less ViTs,
    a classifier that is not one nn.Linear)."""
    fam = family_of_network(net)
    if fam == "vit":
        _check_vit(net)
    _check_head(fam, net)
    use_portable_attention(net)
    keep_buffers_in_state_dict(net)
    if fam == "vit":
        return archs.VitTarget(_VitParts(net))
    if fam == "resnet":
        return archs.ResNetTarget(_ResNetParts(net))
    return archs.SwinTarget(_SwinParts(net))


# ---- building ---------------------------------------------------------------------------------


def timm_family(name: str) -> str:
    """The tvelib family of timm model `name` from the module that registers it (ValueError for an
    unknown name, naming close and supported ones, or a model of another family)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        raise ValueError(f"timm has no model {name!r}" + (f" (close: {', '.join(close)})" if close else "") +
                         f"; tve wraps timm's ViT, DeiT, ResNet and Swin models, e.g. {', '.join(EXAMPLES)}")
    module = timm.models.model_entrypoint(name).__module__
    if module not in FAMILY_OF_TIMM_MODULE:
        raise ValueError(f"timm's {name} is a {module.rsplit('.', 1)[-1]} model; tve wraps timm's ViT, DeiT, "
                         f"ResNet and Swin models, e.g. {', '.join(EXAMPLES)}; others through --wrapper "
                         f"(docs/own-model.md, 'Other architectures: the wrapper route')")
    return FAMILY_OF_TIMM_MODULE[module]


def create_network(name: str, num_classes: int, image_size: Optional[int] = None, **kwargs) -> nn.Module:
    """timm.create_model(name, pretrained=False, num_classes=...), randomly initialised; ViT and
    Swin take img_size (their position embedding / attention windows depend on it), ResNet has none."""
    fam = timm_family(name)
    if image_size is not None and fam in ("vit", "swin"):
        kwargs["img_size"] = image_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _classifier_key(name: str) -> str:
    """State-dict key of the classifier weight, e.g. head.weight (ViT), fc.weight, head.fc.weight."""
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = getattr(cfg, "classifier", None) if cfg is not None else None
    return f"{classifier or 'head'}.weight"


def native_size(fam: str, net: nn.Module) -> int:
    """The input size the network was built for (ViT, Swin) or timm's default for its weights."""
    if fam in ("vit", "swin"):
        return int(net.patch_embed.img_size[0])
    size = (getattr(net, "pretrained_cfg", None) or {}).get("input_size")
    return int(size[-1]) if size else 224


def source_record(name: str, fam: str, net: nn.Module, num_classes: int, image_size: int) -> dict:
    """The provenance.source of a timm target, with what the manifest needs: architecture (vit:
    features are tokens; resnet, swin: a map), grid (ViT: the patch grid; else stride-16 cells),
    and timm's input normalisation and crop for the model's weights (some ViTs use 0.5 / 0.5)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    grid = image_size // int(net.patch_embed.patch_size[0]) if fam == "vit" else image_size // 16
    return {"timm": name, "timm_version": timm.__version__, "num_classes": int(num_classes),
            "image_size": int(image_size), "architecture": fam, "grid": int(grid),
            "mean": [float(v) for v in cfg.get("mean", IMAGENET_MEAN)],
            "std": [float(v) for v in cfg.get("std", IMAGENET_STD)],
            "crop_fraction": float(cfg.get("crop_pct", 0.875))}


def timm_target(name: str, weights: Optional[Path], num_classes: Optional[int], image_size: Optional[int],
                seed: int, load_weights: Callable[[Path], object],
                describe_mismatch: Callable[[nn.Module, dict], str],
                BundleError: Type[Exception]) -> Tuple[nn.Module, nn.Module, dict]:
    """(timm network, its bundle wrapper, source record) for scripts/make_bundle.py --timm NAME.

    weights None: seed-fixed random weights. Otherwise load_weights(path) gives a state dict or a
    pickled nn.Module; a module is used through its state dict, which must fit timm's `name`
    (so that trunks.eager_target can rebuild the network from the record alone). num_classes,
    when not given, is the classifier weight's row count in the file (1000 without a file)."""
    try:
        fam = timm_family(name)
    except ValueError as e:
        raise BundleError(str(e)) from None
    state = None
    if weights is not None:
        loaded = load_weights(weights)
        if isinstance(loaded, nn.Module):
            if not isinstance(loaded, TIMM_CLASS[fam]):
                raise BundleError(f"{weights}: a pickled {type(loaded).__name__}, not timm's {name} "
                                  f"({TIMM_CLASS[fam].__name__})")
            state = loaded.state_dict()
        else:
            state = loaded
    if num_classes is None:
        w = state.get(_classifier_key(name)) if state is not None else None
        num_classes = int(w.shape[0]) if w is not None and w.ndim == 2 else 1000
    torch.manual_seed(seed)
    net = create_network(name, num_classes, image_size)
    at = f" at {image_size} px" if image_size is not None and fam != "resnet" else ""
    if state is not None:
        # Swin checkpoints from before timm made them non-persistent carry the relative position
        # index and window masks; they are fixed by the architecture, the network makes its own.
        derived = {f"{prefix}{'.' if prefix else ''}{b}" for prefix, m in net.named_modules()
                   for b in m._non_persistent_buffers_set}
        state = {k: v for k, v in state.items() if k not in derived}
        problem = describe_mismatch(net, state)
        if problem:
            raise BundleError(f"{weights}: does not fit timm's {name}{at} with {num_classes} classes: {problem}")
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise BundleError(f"{weights}: does not fit timm's {name}{at} with {num_classes} classes: "
                              f"{str(e).strip().splitlines()[0]}") from None
    net.eval()
    try:
        target = wrap_network(net)
    except ValueError as e:
        raise BundleError(f"{weights or name}: {e}") from None
    size = image_size or native_size(fam, net)
    return net, target.eval(), source_record(name, fam, net, num_classes, size)


def eager_timm_target(source: dict, num_classes: int) -> nn.Module:
    """The eager wrapper of a bundle made by timm_target (random weights: the caller loads
    target.pt's state dict into it), rebuilt from its provenance.source record."""
    net = create_network(source["timm"], num_classes, source.get("image_size"))
    return wrap_network(net.eval()).eval()


# ---- portability check ------------------------------------------------------------------------

# Operators current torch may put in a scripted graph that LibTorch 1.13 does not have.
NOT_IN_LIBTORCH_1_13 = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product",
                        "aten::_native_multi_head_attention", "aten::rms_norm", "aten::_safe_softmax")


def unportable_ops(scripted: torch.jit.ScriptModule) -> List[str]:
    """Operators of every method of `scripted` (and its submodules) that LibTorch 1.13 lacks."""
    found = set()

    def walk(module: torch.jit.ScriptModule) -> None:
        for method in module._c._method_names():
            for node in module._c._get_method(method).graph.nodes():
                found.update(_kinds(node))
        for child in module.children():
            walk(child)

    walk(scripted)
    return sorted(k for k in found if k.startswith(NOT_IN_LIBTORCH_1_13))


def _kinds(node) -> List[str]:
    kinds = [node.kind()]
    for block in node.blocks():
        for inner in block.nodes():
            kinds += _kinds(inner)
    return kinds
