"""scripts/make_bundle.py against hostile and mistaken inputs (issues #27, #28): weights files that
would run code (refused unless --trust-pickle, and proven not to run), files that are not weights,
names of pretrained weights instead of files, duplicate labels, and heads whose maps would all be
zero. Real files written by torch.save / torch.jit.save; the script run as users run it.

Runs under whichever torch runs pytest (Debian's 1.13 in python.pytest; the current-torch venv
also takes it: `/usr/bin/python3 scripts/torch_env.py exec -m pytest tests/python/test_make_bundle_inputs.py`),
so that both torch versions' loaders are held to the same rules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from tvelib.cli_bundle import BundleError, constant_head_warnings, load_weights, read_labels  # noqa: E402
from tvelib import archs  # noqa: E402


def run_make_bundle(*args) -> subprocess.CompletedProcess:
    """make_bundle.py under the same interpreter as the test (so the same torch)."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_bundle.py"), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith("  warnings.warn")]
    assert len(lines) == 1 and lines[0].startswith("make_bundle.py: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class OpensAFile:
    """Pickles as a call to open(path, "w"): unpickling it creates `path`, the observable trace of
    code from the file having run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


# ---- weights files: tensors load; code runs only with --trust-pickle ----------------------------


@pytest.mark.parametrize("kind", ["state_dict", "legacy_format", "checkpoint_with_numbers", "data_parallel",
                                  "safetensors"])
def test_tensor_files_need_no_flag(tmp_path, net, kind):
    path = tmp_path / "w.pth"
    sd = net.state_dict()
    if kind == "state_dict":
        torch.save(sd, path)
    elif kind == "legacy_format":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif kind == "checkpoint_with_numbers":  # floats, ints, strings, lists: plain values, no code
        torch.save({"state_dict": sd, "epoch": 3, "lr": 0.1, "arch": "resnet18", "top1": [71.5, 90.2]}, path)
    elif kind == "data_parallel":
        torch.save(OrderedDict((f"module.{k}", v) for k, v in sd.items()), path)
    else:
        safetensors = pytest.importorskip("safetensors.torch")
        path = tmp_path / "w.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_weights(path)
    assert isinstance(loaded, dict) and set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_a_pickled_model_is_refused_unless_trusted(tmp_path, net):
    path = tmp_path / "whole.pth"
    torch.save(net, path)
    with pytest.raises(BundleError, match=r"whole\.pth: holds Python objects besides tensors \(torchvision"
                                          r"\.models\.resnet\.ResNet.*--trust-pickle"):
        load_weights(path)
    assert isinstance(load_weights(path, trust_pickle=True), torchvision.models.ResNet)


def test_code_in_a_checkpoint_does_not_run_unless_trusted(tmp_path, net):
    trace = tmp_path / "code-ran"
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": net.state_dict(), "hook": OpensAFile(trace)}, path)
    with pytest.raises(BundleError, match=r"holds Python objects besides tensors \(.*open.*--trust-pickle"):
        load_weights(path)
    assert not trace.exists()  # refused before anything from the file ran
    loaded = load_weights(path, trust_pickle=True)  # the user's explicit choice: now it runs
    assert trace.exists() and set(loaded) == set(net.state_dict())


def test_cli_refuses_a_pickled_model_in_one_line_and_names_the_flag(tmp_path, net):
    whole = tmp_path / "whole.pth"
    torch.save(net, whole)
    out = tmp_path / "b"
    done = run_make_bundle("--torchvision", "resnet18", "--weights", whole, "--image-size", "32", "--out", out)
    assert_one_error_line(done, str(whole), "holds Python objects besides tensors", "--trust-pickle",
                          "docs/bundle-format.md, 'Trust model'")
    assert not out.exists() and not (tmp_path / "b.partial").exists()
    done = run_make_bundle("--torchvision", "resnet18", "--weights", whole, "--image-size", "32", "--out", out,
                           "--trust-pickle")
    assert done.returncode == 0, done.stderr
    # said before the full unpickler ran, not afterwards
    assert f"--trust-pickle: loading {whole} with Python's full unpickler" in done.stderr
    assert json.loads((out / "manifest.json").read_text())["architecture"] == "resnet"


@pytest.mark.parametrize("kind", ["junk", "truncated", "empty", "folder", "torchscript", "enum_name", "missing",
                                  "list"])
def test_files_that_are_not_weights_get_one_clear_line(tmp_path, net, kind):
    path = tmp_path / "w.pth"
    expect = ["not a PyTorch weights file"]
    if kind == "junk":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    elif kind == "truncated":
        torch.save(net.state_dict(), path)
        path.write_bytes(path.read_bytes()[:20000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
        expect = ["not a regular file"]
    elif kind == "torchscript":
        torch.jit.script(net).save(str(path))
        expect = ["a TorchScript file", f"--torchscript {path}", "docs/own-model.md, 'Scripted models'"]
    elif kind == "enum_name":
        path = Path("IMAGENET1K_V1")
        expect = ["IMAGENET1K_V1: no such file", "torchvision's pretrained weights",
                  "docs/own-model.md, 'Pretrained weights from torchvision'"]
    elif kind == "missing":
        path = tmp_path / "nothing.pth"
        expect = ["no such file"]
    else:
        torch.save([1, 2, 3], path)
        expect = ["not a state dict"]
    with pytest.raises(BundleError) as e:
        load_weights(path, trust_pickle=True)  # the flag makes no non-weights file loadable
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for fragment in expect:
        assert fragment in message, (fragment, message)


def test_cited_doc_sections_exist():
    """Every 'docs/FILE.md, 'Section'' that make_bundle.py's messages cite is a heading there."""
    import re
    cited = set()
    for script in ("tvelib/cli_bundle.py", "tvelib/wrapper_route.py", "tvelib/timm_archs.py"):
        source = (REPO / "scripts" / script).read_text()
        source = re.sub(r'"\s*\n\s*f?"', "", source)  # implicitly joined string literals, as Python joins them
        cited |= set(re.findall(r"(docs/[\w-]+\.md), '([^']+)'", source))
    assert cited
    for doc, section in cited:
        headings = [line.lstrip("#").strip() for line in (REPO / doc).read_text().splitlines() if line.startswith("#")]
        assert any(h == section or h.startswith(section) for h in headings), (doc, section)


# ---- labels ---------------------------------------------------------------------------------------


def test_duplicate_labels_are_refused_naming_file_label_and_lines(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n cat \nbird\ndog\n")
    with pytest.raises(BundleError, match=rf"^{labels}: label 'cat' is on lines 1, 3 \(and 1 more repeated"):
        read_labels(labels, 5)
    labels.write_text("cat\ndog\ncat\n")
    out = tmp_path / "b"
    done = run_make_bundle("--torchvision", "resnet18", "--num-classes", "3", "--image-size", "32",
                           "--labels", labels, "--out", out)
    assert_one_error_line(done, str(labels), "'cat'", "lines 1, 3")
    assert not out.exists()


# ---- heads whose maps would all be zero -------------------------------------------------------


def test_zero_head_of_a_vit_is_warned_about():
    """torchvision starts a ViT's head at zero: every logit is then the bias, every map zero."""
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)
    target = archs.wrap_network(vit).eval()
    warnings = constant_head_warnings(target.head, "the target head", ["a", "b", "c"], 16, None)
    assert len(warnings) == 1 and "same logits for every image" in warnings[0] and "--weights" in warnings[0]
    torch.nn.init.normal_(vit.heads.head.weight)
    assert constant_head_warnings(target.head, "the target head", ["a", "b", "c"], 16, None) == []
    with torch.no_grad():
        vit.heads.head.weight[1] = 0
    partly = constant_head_warnings(target.head, "the target head", ["a", "b", "c"], 16, None)
    assert len(partly) == 1 and "1 of 3 classes ('b')" in partly[0]


def test_cli_warns_about_a_zero_extra_head_by_name(tmp_path):
    head = tmp_path / "zero.pth"
    linear = torch.nn.Linear(512, 2)
    torch.nn.init.zeros_(linear.weight)
    torch.save(linear.state_dict(), head)
    out = tmp_path / "b"
    done = run_make_bundle("--torchvision", "resnet18", "--num-classes", "3", "--image-size", "32",
                           "--head", f"birds={head}", "--out", out)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warned) == 1 and "head 'birds' gives the same logits for every image" in warned[0], done.stderr
    assert (out / "manifest.json").is_file()  # a warning, not a refusal: the bundle is still usable
