"""Own models (docs/own-model.md): scripts/make_bundle.py's bundles and errors, tvelib.folder's
reading of a user's image folder, and scripts/train_explainer.py --images end to end on a small
bundle. Real files throughout: weights saved with torch.save, PNG/JPEG fixtures, the scripts run as
users run them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tvelib import archs, bundle, folder, trunks

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "images"
PY = "/usr/bin/python3"


def run_script(script: str, *args, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TVE_CACHE": os.environ.get("TVE_CACHE", str(Path.home() / ".cache" / "tve"))}
    done = subprocess.run([PY, str(REPO / "scripts" / script), *map(str, args)], capture_output=True, text=True,
                          env=env)
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> Path:
    """A torchvision resnet18 with 3 classes and seed-fixed random weights, as a user's .pth."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    return path


def test_make_bundle_from_torchvision_weights(tmp_path, resnet18_weights):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    head = tmp_path / "extra.pth"
    torch.manual_seed(1)
    torch.save(torch.nn.Linear(512, 2).state_dict(), head)
    out = tmp_path / "mine"
    run_script("make_bundle.py", "--torchvision", "resnet18", "--weights", resnet18_weights, "--labels", labels,
               "--head", f"extra={head}", "--image-size", "64", "--out", out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["architecture"] == "resnet" and m["target"]["labels"] == ["cat", "dog", "bird"]
    assert m["input"]["resize"] == "center_crop" and m["grid"] == 4 and m["embedding_dim"] == 512
    assert m["provenance"]["source"]["torchvision"] == "resnet18"
    assert not (tmp_path / "mine.partial").exists()
    b = bundle.Bundle(out)
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(torch.load(resnet18_weights))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(b.target(x), net.eval()(x), atol=1e-5)
        assert torch.allclose(b.heads["extra"](b.target.embed(x)).shape[1:].numel() * torch.ones(1), torch.ones(1) * 2)
    # the training side rebuilds the eager model from the manifest's source
    eager = trunks.eager_target(b)
    with torch.no_grad():
        assert torch.allclose(eager.embed(x), b.target.embed(x), atol=1e-5)


@pytest.mark.parametrize("name,size", [("vit_b_32", 128), ("swin_v2_t", 64)])
def test_make_bundle_transformers_random_weights(tmp_path, name, size):
    """ViT (portable attention) and Swin V2 bundles, checked by loading back (make_bundle compares
    the scripted target with the eager network); random weights need no file."""
    out = tmp_path / name
    done = run_script("make_bundle.py", "--torchvision", name, "--image-size", str(size), "--num-classes", "5",
                      "--out", out)
    assert "next:" in done.stdout and "train_explainer.py" in done.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["grid"] == (size // 32 if name == "vit_b_32" else size // 16)
    assert len(m["target"]["labels"]) == 5
    target = torch.jit.load(str(out / "target.pt"))
    assert "scaled_dot_product_attention" not in str(target.inlined_graph)


@pytest.mark.parametrize("case", ["wrong_arch", "wrong_labels", "corrupt", "not_a_state_dict", "head_dim",
                                  "not_linear", "unknown_name", "exists", "tiny_std", "tiny_crop"])
def test_make_bundle_errors_name_file_and_mismatch(tmp_path, resnet18_weights, case):
    out = tmp_path / "out"
    args = ["--torchvision", "resnet18", "--weights", resnet18_weights, "--out", out]
    expect = []
    if case == "wrong_arch":
        args[1] = "resnet34"
        expect = [str(resnet18_weights), "resnet34", "keys missing"]
    elif case == "wrong_labels":
        labels = tmp_path / "four.txt"
        labels.write_text("a\nb\nc\nd\n")
        args += ["--labels", labels]
        expect = [str(labels), "4 labels", "3 classes"]
    elif case == "corrupt":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(resnet18_weights.read_bytes()[:5000])
        args[3] = bad
        expect = [str(bad), "not a PyTorch weights file"]
    elif case == "not_a_state_dict":
        bad = tmp_path / "list.pth"
        torch.save([1, 2, 3], bad)
        args[3] = bad
        expect = [str(bad), "not a state dict"]
    elif case == "head_dim":
        head = tmp_path / "h.pth"
        torch.save(torch.nn.Linear(100, 2).state_dict(), head)
        args += ["--head", f"h={head}"]
        expect = [str(head), "takes 100 features", "gives 512"]
    elif case == "not_linear":
        net = torchvision.models.resnet18(num_classes=3)
        net.fc = torch.nn.Sequential(torch.nn.Linear(512, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
        pickled = tmp_path / "whole.pth"
        torch.save(net, pickled)
        args[3:4] = [pickled, "--trust-pickle"]  # a whole pickled model runs code: the user's choice
        expect = [str(pickled), "Sequential", "not one nn.Linear"]
    elif case == "unknown_name":
        args[1] = "resnet19"
        expect = ["resnet19", "resnet50"]
    elif case == "exists":
        out.mkdir()
        expect = [str(out), "exists"]
    elif case == "tiny_std":  # outside what tve's manifest check accepts: refused here, not after the work
        args += ["--std", "1e-45,0.2,0.2"]
        expect = ["--std", "[0.001, 100]"]
    elif case == "tiny_crop":
        args += ["--crop-fraction", "1e-6"]
        expect = ["--crop-fraction", "[0.1, 1]"]
    done = run_script("make_bundle.py", *args, ok=False)
    assert done.returncode == 2, done.stderr
    for fragment in expect:
        assert fragment in done.stderr, (fragment, done.stderr)
    assert "Traceback" not in done.stderr
    assert case == "exists" or not out.exists()  # nothing half-written


def test_make_bundle_from_torchscript(tmp_path):
    """--torchscript takes a scripted model with the bundle's methods as it is; one without them is
    refused naming the missing methods."""
    torch.manual_seed(0)
    target = archs.wrap_network(torchvision.models.resnet18(num_classes=4)).eval()
    scripted = tmp_path / "model.pt"
    torch.jit.script(target).save(str(scripted))
    out = tmp_path / "b"
    run_script("make_bundle.py", "--torchscript", scripted, "--image-size", "64", "--architecture", "myresnet",
               "--out", out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["architecture"] == "myresnet" and m["features_layout"] == "map" and len(m["target"]["labels"]) == 4
    plain = tmp_path / "plain.pt"
    torch.jit.script(torchvision.models.resnet18(num_classes=4).eval()).save(str(plain))
    done = run_script("make_bundle.py", "--torchscript", plain, "--out", tmp_path / "c", ok=False)
    assert done.returncode == 2 and str(plain) in done.stderr and "embed, head" in done.stderr


# ---- tvelib.folder ------------------------------------------------------------------------------


def test_folder_reads_every_format_like_tve(tmp_path):
    spec = folder.InputSpec(32, 32)
    for name in ("rgb8.png", "gray8.png", "gray16.png", "rgb16.png", "rgba.png", "gray_alpha.png", "palette.png",
                 "rgb8.jpg", "rgb8.webp", "rgb8.tiff", "rgb8.bmp", "odd name ü.png"):
        x = folder.load_rgb01(FIXTURES / name, spec)
        assert x.shape == (3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1, name
    # 16-bit scaled by 65535: same picture as its 8-bit twin within rounding
    a = folder.load_rgb01(FIXTURES / "gray16.png", spec)
    b = folder.load_rgb01(FIXTURES / "gray8.png", spec)
    assert float((a - b).abs().mean()) < 0.02
    # a fully transparent image is the normalisation mean (baseline 0 after normalising)
    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(clear)
    z = folder.normalise(folder.load_rgb01(clear, spec).unsqueeze(0), spec)
    assert float(z.abs().max()) < 1e-5


def test_folder_skips_bad_files_and_splits_by_listing(tmp_path):
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        shutil.copy(FIXTURES / "rgb8.png", src / ("sub" if i % 2 else "") / f"img{i:02d}.png")
    for bad in ("corrupt.png", "empty.png", "truncated.jpg", "not_an_image.jpg"):
        shutil.copy(FIXTURES / bad, src / bad)
    shutil.copy(FIXTURES / "rgb8.png", src / "x.mask.png")  # a mask, not an image
    (src / "notes.txt").write_text("not an image")
    spec = folder.InputSpec(32, 32)
    f = folder.ImageFolder(src, spec, holdout=3)
    assert len(f.files) == 16 and len(f.held_out) == 3
    x = f.batch(0, 0, 8)
    y = f.batch(0, 0, 8)
    assert x.shape == (8, 3, 32, 32) and torch.equal(x, y)
    for step in range(6):  # goes round the folder: every bad file met and recorded
        f.batch(0, step, 8)
    assert {p.name for p in f.bad} == {"corrupt.png", "empty.png", "truncated.jpg", "not_an_image.jpg"} - \
        {p.name for p in f.held_out}
    # the split is a function of the listing alone: the same files give the same held-out set
    g = folder.ImageFolder(src, spec, holdout=3)
    assert g.held_out == f.held_out and g.train == f.train
    assert not set(g.held_out) & set(g.train)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        folder.ImageFolder(tmp_path / "missing", folder.InputSpec(32, 32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder.ImageFolder(tmp_path / "empty", folder.InputSpec(32, 32))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(5):
        shutil.copy(FIXTURES / "corrupt.png", bad / f"c{i}.png")
    f = folder.ImageFolder(bad, folder.InputSpec(32, 32), holdout=0)
    with pytest.raises(ValueError, match="fewer than 2 training images decode"):
        f.batch(0, 0, 2)


def test_center_crop_keeps_the_middle(tmp_path):
    """A wide image with a red centre and blue sides: center_crop sees red only, stretch both."""
    a = np.zeros((40, 120, 3), np.uint8)
    a[:, :] = (0, 0, 255)
    a[:, 40:80] = (255, 0, 0)
    p = tmp_path / "wide.png"
    Image.fromarray(a).save(p)
    crop = folder.load_rgb01(p, folder.InputSpec(16, 16, resize="center_crop", crop_fraction=1.0))
    stretch = folder.load_rgb01(p, folder.InputSpec(16, 16))
    assert float(crop[0].mean()) > 0.95 and float(crop[2].mean()) < 0.05
    assert float(stretch[2].mean()) > 0.5


# ---- train_explainer.py --images ------------------------------------------------------------------


def test_train_on_a_folder_resumes_and_reports(tmp_path, bare_bundle):
    """The tiny ResNet bundle, a folder of fixture images (one corrupt): train 3 steps, kill-free
    resume to 5, export with the held-out report in the manifest's provenance."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, name in enumerate(["rgb8.png", "rgb8.jpg", "gray8.png", "rgba.png", "palette.png", "rgb8.webp"] * 3):
        shutil.copy(FIXTURES / name, imgs / f"{i:02d}-{name}")
    shutil.copy(FIXTURES / "truncated.png", imgs / "zz-truncated.png")
    b = bare_bundle
    common = ["--model", b, "--images", imgs, "--batch", "2", "--centres", "2", "--width", "16", "--depth", "1",
              "--holdout", "3", "--run", tmp_path / "run", "--no-progress", "--bank-images", "6"]
    first = run_script("train_explainer.py", *common, "--steps", "5", "--max-steps", "3")
    assert "step 3/5" in first.stdout and "not finished" in first.stdout
    assert not (b / "explainer.pt").exists()
    second = run_script("train_explainer.py", *common, "--steps", "5")
    assert "resumed at step 3/5" in second.stdout
    m = json.loads((b / "manifest.json").read_text())
    prov = m["provenance"]["explainer"]
    assert prov["steps_done"] == 5 and prov["data"]["files"] == 19 and prov["data"]["held_out"] == 3
    fid = prov["fidelity"]
    assert fid["held_out_images"] == 3 and -1 <= fid["lneg1_raw"]["spearman"] <= 1
    assert "bad_files" in prov["data"]
    assert m["explainer"]["target_sha256"] == m["target"]["sha256"]
    # another folder listing refuses the checkpoint instead of mixing runs
    shutil.copy(FIXTURES / "rgb8.png", imgs / "new.png")
    third = run_script("train_explainer.py", *common, "--steps", "5", ok=False)
    assert third.returncode != 0 and "start over" in third.stderr


def test_time_budget_and_bad_arguments(tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(REPO / "models" / "tiny-resnet", b)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(10):
        shutil.copy(FIXTURES / "rgb8.png", imgs / f"{i}.png")
    common = ["--model", b, "--images", imgs, "--batch", "2", "--centres", "2", "--width", "16", "--depth", "1",
              "--run", tmp_path / "run", "--no-progress", "--holdout", "2", "--no-export"]
    done = run_script("train_explainer.py", *common, "--time-budget", "30s", "--max-steps", "2")
    assert "time budget 30s" in done.stdout and "plan:" in done.stdout and "fitting steps" in done.stdout
    again = run_script("train_explainer.py", *common, "--time-budget", "30s")  # resumes: same plan
    assert "resumed at step 2/" in again.stdout and "resuming the planned run" in again.stdout
    bad = run_script("train_explainer.py", *common, "--time-budget", "soon", ok=False)
    assert bad.returncode == 2 and "'soon'" in bad.stderr
    both = run_script("train_explainer.py", *common, "--time-budget", "1m", "--steps", "3", ok=False)
    assert both.returncode == 2 and "not both" in both.stderr
    missing = run_script("train_explainer.py", "--model", b, "--images", tmp_path / "nope", ok=False)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    cuda = run_script("train_explainer.py", *common, "--device", "cuda", ok=False)
    assert cuda.returncode == 2 and "no CUDA device" in cuda.stderr
