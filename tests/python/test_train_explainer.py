"""scripts/train_explainer.py as a user runs it on a folder (docs/own-model.md): the time-budget
plan, signals, refusal of bad settings before any work, damaged checkpoints, the guard against
replacing a trained explainer, a finished run's rerun, and the report's baselines; plus the
units behind them (tvelib.budget, fidelity's baselines, the bank scheme, threads.usable_cores).
The tiny ResNet bundle keeps every run to seconds."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tvelib import budget, explainer as ex, explainer_training, fidelity, files, runs, threads

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "images"
SCRIPT = REPO / "scripts" / "train_explainer.py"
PY = "/usr/bin/python3"
SMALL = ["--batch", "2", "--centres", "2", "--width", "16", "--depth", "1", "--no-progress", "--threads", "1"]


def env() -> dict:
    return {**os.environ, "TVE_CACHE": os.environ.get("TVE_CACHE", str(Path.home() / ".cache" / "tve"))}


def train(*args, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([PY, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env())
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_clear_line(done: subprocess.CompletedProcess, *needles: str) -> None:
    """A failure: exit 2, no traceback, the message naming what it must name."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr[-2000:])


@pytest.fixture()
def folder(tmp_path) -> Path:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, name in enumerate(["rgb8.png", "rgb8.jpg", "gray8.png", "rgba.png"] * 5):
        shutil.copy(FIXTURES / name, imgs / f"{i:02d}-{name}")
    return imgs


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- the command ---------------------------------------------------------------------------------


BAD_SETTINGS = [
    ["--steps", "0"], ["--steps", "-5"], ["--steps", "many"], ["--batch", "0"], ["--centres", "-1"],
    ["--bank-images", "0"], ["--time-budget", "0"], ["--time-budget", "-3m"], ["--time-budget", "soon"],
    ["--max-memory", "lots"], ["--max-memory", "0"], ["--size", "huge"], ["--holdout", "-1"], ["--threads", "0"],
    ["--lr", "0"], ["--time-budget", "1m", "--steps", "3"], ["--time-budget", "1m", "--scheme", "stream"],
]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda b: " ".join(b))
def test_bad_settings_are_refused_by_the_parser(monkeypatch, capsys, bad):
    """Every bad value stops in argument parsing, before any file is read or written."""
    from tvelib import cli_train as train_explainer
    monkeypatch.setattr(sys, "argv", ["train_explainer.py", "--model", "tiny-resnet", "--images", "x", *bad])
    with pytest.raises(SystemExit) as stopped:
        train_explainer.parse_args()
    assert stopped.value.code == 2
    assert bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--time-budget", "0"]])
def test_bad_settings_touch_nothing(tmp_path, folder, bad):
    """The same end to end: the bundle and the run folder stay as they were."""
    b = tmp_path / "bundle"
    shutil.copytree(REPO / "models" / "tiny-resnet", b)
    before = tree(b)
    done = train("--model", b, "--images", folder, "--run", tmp_path / "run", *SMALL, *bad, ok=False)
    one_clear_line(done, bad[0])
    assert tree(b) == before and not (tmp_path / "run").exists()


def test_a_trained_explainer_is_not_replaced_without_the_flag(tmp_path, folder):
    b = tmp_path / "bundle"
    shutil.copytree(REPO / "models" / "tiny-resnet", b)
    before = tree(b)
    done = train("--model", b, "--images", folder, "--run", tmp_path / "run", *SMALL, "--steps", "2",
                 "--bank-images", "4", ok=False)
    one_clear_line(done, str(b), "already has an explainer", "--replace-explainer", "--export-to")
    assert tree(b) == before and not (tmp_path / "run").exists()
    # --export-to writes a copy, and the original stays as it was
    train("--model", b, "--images", folder, "--run", tmp_path / "run", *SMALL, "--steps", "2", "--bank-images", "4",
          "--holdout", "2", "--export-to", tmp_path / "copy")
    assert tree(b) == before and (tmp_path / "copy" / "explainer.pt").is_file()


def test_finished_run_reports_without_recomputing_and_shows_baselines(tmp_path, folder, bare_bundle):
    common = ["--model", bare_bundle, "--images", folder, "--run", tmp_path / "run", *SMALL, "--steps", "3",
              "--bank-images", "8", "--holdout", "3"]
    first = train(*common)
    assert "baselines, median Spearman against the same occlusion maps: centre" in first.stdout
    assert "training_mean" in first.stdout
    m = json.loads((bare_bundle / "manifest.json").read_text())
    fid = m["provenance"]["explainer"]["fidelity"]
    setting = f"lneg{m['explainer']['lambda_neg']:g}_{'smooth' if m['explainer']['smooth'] else 'raw'}"
    assert set(fid["baselines"][setting]) >= {"centre", "training_mean"}
    assert fid["gain_over_baselines"]["gain"] == pytest.approx(
        fid[setting]["spearman"] - max(fid["baselines"][setting].values()), abs=1e-3)
    assert m["provenance"]["explainer"]["encoder_passes"] > 0
    assert m["provenance"]["explainer"]["peak_memory_bytes"] > 0
    tve = files.find_tve(Path(os.environ["TVE"]) if os.environ.get("TVE") else None)
    if tve is not None:  # tve models shows the gain over the baselines next to the bundle
        listed = subprocess.run([str(tve), "models", "--model", str(bare_bundle)], capture_output=True, text=True)
        gain = fid["gain_over_baselines"]
        assert f"best baseline {gain['best_baseline']} " in listed.stdout, listed.stdout
        assert f"gain {gain['gain']:+.3f}" in listed.stdout, listed.stdout
    explainer = (bare_bundle / "explainer.pt").read_bytes()
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "report-occlusion").glob("*.pt")}
    assert len(cached) == 3
    again = train(*common)
    assert "this run is finished and exported" in again.stdout and "median Spearman" in again.stdout
    assert (bare_bundle / "explainer.pt").read_bytes() == explainer
    assert {p: p.stat().st_mtime_ns for p in cached} == cached


def test_damaged_checkpoint_and_changed_settings_are_one_line(tmp_path, folder, bare_bundle):
    common = ["--model", bare_bundle, "--images", folder, "--run", tmp_path / "run", *SMALL, "--bank-images", "4",
              "--holdout", "2", "--no-export"]
    train(*common, "--steps", "4", "--max-steps", "2")
    changed = train(*common, "--steps", "6", ok=False)
    one_clear_line(changed, "explainer.ckpt", "steps: 4 then, 6 now", "--restart")
    ckpt = tmp_path / "run" / "explainer.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    damaged = train(*common, "--steps", "4", ok=False)
    one_clear_line(damaged, str(ckpt), "damaged", "--restart")
    restarted = train(*common, "--steps", "4", "--restart")
    assert "stopped at step 4/4" in restarted.stdout


def test_a_folder_without_decodable_images_is_one_line(tmp_path, bare_bundle):
    imgs = tmp_path / "corrupt"
    imgs.mkdir()
    for i in range(6):
        (imgs / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (imgs / "empty.jpg").write_bytes(b"")
    done = train("--model", bare_bundle, "--images", imgs, "--run", tmp_path / "run", *SMALL, "--steps", "2",
                 "--bank-images", "4", ok=False)
    one_clear_line(done, str(imgs), "decode")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_checkpoint_and_the_rerun_resumes(tmp_path, folder, bare_bundle, sig, code):
    common = ["--model", bare_bundle, "--images", folder, "--run", tmp_path / "run", *SMALL, "--steps", "100000",
              "--bank-images", "4", "--holdout", "2", "--no-export", "--checkpoint-minutes", "60"]
    proc = subprocess.Popen([PY, str(SCRIPT), *map(str, common)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())
    log = tmp_path / "run" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "step 25/" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "checkpoint saved" in err and signal.Signals(sig).name in err
    step = files.load_data(tmp_path / "run" / "explainer.ckpt")["state"]["step"]
    assert step >= 25
    again = train(*common, "--max-steps", "1")
    assert f"resumed at step {step}/100000" in again.stdout


def test_time_budget_plans_and_keeps_the_whole_run_within_it(tmp_path, folder, bare_bundle):
    t = time.time()
    done = train("--model", bare_bundle, "--images", folder, "--run", tmp_path / "run", *SMALL,
                 "--time-budget", "40s", "--holdout", "3")
    wall = time.time() - t
    assert "plan:" in done.stdout and "peak memory about" in done.stdout and "encoder passes" in done.stdout
    assert wall < 40 * 1.1 + 2, (wall, done.stdout[-3000:])  # 10%, and the interpreter's start
    m = json.loads((bare_bundle / "manifest.json").read_text())
    plan = m["provenance"]["explainer"]["plan"]
    assert plan["bank_images"] > 0 and plan["steps"] > 0 and plan["held_out"] == 3


# ---- units -----------------------------------------------------------------------------------------


def costs(**kw) -> budget.Costs:
    base = dict(seconds_per_pass=0.01, seconds_per_fit_step=0.05, pass_bytes_per_image=50 * 2**20,
                bank_bytes_per_image=2**20, resident_bytes=2**30)
    return budget.Costs(**{**base, **kw})


def test_plan_fits_the_budget_and_the_memory_cap():
    plan = budget.plan_budget(3600, 30, costs(), grid=14, centres=32, batch=16, calib_images=32, holdout_wanted=20,
                              holdout_available=20, max_memory=12 * 2**30)
    assert sum(plan.seconds.values()) <= 3600 * 1.001
    assert plan.seconds["report"] <= budget.REPORT_SHARE * 3600
    assert plan.peak_bytes <= 12 * 2**30 and plan.bank_images % 16 == 0 and not plan.warnings
    # a report that would eat the budget shrinks; memory caps the bank and the chunk
    slow = budget.plan_budget(3600, 30, costs(seconds_per_pass=0.5), 14, 32, 16, 32, 20, 20, 12 * 2**30)
    assert slow.held_out < 20 and slow.seconds["report"] <= budget.REPORT_SHARE * 3600
    tight = budget.plan_budget(3600, 30, costs(), 14, 32, 16, 32, 20, 20, 2**30 + 400 * 2**20)
    assert tight.peak_bytes <= 2**30 + 400 * 2**20 and tight.chunk < 256
    assert any("--max-memory" in w for w in tight.warnings)


def test_the_bank_starts_no_chunk_that_would_end_past_its_share(monkeypatch):
    """replanning's fill_stop: the bank closes when the next chunk, at the speed observed so far,
    would eat into fitting's and the report's time, not only once the clock is past that point."""
    sys.path.insert(0, str(SCRIPT.parent))
    from tvelib import cli_train as train_explainer
    now = [1000.0]
    monkeypatch.setattr(train_explainer.time, "time", lambda: now[0])
    cfg = ex.ExplainerConfig(batch=16, centres=32)
    args = type("Args", (), {"time_budget_seconds": 600.0, "holdout": 0})()
    images = type("Images", (), {"held_out": []})()
    plan = {"seconds": {"fitting": 60.0, "report": 0.0}, "held_out": 0}
    deadline = now[0] + budget.FIXED_SECONDS + 400.0  # fill until 340 s from now, then fit for 60
    fill_stop, fit_deadline = train_explainer.replanning(plan, deadline, 14, cfg, args, images, lambda line: None)
    assert not fill_stop(0, 0.0)  # nothing observed yet: the first chunk starts
    assert not fill_stop(16, 100.0)  # at 100 s a chunk, one ending at +100 s fits in 340 s
    now[0] += 250.0
    assert fill_stop(16, 100.0)  # at +250 s another 100 s would end past +340 s: closed
    assert fit_deadline() == deadline - budget.FIXED_SECONDS


def test_plan_says_when_the_budget_is_too_small_and_what_would_do():
    plan = budget.plan_budget(120, 30, costs(seconds_per_pass=0.05), 14, 32, 16, 32, 20, 20, 12 * 2**30)
    warning = next(w for w in plan.warnings if "not useful" in w)
    need = runs.parse_duration(warning.split("--time-budget ")[1].split()[0])
    assert need >= plan.needed_seconds > 120
    enough = budget.plan_budget(need, 30, costs(seconds_per_pass=0.05), 14, 32, 16, 32, 20, 20, 12 * 2**30)
    assert not any("not useful" in w for w in enough.warnings)


def test_parse_memory():
    assert budget.parse_memory("12G") == 12 * 2**30 and budget.parse_memory("800MiB") == 800 * 2**20
    for bad in ("", "12X", "-1G", "0"):
        with pytest.raises(ValueError):
            budget.parse_memory(bad)


def test_usable_cores_follows_the_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    assert 1 <= threads.usable_cores() <= len(os.sched_getaffinity(0))


def test_baselines_score_maps_that_ignore_the_image():
    grid = 6
    c = fidelity.centre_map(grid)
    assert c.shape == (grid, grid) and c[2:4, 2:4].min() > c[0, 0]
    mean = fidelity.TrainingMeanMap(grid * grid)
    head = torch.nn.Linear(4, 3)
    centres = torch.tensor([[0, 7, 14]])
    mean.add(head, torch.randn(1, 4), centres, torch.randn(1, 3, 4), torch.randn(1, 3, 4))
    assert mean.count.sum() == 3 and mean.count[7] == 1
    report = {"lneg0_raw": {"spearman": 0.7}, "baselines": {"lneg0_raw": {"centre": 0.5, "gradcam": 0.75}}}
    gain = fidelity.gain_over_baselines(report, "lneg0_raw")
    assert gain["best_baseline"] == "gradcam" and gain["gain"] == pytest.approx(-0.05)


def test_checkpoints_load_tensors_only(tmp_path):
    path = tmp_path / "c.pt"
    files.save_data({"model": {"w": torch.ones(2)}, "state": {"lr": 1e-3, "config": {"x": None}, 3: [1.5, "a"]}}, path)
    back = files.load_data(path)
    assert back["state"]["lr"] == 1e-3 and back["state"][3] == [1.5, "a"] and torch.equal(back["model"]["w"],
                                                                                           torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    torch.save({"format": "tve-data-1", "json": "{}", "tensors": [Evil()]}, path)
    with pytest.raises(ValueError, match="damaged or not a file"):
        files.load_data(path)
    assert not (tmp_path / "pwned").exists()


def test_bank_fill_resumes_where_it_stopped(tmp_path):
    from tvelib import bundle, trunks
    from tvelib.occlusion import window_masks
    b = bundle.Bundle(REPO / "models" / "tiny-resnet")
    target = trunks.eager_target(b)
    grid, radius, size = b.manifest["grid"], b.manifest["radius"], b.input_size
    cfg = ex.ExplainerConfig(batch=2, centres=3, width=8, depth=1, scheme="bank", bank_images=6)
    model = ex.build(target, grid, radius, size, cfg)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(20, 3, size, size, generator=gen)
    source = explainer_training.TrainingData(lambda i: images[2 * i:2 * i + 2], lambda: images[:2], {})
    masks = window_masks(grid, radius, size, size)
    calls = []
    whole = explainer_training.TargetBank(tmp_path / "a.pt", 6, 2, 3, 0, torch.float32)
    whole.fill(model, target, source, masks, "cpu", lambda m: None, 60)
    part = explainer_training.TargetBank(tmp_path / "b.pt", 6, 2, 3, 0, torch.float32)
    part.fill(model, target, source, masks, "cpu", lambda m: None, 60,
              stop=lambda n, s: calls.append(n) or len(calls) > 1)
    assert part.filled == 2 and calls == [0, 2]
    resumed = explainer_training.TargetBank(tmp_path / "b.pt", 6, 2, 3, 0, torch.float32)
    assert resumed.filled == 2
    passes = resumed.fill(model, target, source, masks, "cpu", lambda m: None, 60)
    assert passes == 4 * (2 * 3 + 1) and resumed.filled == 6
    for name, t in whole.tensors.items():
        assert torch.equal(t, resumed.tensors[name]), name
    # the bank's targets are the encoder's exact masked embeddings
    c = whole.tensors["centres"][0]
    z = target.embed(images[:1] * masks[c])
    assert torch.allclose(whole.tensors["z_pos"][0], z, atol=1e-5)


def test_outputs_at_the_drawn_cells_equal_the_full_map():
    """The bank scheme's fitting computes the explainer's output at the supervised cells only;
    that must be exactly what the full map holds there (and what tve runs)."""
    from tvelib import bundle, trunks
    b = bundle.Bundle(REPO / "models" / "tiny-resnet")
    target = trunks.eager_target(b)
    cfg = ex.ExplainerConfig(width=8, depth=1)
    model = ex.build(target, b.manifest["grid"], b.manifest["radius"], b.input_size, cfg)
    torch.nn.init.normal_(model.out.weight)
    x = torch.randn(3, 3, b.input_size, b.input_size)
    cells = torch.tensor([[0, 5, 15], [3, 3, 9], [1, 2, 4]])
    with torch.no_grad():
        f = model.trunk(x)
    full_pos, full_neg = model.from_features(f)
    pos, neg = model.from_features_at(f, cells)
    assert torch.allclose(pos, explainer_training.at_cells(full_pos, cells), atol=1e-5)
    assert torch.allclose(neg, explainer_training.at_cells(full_neg, cells), atol=1e-5)
    # ...and so must the gradients that train it (a transposed gradient into GroupNorm came back
    # 100x wrong from Debian's torch 1.13 before from_features_at gathered channels-first)
    weights = torch.randn_like(pos), torch.randn_like(neg)
    trained = [p for name, p in model.named_parameters() if not name.startswith(("trunk", "rest"))]
    expected = torch.autograd.grad((explainer_training.at_cells(full_pos, cells) * weights[0]).sum()
                                   + (explainer_training.at_cells(full_neg, cells) * weights[1]).sum(), trained)
    got = torch.autograd.grad((pos * weights[0]).sum() + (neg * weights[1]).sum(), trained)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, rtol=1e-4, atol=1e-5)
