"""scripts/maintainer/build_models.py --smoke runs every stage and produces bundles that load."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tvelib import bundle

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "maintainer"


def test_smoke_build_produces_loadable_bundles():
    out = subprocess.run([sys.executable, str(SCRIPTS / "build_models.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = re.search(r"smoke build OK: bundles in (\S+)", out.stdout)
    assert m, out.stdout[-2000:]
    models = Path(m.group(1))
    try:
        for arch in ("vit", "resnet", "swin"):
            b = bundle.Bundle(models / arch)
            assert b.manifest["architecture"] == arch and b.manifest["grid"] == 14
            assert b.input_size == 112
            assert set(b.heads) == {"fashion", "mnist", "novel"}
            x = b.normalise(torch.rand(1, 3, 112, 112))
            with torch.no_grad():
                z = b.target.embed(x)
                assert b.heads["mnist"](z).shape == (1, 10)
            assert "emoji_heldout_top1" in b.manifest["provenance"]["metrics"]
        # ViT and Swin are distilled from a teacher-only ResNet built on demand into the work
        # folder (never next to the shipped bundles), and say so
        assert not (models / "resnet-colour").exists()
        teacher = bundle.Bundle(models.parent / "runs" / "teachers" / "resnet-colour")
        assert teacher.manifest["architecture"] == "resnet"
        assert teacher.manifest["provenance"]["pretrain"]["line_art"] == 0.0
        assert bundle.Bundle(models / "resnet").manifest["provenance"]["pretrain"]["line_art"] > 0
        for student in ("vit", "swin"):
            pretrain = bundle.Bundle(models / student).manifest["provenance"]["pretrain"]
            assert pretrain["distill_from"] == "resnet-colour"
            assert pretrain["teacher_target_sha256"] == teacher.manifest["target"]["sha256"]
    finally:
        shutil.rmtree(models.parent, ignore_errors=True)


def test_experiment_overrides_reach_the_bundle(tmp_path):
    # --set classes=260 on the smoke ResNet: 260 labels, the first 200 the shipped model's classes
    out = subprocess.run([sys.executable, str(SCRIPTS / "build_models.py"), "--smoke", "--archs", "resnet",
                          "--set", "classes=260", "--set", "label_smoothing=0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    models = Path(re.search(r"smoke build OK: bundles in (\S+)", out.stdout).group(1))
    try:
        m = bundle.Bundle(models / "resnet").manifest
        assert len(m["target"]["labels"]) == 260
        assert m["provenance"]["pretrain"]["classes"] == 260
        assert m["provenance"]["pretrain"]["label_smoothing"] == 0.0
        assert m["provenance"]["pretrain"]["data"]["num_classes"] == 260
        shipped = bundle.Bundle(REPO / "models" / "resnet").manifest["target"]["labels"]
        assert m["target"]["labels"][:200] == shipped
    finally:
        shutil.rmtree(models.parent, ignore_errors=True)


def test_experiment_overrides_are_checked():
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPTS / "build_models.py"), *args],
                              capture_output=True, text=True, timeout=120)
    bad = run("--set", "colour=1", "--out", "/nonexistent")
    assert bad.returncode == 2 and "expected FIELD=VALUE with FIELD one of" in bad.stderr
    bad = run("--set", "classes=many", "--out", "/nonexistent")
    assert bad.returncode == 2 and "cannot read 'many' as int" in bad.stderr
    # an experiment must name its output folder: the shipped bundles are never replaced by accident
    bad = run("--set", "classes=300")
    assert bad.returncode == 2 and "give --out" in bad.stderr
