"""The diagnostic scripts refuse what they cannot do, with a message that says why."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          capture_output=True, text=True, timeout=300)


def test_stage_features_need_a_resnet():
    out = run("probe_encoder.py", "--bundle", str(REPO / "models" / "tiny-vit"), "--features", "stages")
    assert out.returncode == 2 and "--features stages needs a ResNet encoder" in out.stderr


def test_preview_needs_an_output_or_contrast():
    out = run("preview_scenes.py", "--task", "mnist")
    assert out.returncode == 2 and "--out is required (or --contrast N)" in out.stderr
