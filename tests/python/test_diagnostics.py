"""The diagnostic scripts refuse what they cannot do, with a message that says why."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "maintainer" / script), *args],
                          capture_output=True, text=True, timeout=300)


def test_stage_features_need_a_resnet():
    out = run("probe_encoder.py", "--bundle", str(REPO / "models" / "tiny-vit"), "--features", "stages")
    assert out.returncode == 2 and "--features stages needs a ResNet encoder" in out.stderr


def test_preview_needs_an_output_or_contrast():
    out = run("preview_scenes.py", "--task", "mnist")
    assert out.returncode == 2 and "--out is required (or --contrast N)" in out.stderr


def test_supervised_ceiling_trains_and_scores_on_the_probe_test_set():
    out = run("supervised_ceiling.py", "--task", "novel", "--steps", "2", "--test-n", "8")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("novel: supervised resnet from scratch, 2 steps of 64: held-out top-1 ")
    top1 = float(last.split("held-out top-1 ")[1].split()[0])
    assert 0.0 <= top1 <= 1.0 and "(n 8," in last


def test_supervised_ceiling_refuses_the_pretraining_task_and_empty_runs():
    out = run("supervised_ceiling.py", "--task", "emoji")
    assert out.returncode == 2 and "invalid choice: 'emoji'" in out.stderr
    out = run("supervised_ceiling.py", "--task", "mnist", "--steps", "0")
    assert out.returncode == 2 and "--steps and --test-n must be positive" in out.stderr
