"""Target models and explainers in the shape the bundle format (docs/bundle-format.md) requires.

Each target wraps one of torchvision's own classification networks (VisionTransformer, ResNet,
SwinTransformer: the code behind vit_b_16, resnet50 and swin_t) and exposes the methods the C++ side
calls by name:

    embed(x)             [B,3,H,W] f32 normalised RGB -> [B,D]   encoder output z
    head(z)              [B,D] -> [B,C]                           linear classification head
    forward(x)           head(embed(x))
    features(x)          the last feature map before pooling      for gradient methods
    embed_features(f)    features -> [B,D], so that embed(x) == embed_features(features(x))
    classify(f)          head(embed_features(f)) == forward(x)

features() layout: ResNet and Swin give [B,D,h,w]; ViT gives the token sequence entering its last
encoder block, [B,1+N,D] (token 0 is the class token, tokens 1.. row-major over the patch grid),
because a ViT's logits depend on the patch tokens only through that last block's attention.

All wrappers are TorchScript-scriptable; `torch.jit.script(wrapper)` is what gets exported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer
from torchvision.ops.misc import Conv2dNormActivation

class PortableSelfAttention(nn.Module):
    """nn.MultiheadAttention's self-attention (batch_first, query = key = value, as torchvision's
    EncoderBlock calls it) written out as matrix products, with the same weights.

    PyTorch 2.x scripts MultiheadAttention through aten::scaled_dot_product_attention, an operator
    LibTorch 1.13 (Debian's, which tve builds on) does not know, so a ViT exported by current
    torch would not load; with this module in its blocks it does, and computes the same function
    (docs/own-model.md, "Current PyTorch")."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_bias is not None
                and mha.bias_k is None and not mha.add_zero_attn):
            raise ValueError("PortableSelfAttention covers torchvision's ViT attention only "
                             "(batch_first, packed q/k/v projection with bias)")
        e = mha.embed_dim
        self.num_heads = mha.num_heads
        self.head_dim = e // mha.num_heads
        self.in_proj = nn.Linear(e, 3 * e)
        self.out_proj = nn.Linear(e, e)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            self.in_proj.bias.copy_(mha.in_proj_bias)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        b, n, e = query.shape  # key and value are query (self-attention)
        qkv = self.in_proj(query).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B,heads,N,head_dim]
        attention = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim ** -0.5), dim=-1)
        out = torch.matmul(attention, v).transpose(1, 2).reshape(b, n, e)
        return self.out_proj(out), None


def use_portable_attention(vit: VisionTransformer) -> VisionTransformer:
    """Replaces every encoder block's nn.MultiheadAttention by PortableSelfAttention (in place)."""
    for block in vit.encoder.layers.children():
        if isinstance(block.self_attention, nn.MultiheadAttention):
            block.self_attention = PortableSelfAttention(block.self_attention)
    return vit


class VitTarget(nn.Module):
    """torchvision VisionTransformer; z is the class token after the final LayerNorm.

    The wrapper takes the network's own modules apart (patch embedding, all blocks but the last,
    the last block, the final norm, the head) so that features() and classify() can split the
    encoder before its last block; TorchScript cannot index a ModuleList with a computed index.
    """

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        if not isinstance(vit.heads, nn.Sequential) or len(vit.heads) != 1:
            raise ValueError("VitTarget needs a single linear head (representation_size=None)")
        blocks = list(vit.encoder.layers.children())
        self.patch_size = vit.patch_size
        self.hidden_dim = vit.hidden_dim
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.early_blocks = nn.Sequential(*blocks[:-1])
        self.last_block = blocks[-1]
        self.ln = vit.encoder.ln
        self.heads = vit.heads

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        # [B,3,H,W] -> [B,1+N,D]: the tokens entering the last encoder block
        t = self.conv_proj(x)  # [B,D,h,w]
        t = t.flatten(2).transpose(1, 2)  # [B,N,D] row-major over the patch grid
        t = torch.cat([self.class_token.expand(t.shape[0], -1, -1), t], dim=1)
        return self.early_blocks(t + self.pos_embedding)

    @torch.jit.export
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.ln(self.last_block(features))[:, 0]

    @torch.jit.export
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(x))

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class ResNetTarget(nn.Module):
    """torchvision ResNet; z is the globally average-pooled output of layer4."""

    def __init__(self, net: ResNet):
        super().__init__()
        self.net = net

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))  # [B,D,h,w]

    @torch.jit.export
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(features), 1)

    @torch.jit.export
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(x))

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class SwinTarget(nn.Module):
    """torchvision SwinTransformer; z is the average-pooled output of the final norm."""

    def __init__(self, net: SwinTransformer):
        super().__init__()
        self.net = net

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.norm(self.net.features(x))  # [B,h,w,D] channels-last
        return f.permute(0, 3, 1, 2).contiguous()  # [B,D,h,w]

    @torch.jit.export
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(features), 1)

    @torch.jit.export
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_features(features))

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(x))

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# ---- configurations --------------------------------------------------------------------------
# "tiny" configurations keep the test bundles under 1 MB; "small" ones are what gets trained here;
# "paper" ones are torchvision's vit_b_16, resnet50 and swin_t exactly.

CONFIGS: Dict[str, Dict[str, dict]] = {
    "vit": {
        "tiny": dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
        # 1 CPU thread trains this at ~15-20 img/s; the conv stem (strides 2*2*2 = patch 8) makes
        # it learn shapes from far fewer images than a patchify stem would.
        "small": dict(image_size=112, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=384,
                      conv_stem=[(32, 3, 2), (64, 3, 2), (128, 3, 2)]),
        "paper": dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    },
    "resnet": {
        "tiny": dict(block="basic", layers=[1, 1, 1, 1], width=8),
        "small": dict(block="basic", layers=[1, 1, 1, 1], width=32),
        "paper": dict(block="bottleneck", layers=[3, 4, 6, 3], width=64),
    },
    "swin": {
        "tiny": dict(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4]),
        # Patch 8 behind a convolutional stem, like the small ViT: the first stage already sits on the
        # 14 x 14 attribution grid (windows of 7: 2 x 2 of them), 4x cheaper than patch 4 at 28 x 28.
        "small": dict(patch_size=[8, 8], embed_dim=64, depths=[2, 4], num_heads=[2, 4], window_size=[7, 7],
                      conv_stem=[(24, 3, 2), (48, 3, 2), (64, 3, 2)]),
        "paper": dict(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=[7, 7]),
    },
}


class _NarrowResNet(ResNet):
    """torchvision's ResNet with its stage widths scaled by width/64 (64 reproduces resnet50 etc.)."""

    def __init__(self, block, layers: List[int], num_classes: int, width: int):
        super().__init__(block, layers, num_classes=num_classes)
        if width == 64:
            return
        # Rebuild the stem and stages at the requested width, reusing torchvision's _make_layer.
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)


def conv_stem(layers: List[Tuple[int, int, int]], out_channels: int, patch_size: int) -> nn.Sequential:
    """Conv + BatchNorm + ReLU per (channels, kernel, stride), then a 1x1 conv to out_channels: the
    layout torchvision's VisionTransformer builds from conv_stem_configs, for Swin's patch embedding."""
    if math.prod(s for _, _, s in layers) != patch_size:
        raise ValueError(f"conv stem strides {[s for _, _, s in layers]} do not multiply to patch {patch_size}")
    channels = [3] + [c for c, _, _ in layers]
    convs = [Conv2dNormActivation(channels[i], c, kernel_size=k, stride=s) for i, (c, k, s) in enumerate(layers)]
    return nn.Sequential(*convs, nn.Conv2d(channels[-1], out_channels, kernel_size=1))


def _build_vit(cfg: dict, stem, num_classes: int, image_size: int | None) -> nn.Module:
    if image_size is not None:
        cfg["image_size"] = image_size
    if stem is not None:  # torchvision builds it from conv_stem_configs
        cfg["conv_stem_configs"] = [ConvStemConfig(out_channels=c, kernel_size=k, stride=s) for c, k, s in stem]
    return VitTarget(VisionTransformer(num_classes=num_classes, **cfg))


def _build_resnet(cfg: dict, stem, num_classes: int, image_size: int | None) -> nn.Module:
    block = BasicBlock if cfg["block"] == "basic" else Bottleneck
    return ResNetTarget(_NarrowResNet(block, cfg["layers"], num_classes, cfg["width"]))


def _build_swin(cfg: dict, stem, num_classes: int, image_size: int | None) -> nn.Module:
    net = SwinTransformer(num_classes=num_classes, stochastic_depth_prob=0.0, **cfg)
    if stem is not None:  # replaces the patchify conv of the patch embedding
        net.features[0][0] = conv_stem(stem, cfg["embed_dim"], cfg["patch_size"][0])
    return SwinTarget(net)


@dataclass(frozen=True)
class Family:
    """Everything tvelib knows about one model family, looked up by name (a manifest's
    "architecture") with family(), or by target wrapper with family_of(). Adding a family is one
    record in FAMILIES (with its wrapper and CONFIGS entry) and its tests; nothing else branches on
    the family."""
    name: str
    wrapper: type  # the bundle-shaped target wrapper (embed, head, features, classify)
    features_layout: str  # what features() returns: "tokens" [B,1+N,D] or "map" [B,D,h,w]
    build: Callable[..., nn.Module]  # (config, conv stem or None, num_classes, image_size) -> wrapper
    embedding_dim: Callable[[nn.Module], int]
    # For "map" families: the network as its sequence of stages (the explainer's trunk is a prefix
    # of it), whether they run channels-last, and the norm after the last stage, if any.
    stages: Optional[Callable[[nn.Module], List[nn.Module]]] = None
    channels_last: bool = False
    final_norm: Optional[Callable[[nn.Module], nn.Module]] = None
    # torchvision's paper-scale model: constructor and weights enum (build_models.py's paper export)
    paper: Tuple[str, str, str] = ("", "", "")
    network: type = nn.Module  # torchvision's class the wrapper takes (make_bundle.py checks it)
    # Attribution grid for a network at input size s: its stride-16 stage (ResNet, Swin) or its
    # patch grid (ViT); radius 2 as the shipped models.
    default_grid: Callable[[nn.Module, int], int] = lambda net, size: size // 16
    # For "map" families whose embedding is not the plain average of the last map: the module that
    # turns the last stage's output into z (the wrapper route's `pool`); None: average pooling.
    embed_tail: Optional[Callable[[nn.Module], nn.Module]] = None


FAMILIES: Dict[str, Family] = {  # in this order the test bundles are made (their seeds follow it)
    "vit": Family("vit", VitTarget, "tokens", _build_vit, lambda t: t.hidden_dim,
                  paper=("vit_b_16", "ViT_B_16_Weights", "IMAGENET1K_V1"), network=VisionTransformer,
                  default_grid=lambda net, size: size // net.patch_size),
    "resnet": Family("resnet", ResNetTarget, "map", _build_resnet, lambda t: t.net.fc.in_features,
                     stages=lambda t: [t.net.conv1, t.net.bn1, t.net.relu, t.net.maxpool,
                                       t.net.layer1, t.net.layer2, t.net.layer3, t.net.layer4],
                     paper=("resnet50", "ResNet50_Weights", "IMAGENET1K_V2"), network=ResNet),
    "swin": Family("swin", SwinTarget, "map", _build_swin, lambda t: t.net.head.in_features,
                   stages=lambda t: list(t.net.features.children()), channels_last=True,
                   final_norm=lambda t: t.net.norm, paper=("swin_t", "Swin_T_Weights", "IMAGENET1K_V1"),
                   network=SwinTransformer),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown architecture {name!r}; expected one of {list(FAMILIES)}")
    return FAMILIES[name]


def family_of_network(net: nn.Module) -> Family:
    """The family whose torchvision class `net` is (ValueError naming the class otherwise)."""
    for fam in FAMILIES.values():
        if isinstance(net, fam.network):
            return fam
    raise ValueError(f"{type(net).__name__} is none of the families tve wraps "
                     f"({', '.join(f.network.__name__ for f in FAMILIES.values())})")


def torchvision_network(name: str, num_classes: int, image_size: Optional[int] = None) -> nn.Module:
    """torchvision.models.<name>(weights=None, num_classes=...), randomly initialised; ViTs take
    image_size (their position embedding depends on it)."""
    import torchvision.models as tvm
    known = tvm.list_models(module=tvm)
    if name not in known:
        wrapped = sorted(n for n in known if isinstance(getattr(tvm, n), Callable) and
                         n.startswith(("resnet", "resnext", "wide_resnet", "vit_", "swin_")))
        raise ValueError(f"no torchvision classifier {name!r}; ResNet, ViT and Swin ones are: {', '.join(wrapped)}")
    kwargs = {"weights": None, "num_classes": num_classes}
    if image_size is not None and name.startswith("vit"):
        kwargs["image_size"] = image_size
    return tvm.get_model(name, **kwargs)


def wrap_network(net: nn.Module) -> nn.Module:
    """A torchvision ResNet / VisionTransformer / SwinTransformer -> its bundle-shaped target.
    A ViT gets PortableSelfAttention so that its TorchScript loads in LibTorch 1.13 whatever torch
    exports it."""
    fam = family_of_network(net)
    if fam.name == "vit":
        use_portable_attention(net)
    return fam.wrapper(net)


def family_of(target: nn.Module) -> Family:
    own = getattr(type(target), "FAMILY", None)  # a wrapper-route target (tvelib.wrapper_route) carries its own
    if isinstance(own, Family):
        return own
    for fam in FAMILIES.values():
        if isinstance(target, fam.wrapper):
            return fam
    raise TypeError(f"unknown target wrapper {type(target).__name__}")


def embedding_dim(target: nn.Module) -> int:
    return family_of(target).embedding_dim(target)


def build_target(arch: str, size: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """A randomly initialised target wrapper. image_size overrides the config's input size (ViT)."""
    fam = family(arch)
    cfg = dict(CONFIGS[arch][size])
    # Optional convolutional stem (Xiao et al. 2021): strided 3x3 convs instead of one patchify
    # conv; their strides multiply to patch_size, so the token grid is unchanged. It makes small
    # transformers far more data-efficient to train.
    stem = cfg.pop("conv_stem", None)
    return fam.build(cfg, stem, num_classes, image_size)


# ---- explainers ------------------------------------------------------------------------------


class PatchExplainer(nn.Module):
    """An explainer g(x) -> (psi_pos, psi_neg), each [B, G*G, D], row-major, row 0 at the top.

    A torchvision VisionTransformer whose patch grid is the attribution grid (patch = image / G);
    every patch token goes through one linear layer that emits both meta-attributions in the target
    encoder's embedding space. Any architecture could serve; a ViT's tokens are already per patch.
    """

    def __init__(self, backbone: VisionTransformer, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.to_psi = nn.Linear(backbone.hidden_dim, 2 * embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        t = self.backbone._process_input(x)  # [B,G*G,W] row-major
        t = torch.cat([self.backbone.class_token.expand(n, -1, -1), t], dim=1)
        t = self.backbone.encoder(t)[:, 1:]
        psi = self.to_psi(t)  # [B,G*G,2D]
        return psi[..., : self.embedding_dim], psi[..., self.embedding_dim :]


def build_explainer(image_size: int, grid: int, embedding_dim: int, num_layers: int = 2,
                    hidden_dim: int = 32, num_heads: int = 2) -> PatchExplainer:
    if image_size % grid != 0:
        raise ValueError(f"image size {image_size} is not a multiple of the grid {grid}")
    backbone = VisionTransformer(image_size=image_size, patch_size=image_size // grid,
                                 num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                                 mlp_dim=2 * hidden_dim, num_classes=1)
    return PatchExplainer(backbone, embedding_dim)
