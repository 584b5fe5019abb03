"""The wrapper route (docs/own-model.md, "Other architectures: the wrapper route"; issue #27 section
6): a classifier outside the family table, described by a short wrapper file, becomes a bundle that
tve loads, that the classic methods explain and that train_explainer.py trains an explainer for;
wrong wrapper files and models outside the table get one clear line. torchvision's
mobilenet_v2 and mobilenet_v3_small (3.5 and 2.5 M parameters) at 64 px keep it fast; real files and the scripts as users
run them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tvelib import archs, bundle, trunks

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "images"
TVE = os.environ.get("TVE")

WRAPPER = '''"""tve wrapper for torchvision's MobileNetV2."""
import torchvision
from torch import nn

IMAGE_SIZE = 64


def build(num_classes):
    return torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)


def parts(net):
    # MobileNetV2 pools in forward() (adaptive average, flatten); classifier: Dropout, Linear
    return {"stages": list(net.features),
            "pool": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), net.classifier[0]),
            "head": net.classifier[1]}
'''

# MobileNetV3: its last map has 576 channels, its embedding 1024 (a Linear and Hardswish in `pool`)
WRAPPER_V3 = '''import torchvision
from torch import nn

IMAGE_SIZE = 64


def build(num_classes):
    return torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)


def parts(net):
    # classifier: Linear, Hardswish, Dropout, Linear; all but the last Linear belong to the embedding
    return {"stages": list(net.features),
            "pool": nn.Sequential(net.avgpool, nn.Flatten(1), *list(net.classifier)[:-1]),
            "head": net.classifier[-1]}
'''


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)], capture_output=True,
                          text=True)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("make_bundle.py: error: ") and "Traceback" not in done.stderr, \
        done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """(wrapper file, weights file, the eager network) of a 5-class mobilenet_v2."""
    folder = tmp_path_factory.mktemp("mobilenet")
    wrapper = folder / "mobilenet_wrapper.py"
    wrapper.write_text(WRAPPER)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=5).eval()
    weights = folder / "mobilenet.pth"
    torch.save(net.state_dict(), weights)
    return wrapper, weights, net


def test_wrapper_bundle_loads_explains_and_trains(tmp_path, mobilenet):
    wrapper, weights, net = mobilenet
    out = tmp_path / "mobile"
    done = run_script("make_bundle.py", "--wrapper", wrapper, "--weights", weights, "--out", out,
                      *(["--tve", TVE] if TVE else []))
    assert done.returncode == 0, done.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["architecture"] == "mobilenet_wrapper" and m["features_layout"] == "map"
    assert "warning" not in done.stderr, done.stderr
    assert m["input"]["height"] == 64 and m["grid"] == 4 and len(m["target"]["labels"]) == 5
    assert m["provenance"]["source"]["wrapper"] == str(wrapper.resolve())
    b = bundle.Bundle(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(b.target(x), net(x), atol=1e-5)
    # the explainer's side: the eager model rebuilt from provenance.source, its trunk on the grid
    eager = trunks.eager_target(b)
    assert archs.family_of(eager).name == "wrapper"
    trunk, to_map, rest = trunks.encoder_trunk(eager, 4, 64)
    with torch.no_grad():
        assert tuple(to_map(trunk(x)).shape[2:]) == (4, 4)
    if TVE:
        image = FIXTURES / "rgb8.png"
        for method in ("gradcam", "occlusion"):
            run = subprocess.run([TVE, "explain", str(image), "--model", str(out), "--method", method,
                                  "--format", "none", "--threads", "1"], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
            assert json.loads(run.stdout.splitlines()[0])["explained"][0]["values"]
    # train_explainer trains and exports an explainer for it (a few steps: the wiring, not quality)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, name in enumerate(["rgb8.png", "rgb8.jpg", "gray8.png", "palette.png"] * 2):
        shutil.copy(FIXTURES / name, imgs / f"{i:02d}-{name}")
    trained = run_script("train_explainer.py", "--model", out, "--images", imgs, "--steps", "2", "--batch", "2",
                         "--centres", "2", "--width", "16", "--depth", "1", "--holdout", "2",
                         "--scheme", "stream", "--run", tmp_path / "run", "--no-progress",
                         *(["--tve", TVE] if TVE else []))
    assert trained.returncode == 0, trained.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["explainer"]["target_sha256"] == m["target"]["sha256"] and (out / "explainer.pt").is_file()
    if TVE:
        run = subprocess.run([TVE, "explain", str(FIXTURES / "rgb8.png"), "--model", str(out), "--format", "none",
                              "--threads", "1"], capture_output=True, text=True)
        assert run.returncode == 0 and json.loads(run.stdout.splitlines()[0])["method"] == "tve", run.stderr


def test_a_last_map_narrower_than_the_embedding_gives_a_bundle_without_features(tmp_path):
    """MobileNetV3's map (576) is not its embedding's width (1024): no features(), said by a
    warning; occlusion works in tve, gradcam is refused by tve in one line (it reads features());
    the explainer's trunk still comes from the stages."""
    wrapper = tmp_path / "v3.py"
    wrapper.write_text(WRAPPER_V3)
    out = tmp_path / "v3"
    done = run_script("make_bundle.py", "--wrapper", wrapper, "--num-classes", "3", "--out", out,
                      *(["--tve", TVE] if TVE else []))
    assert done.returncode == 0, done.stderr
    assert "gradcam and gradcam++ are unavailable; the other methods and TVE work" in done.stderr, done.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert "features_layout" not in m and m["embedding_dim"] == 1024
    eager = trunks.eager_target(bundle.Bundle(out))
    assert not hasattr(eager, "features")
    trunk, to_map, _ = trunks.encoder_trunk(eager, 4, 64)
    with torch.no_grad():
        assert tuple(to_map(trunk(torch.randn(1, 3, 64, 64))).shape[2:]) == (4, 4)
    if TVE:
        image = str(FIXTURES / "rgb8.png")
        ok = subprocess.run([TVE, "explain", image, "--model", str(out), "--method", "occlusion", "--format", "none"],
                            capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        refused = subprocess.run([TVE, "explain", image, "--model", str(out), "--method", "gradcam", "--format",
                                  "none"], capture_output=True, text=True)
        errors = [line for line in refused.stderr.splitlines() if "error:" in line]
        assert refused.returncode != 0 and len(errors) == 1 and "no features()" in errors[0], refused.stderr


def test_a_changed_wrapper_file_is_named(tmp_path, mobilenet):
    wrapper, weights, _ = mobilenet
    mine = tmp_path / "w.py"
    shutil.copy(wrapper, mine)
    out = tmp_path / "b"
    assert run_script("make_bundle.py", "--wrapper", mine, "--out", out).returncode == 0
    mine.write_text(mine.read_text() + "\n# edited\n")
    with pytest.raises(ValueError, match=rf"{mine}: changed since the bundle was made"):
        trunks.eager_target(bundle.Bundle(out))
    mine.unlink()
    with pytest.raises(ValueError, match=rf"{mine}: the wrapper file this bundle was made with is gone"):
        trunks.eager_target(bundle.Bundle(out))


@pytest.mark.parametrize("case", ["no_parts", "wrong_layer", "head_not_linear", "raises", "weights_misfit",
                                  "missing_file", "not_a_dict"])
def test_wrong_wrapper_files_get_one_line(tmp_path, mobilenet, case):
    wrapper, weights, _ = mobilenet
    path = tmp_path / "w.py"
    text = WRAPPER
    args = ["--weights", weights]
    expect = []
    if case == "no_parts":
        text = text.replace("def parts(", "def parts_of(")
        expect = ["defines no parts()", "'Other architectures: the wrapper route'"]
    elif case == "wrong_layer":  # max instead of average pooling: runs, computes something else
        text = text.replace("nn.AdaptiveAvgPool2d(1)", "nn.AdaptiveMaxPool2d(1)")
        expect = ["is not the network's output"]
    elif case == "head_not_linear":
        text = text.replace('"head": net.classifier[1]', '"head": net.classifier')
        expect = ["not one nn.Linear"]
    elif case == "raises":
        text = "import no_such_module_here\n" + text
        expect = ["running it failed", "ModuleNotFoundError"]
    elif case == "weights_misfit":
        other = tmp_path / "r18.pth"
        torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), other)
        args = ["--weights", other]
        expect = [str(other), "does not fit what", "keys missing"]
    elif case == "missing_file":
        path = tmp_path / "nowhere.py"
        expect = ["no such wrapper file"]
    else:
        text = text.replace('return {"stages"', 'return [{"stages"').replace("net.classifier[1]}", "net.classifier[1]}]")
        expect = ["must return a dict"]
    if case != "missing_file":
        path.write_text(text)
    out = tmp_path / "b"
    line = one_error_line(run_script("make_bundle.py", "--wrapper", path, *args, "--out", out))
    assert not out.exists() and not (tmp_path / "b.partial").exists()
    if case != "weights_misfit":
        assert str(path) in line, line
    for fragment in expect:
        assert fragment in line, (fragment, line)


@pytest.mark.parametrize("args,expect", [
    (["--torchvision", "mobilenet_v2"], "is a MobileNetV2, outside tve's family table"),
    (["--torchvision", "mobilenet_v9"], "no torchvision classifier 'mobilenet_v9'"),
])
def test_models_outside_the_table_point_to_the_wrapper_route(tmp_path, args, expect):
    line = one_error_line(run_script("make_bundle.py", *args, "--out", tmp_path / "b"))
    assert expect in line and "--wrapper" in line and "'Other architectures: the wrapper route'" in line, line


@pytest.mark.skipif(not TVE, reason="set TVE to the built tve binary (ctest does)")
@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "missing.pth", "sub/model.pt"])
def test_tve_model_given_a_model_file_says_to_make_a_bundle(tmp_path, name):
    """`tve explain --model file.pt`: one line (exit 3, a bundle error) saying what --model takes and
    how to make a bundle, whether the file exists or not."""
    path = tmp_path / name
    if not name.startswith("missing"):
        path.parent.mkdir(exist_ok=True)
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    arg = name if "/" not in name else str(path)
    run = subprocess.run([TVE, "explain", str(FIXTURES / "rgb8.png"), "--model", arg, "--format", "none"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 3, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a bundle" in lines[0] and "scripts/make_bundle.py" in lines[0] and \
        "'Scripted models'" in lines[0], run.stderr
