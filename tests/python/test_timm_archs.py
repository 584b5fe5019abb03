"""timm's ViT/DeiT, ResNet and Swin as bundle targets (tvelib.timm_archs): the wrappers compute
timm's own logits, their methods agree with each other, they script without operators LibTorch
1.13 lacks, the explainer's trunk splits them, and scripts/make_bundle.py's --timm path reports
bad input by file and cause. Skipped where timm is not installed (Debian's python3 has none)."""
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from tvelib import cli_bundle as make_bundle  # noqa: E402  (scripts/ is on sys.path: conftest.py)
from tvelib.cli_bundle import BundleError, describe_mismatch, load_weights  # noqa: E402
from tvelib import archs, timm_archs, trunks  # noqa: E402

# Small configurations of real timm models (their own constructors, fewer/narrower blocks) so the
# file runs in seconds on one thread: (timm name, create_model kwargs, input size, grid, family)
SMALL = {
    "vit": ("deit_tiny_patch16_224", dict(img_size=64, depth=3), 64, 4),
    "resnet": ("resnet18", {}, 64, 4),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=112, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)), 112, 7),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(family, num_classes=5):
    name, kwargs, size, grid = SMALL[family]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs).eval(), size, grid


def timm_target(name, weights=None, num_classes=None, image_size=None, seed=0, loader=load_weights):
    return timm_archs.timm_target(name, weights, num_classes, image_size, seed, loader, describe_mismatch,
                                  BundleError)


def unpickle(path):
    """A whole pickled model (torch >= 2.6 loads only tensors by default, so make_bundle's
    load_weights refuses one there; timm_archs gets whatever the loader returns)."""
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("family", list(SMALL))
def test_wrapper_computes_timms_logits_and_scripts(family):
    net, size, grid = small(family)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = net(x)
    target = timm_archs.wrap_network(net).eval()
    fam = archs.family_of(target)  # an ordinary archs wrapper of the same family
    assert fam.name == family
    with torch.no_grad():
        z, f = target.embed(x), target.features(x)
        assert torch.allclose(target(x), want, rtol=1e-4, atol=1e-5)
        assert torch.allclose(target.head(z), want, rtol=1e-4, atol=1e-5)
        assert torch.allclose(target.embed_features(f), z, rtol=1e-4, atol=1e-5)
        assert torch.allclose(target.classify(f), want, rtol=1e-4, atol=1e-5)
    assert z.shape == (2, fam.embedding_dim(target))
    if fam.features_layout == "tokens":  # class token first, then the patch grid row-major
        assert f.shape == (2, 1 + grid * grid, z.shape[1])
    else:
        assert f.dim() == 4 and f.shape[:2] == (2, z.shape[1])
    scripted = torch.jit.script(target)
    assert timm_archs.unportable_ops(scripted) == []
    # the eager wrapper takes target.pt's state dict strictly (trunks.eager_target), buffers included
    assert list(scripted.state_dict()) == list(target.state_dict())
    with torch.no_grad():
        assert torch.allclose(scripted(x), want, rtol=1e-4, atol=1e-5)
        assert torch.allclose(scripted.classify(scripted.features(x)), want, rtol=1e-4, atol=1e-5)
        assert torch.allclose(scripted.embed(x), z, rtol=1e-4, atol=1e-5)
    # The explainer's trunk: stages up to the grid, and the rest giving E(x) back.
    trunk, to_map, rest = trunks.encoder_trunk(target, grid, size)
    with torch.no_grad():
        t = trunk.eval()(x)
        assert to_map(t).shape == (2, trunk.out_channels, grid, grid)
        assert torch.allclose(rest.eval()(t), z, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not hasattr(torch.nn.functional, "scaled_dot_product_attention"),
                    reason="this torch has no fused attention to avoid")
def test_fused_attention_is_switched_off():
    net, _, _ = small("vit")
    for m in net.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    # what would break LibTorch 1.13: the check sees it ...
    fused = archs.VitTarget(timm_archs._VitParts(net))
    assert "aten::scaled_dot_product_attention" in timm_archs.unportable_ops(torch.jit.script(fused))
    # ... and wrap_network turns it off
    assert timm_archs.unportable_ops(torch.jit.script(timm_archs.wrap_network(net))) == []


def test_timm_target_random_weights_and_source_record():
    net, target, source = timm_target("vit_tiny_patch16_224", image_size=32)
    assert source == dict(source, timm="vit_tiny_patch16_224", num_classes=1000, image_size=32,
                          architecture="vit", grid=2, mean=[0.5] * 3, std=[0.5] * 3)
    again = timm_target("vit_tiny_patch16_224", image_size=32)[1]  # seed-fixed
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), again(x))
        assert torch.allclose(target(x), net(x), rtol=1e-4, atol=1e-5)
    _, _, source = timm_target("resnet18", num_classes=3)
    assert (source["architecture"], source["image_size"], source["grid"], source["num_classes"]) == \
           ("resnet", 224, 14, 3)
    assert source["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_weights_give_classes_and_rebuild_eagerly(tmp_path):
    torch.manual_seed(1)
    own = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / "r18.pth"
    torch.save({"model": own.state_dict()}, path)
    net, target, source = timm_target("resnet18", weights=path)
    assert source["num_classes"] == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(target(x), own(x), rtol=1e-4, atol=1e-5)
    # what trunks.eager_target does with a bundle's target.pt: the scripted state dict loads strictly
    eager = timm_archs.eager_timm_target(source, 7)
    eager.load_state_dict(torch.jit.script(target).state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(eager.embed(x), target.embed(x))
    torch.save(own, tmp_path / "whole.pth")  # a pickled model is used through its state dict
    assert timm_target("resnet18", weights=tmp_path / "whole.pth", loader=unpickle)[2]["num_classes"] == 7


def test_mismatched_weights_name_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18", num_classes=4).state_dict(), path)
    with pytest.raises(BundleError, match=rf"{path}: does not fit timm's resnet34 with 4 classes: .*missing"):
        timm_target("resnet34", weights=path)
    with pytest.raises(BundleError, match=rf"{path}: a pickled ResNet, not timm's deit_tiny"):
        torch.save(timm.create_model("resnet18", num_classes=4), path)
        timm_target("deit_tiny_patch16_224", weights=path, loader=unpickle)


def test_unknown_and_unsupported_names():
    with pytest.raises(BundleError, match=r"no model 'resnet_18'.*close: .*resnet18.*e\.g\. vit_tiny_patch16_224"):
        timm_target("resnet_18")
    with pytest.raises(BundleError, match="convnext_tiny is a convnext model; tve wraps"):
        timm_target("convnext_tiny")


@pytest.mark.parametrize("name, kwargs, what", [
    ("deit_tiny_distilled_patch16_224", {}, "distilled DeiT"),
    ("vit_tiny_patch16_224", dict(global_pool="avg"), "global_pool='avg'"),
    ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg"), "no class token"),
    ("vit_tiny_patch16_224", dict(num_classes=0), r"nn\.Identity .*num_classes=0"),
])
def test_variants_the_wrapper_does_not_compute_are_refused(name, kwargs, what):
    net = timm.create_model(name, img_size=32, depth=1, **kwargs)
    with pytest.raises(ValueError, match=what):
        timm_archs.wrap_network(net)


def test_non_linear_classifier_is_refused():
    net, _, _ = small("resnet")
    net.fc = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 5))  # a "pre-logits" MLP head
    with pytest.raises(ValueError, match="classifier of this timm ResNet is a Sequential, not one nn.Linear"):
        timm_archs.wrap_network(net)


DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(not torch.__version__.startswith("2.") or not DEBIAN_PYTHON.is_file(),
                    reason="checks a current-torch export against Debian's torch 1.13")
def test_current_torch_export_loads_in_torch_1_13(tmp_path):
    probe = subprocess.run([str(DEBIAN_PYTHON), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.startswith("1.13"):
        pytest.skip("no torch 1.13 under /usr/bin/python3")
    net, size, _ = small("swin")  # attention with windows, shifts and relative position bias
    target = timm_archs.wrap_network(net).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = target(x)
    torch.jit.script(target).save(str(tmp_path / "t.pt"))
    torch.save(x, tmp_path / "x.pt")
    code = ("import torch, sys; m = torch.jit.load(sys.argv[1]).eval(); x = torch.load(sys.argv[2]);\n"
            "torch.save(m(x), sys.argv[3])")
    done = subprocess.run([str(DEBIAN_PYTHON), "-c", code, str(tmp_path / "t.pt"), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), want, rtol=1e-4, atol=1e-5)
