"""tvelib.explainer: the mask and map conventions of src/attribution.cpp, the transfer rule, the
metrics, and a smoke training run on the tiny bundles (train, resume, export, load)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tvelib import bundle, explainer as ex, explainer_training, files, metrics, occlusion, trunks

ROOT = Path(__file__).resolve().parents[2]
TVE_BINARY = Path(os.environ.get("TVE") or ROOT / "build" / "tve")
torch.set_num_threads(1)


def test_pixel_cells_match_the_cpp_rule():
    # src/attribution.cpp: pixel p is in cell floor(p*G/H). 10 px over 4 cells (boundaries at
    # 0, 2.5, 5, 7.5): [0,3) [3,5) [5,8) [8,10). 112 px over 14 cells: 8 px each.
    assert occlusion.pixel_cells(10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert occlusion.pixel_cells(112, 14).tolist() == [p // 8 for p in range(112)]


def test_window_masks_hand_checked_4x4():
    # 4x4 image, 4x4 grid (one pixel per cell), radius 1.
    m = occlusion.window_masks(4, 1, 4, 4)
    assert m.shape == (16, 1, 4, 4)
    # k = row*G + col: k = 1 is row 0, col 1, a window clipped at the top border.
    expected_k1 = torch.tensor([[1, 1, 1, 0],
                                [1, 1, 1, 0],
                                [0, 0, 0, 0],
                                [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(m[1, 0], expected_k1)
    # k = 14 is row 3 (the bottom), col 2.
    expected_k14 = torch.tensor([[0, 0, 0, 0],
                                 [0, 0, 0, 0],
                                 [0, 1, 1, 1],
                                 [0, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(m[14, 0], expected_k14)
    # radius 0: mask k is exactly cell k
    m0 = occlusion.window_masks(4, 0, 8, 8)
    assert torch.equal(m0[6, 0].nonzero().unique(dim=0), torch.tensor([[2, 4], [2, 5], [3, 4], [3, 5]]))


def test_smoothing_ignores_padding():
    maps = torch.zeros(1, 3, 3)
    maps[0, 0, 0] = 9.0
    s = occlusion.smooth_maps(maps, 1)
    assert s[0, 0, 0] == pytest.approx(9.0 / 4)  # corner: 4 valid cells
    assert s[0, 1, 1] == pytest.approx(1.0)  # centre: 9 cells
    assert torch.equal(occlusion.smooth_maps(maps, 0), maps)


def test_rule_matches_the_formula_and_orientation():
    g, c = 3, 4
    pos, neg = torch.randn(2, g * g, c), torch.randn(2, g * g, c)
    classes = torch.tensor([1, 3])
    maps = occlusion.rule(pos, neg, classes, g, 1.0, 0.5, False, 1)
    assert maps.shape == (2, g, g)
    for b in range(2):
        for k in range(g * g):
            want = pos[b, k, classes[b]] - 0.5 * neg[b, k, classes[b]]
            assert maps[b, k // g, k % g] == pytest.approx(float(want))


def test_tve_on_a_bundle_matches_the_reference_computation():
    # The same computation as tests/python/test_tve_cpp_matches_python.py's python_tve.
    b = bundle.Bundle(ROOT / "models/tiny-resnet")
    x = torch.randn(3, 3, 32, 32)
    g, r = b.manifest["grid"], b.manifest["radius"]
    with torch.no_grad():
        pos, neg = b.explainer(x)
        head = b.target.head
        c = head(b.target.embed(x)).argmax(1)
        lp, ln = head(pos.reshape(-1, pos.shape[-1])).view(3, g * g, -1), head(neg.reshape(-1, neg.shape[-1])).view(3, g * g, -1)
        got = occlusion.rule(lp, ln, c, g, 1.0, 1.0, True, r)
        for i in range(3):
            e = head(pos[i])[:, c[i]] - head(neg[i])[:, c[i]]
            want = F.avg_pool2d(e.view(1, 1, g, g), 2 * r + 1, stride=1, padding=r, count_include_pad=False)[0, 0]
            assert torch.allclose(got[i], want, atol=1e-5)


def test_occlusion_embeddings_use_baseline_zero():
    calls = []

    def embed(x):  # records inputs, returns their sums per channel
        calls.append(x.clone())
        return x.sum(dim=(2, 3))

    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    pos, neg = occlusion.occlusion_embeddings(embed, x, 2, 0)
    assert pos.shape == neg.shape == (1, 4, 3)
    # cell 1 = row 0, col 1 = pixels [0:2, 2:4]. An absolute tolerance: the two sides sum the same
    # float32 values in another order, and where the complement sum is near 0 the rounding of sums
    # near 3 (~2e-7) exceeds allclose's default relative tolerance (a CI run, x unseeded, drew a
    # complement sum of 7.9e-4 and failed).
    assert torch.allclose(pos[0, 1], x[0, :, 0:2, 2:4].sum(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(neg[0, 1], x[0].sum(dim=(1, 2)) - x[0, :, 0:2, 2:4].sum(dim=(1, 2)), atol=1e-5)


def test_metrics_against_numpy():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 2.0, 3.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0, 8.0, 11.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert metrics.spearman(a, b)[0] == pytest.approx(1.0)
    assert metrics.pearson(a, b)[0] == pytest.approx(np.corrcoef(a[0], b[0])[0, 1])
    # ties get average ranks: a[1] ranks = [1.5, 1.5, 3, 4, 0]; b[1] ranks = [4, 3, 2, 1, 0]
    ra, rb = np.array([1.5, 1.5, 3, 4, 0]), np.array([4, 3, 2, 1, 0])
    assert metrics.spearman(a, b)[1] == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    iou = metrics.topk_iou(torch.arange(10.0).view(1, -1), torch.arange(10.0).view(1, -1), 0.2)
    assert iou[0] == pytest.approx(1.0)
    iou = metrics.topk_iou(torch.arange(10.0).view(1, -1), -torch.arange(10.0).view(1, -1), 0.2)
    assert iou[0] == 0.0


def test_pointing_game():
    maps = torch.zeros(2, 2, 2)
    maps[0, 1, 0] = 1.0  # max at row 1, col 0
    maps[1, 0, 1] = 1.0
    cover = torch.zeros(2, 2, 2)
    cover[:, 1, 0] = 0.3
    assert metrics.pointing_hits(maps, cover).tolist() == [True, False]


@pytest.mark.parametrize("arch", ["resnet", "vit", "swin"])
def test_trunk_explainer_shapes_and_scripting(arch):
    b = bundle.Bundle(ROOT / f"models/tiny-{arch}")
    target = trunks.eager_target(b)
    cfg = ex.ExplainerConfig(width=16, depth=1)
    model = ex.build(target, 4, 1, 32, cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    pos, neg = torch.jit.script(model)(x)
    assert pos.shape == neg.shape == (2, 16, b.manifest["embedding_dim"])
    assert ex.count_flops(model, model, x[:1]) > 0


@pytest.mark.parametrize("arch", ["resnet", "swin"])  # the architectures with a global branch
def test_forward_with_embedding_moves_psi_neg_by_one_vector_per_image(arch):
    b = bundle.Bundle(ROOT / f"models/tiny-{arch}")
    target = trunks.eager_target(b)
    eager = ex.build(target, 4, 1, 32, ex.ExplainerConfig(width=16, depth=1)).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # as fine-tuning does: the trunk copy drifts from the encoder's layers
        for p in eager.trunk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = torch.jit.script(eager)
    x = torch.randn(3, 3, 32, 32)
    z = b.target.embed(x)  # [3,D]
    with torch.no_grad():
        pos, neg = model(x)
        pos_z, neg_z = model.forward_with_embedding(x, z)
        estimate = model.rest(model.trunk(x))  # the global branch's E(x)
    assert torch.equal(pos_z, pos)
    shift = neg_z - neg  # [3,N,D]: the same vector z - estimate at every cell
    assert torch.allclose(shift, (z - estimate).unsqueeze(1).expand_as(shift), atol=1e-5)
    assert shift.abs().max() > 1e-3  # the branch's estimate is not E(x) itself: the test can tell


@pytest.mark.parametrize("arch", ["resnet", "vit", "swin"])
def test_embed_and_explain_is_the_encoder_and_the_explainer_in_one_pass(arch):
    """tve picks the classes from embed_and_explain's z (docs/bundle-format.md): it must be the
    target's E(x), and the meta-attributions those of forward_with_embedding(x, E(x))."""
    b = bundle.Bundle(ROOT / f"models/tiny-{arch}")
    eager = ex.build(trunks.eager_target(b), 4, 1, 32, ex.ExplainerConfig(width=16, depth=1)).eval()
    assert isinstance(eager, ex.EncoderExplainer)
    model = torch.jit.script(eager)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, pos, neg = model.embed_and_explain(x)
        pos_z, neg_z = model.forward_with_embedding(x, b.target.embed(x))
    assert torch.allclose(z, b.target.embed(x), atol=1e-5, rtol=1e-5)
    assert torch.allclose(pos, pos_z, atol=1e-5) and torch.allclose(neg, neg_z, atol=1e-5)
    no_global = ex.build(trunks.eager_target(b), 4, 1, 32, ex.ExplainerConfig(width=16, depth=1, global_branch=False))
    assert not hasattr(torch.jit.script(no_global.eval()), "embed_and_explain")  # no copy of the last stages


@pytest.mark.skipif(not TVE_BINARY.exists(), reason="needs the built tve (ctest sets TVE)")
def test_tve_refuses_an_explainer_whose_encoder_copy_is_not_the_target(tmp_path, bare_bundle):
    """An explainer whose copy of the encoder drifted would pick the classes of another model: the
    loader refuses it (exit 3, naming explainer.pt), and the same explainer without the drift loads."""
    b = bundle.Bundle(bare_bundle)
    eager = ex.build(trunks.eager_target(b), 4, 1, 32, ex.ExplainerConfig(width=16, depth=1)).eval()
    defaults = {"lambda_pos": 1.0, "lambda_neg": 1.0, "smooth": True}
    bundle.add_explainer(bare_bundle, eager, defaults)
    check = [str(TVE_BINARY), "models", "--check", "--models-dir", str(bare_bundle.parent)]
    ok = subprocess.run(check, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    torch.manual_seed(0)
    with torch.no_grad():
        for p in eager.rest.parameters():  # the last stages only: forward() and psi_pos stay valid
            p.add_(0.05 * torch.randn_like(p))
    bundle.add_explainer(bare_bundle, eager, defaults)
    refused = subprocess.run(check, capture_output=True, text=True)
    said = refused.stdout + refused.stderr  # `tve models` lists an invalid bundle with its error
    assert refused.returncode == 3, said
    assert "bundle/explainer.pt: embed_and_explain()" in said and "differs from target.pt's embed(x)" in said, said


def _train(tmp_path, *extra):
    args = [sys.executable, str(ROOT / "scripts/train_explainer.py"), "--model", str(ROOT / "models/tiny-resnet"),
            "--smoke", "--run", str(tmp_path / "run"), *extra]
    return subprocess.run(args, check=True, capture_output=True, text=True)


def test_smoke_training_exports_a_matching_explainer(tmp_path):
    _train(tmp_path, "--export-to", str(tmp_path / "bundle"))
    b = bundle.Bundle(tmp_path / "bundle")  # verifies every hash
    m = b.manifest
    assert m["explainer"]["target_sha256"] == m["target"]["sha256"]
    assert bundle.sha256_of(tmp_path / "bundle/target.pt") == bundle.sha256_of(ROOT / "models/tiny-resnet/target.pt")
    pos, neg = b.explainer(torch.randn(2, 3, 32, 32))
    assert pos.shape == neg.shape == (2, 16, m["embedding_dim"])
    assert m["provenance"]["explainer"]["steps_done"] == 4
    assert json.loads((ROOT / "models/tiny-resnet/manifest.json").read_text())["explainer"]["sha256"] != \
        m["explainer"]["sha256"]  # the shipped bundle was not touched


def test_resume_continues_at_the_right_step(tmp_path):
    _train(tmp_path, "--steps", "6", "--max-steps", "2")
    state = files.load_data(tmp_path / "run/explainer.ckpt")["state"]  # tensors-only checkpoints
    assert state["step"] == 2 and not state["done"]
    _train(tmp_path, "--steps", "6")
    log = (tmp_path / "run/train.log").read_text()
    assert "resumed at step 2/6" in log
    state = files.load_data(tmp_path / "run/explainer.ckpt")["state"]  # tensors-only checkpoints
    assert state["step"] == 6 and state["done"]
    # A different configuration refuses the checkpoint instead of silently mixing runs.
    target = trunks.eager_target(bundle.Bundle(ROOT / "models/tiny-resnet"))
    other = ex.ExplainerConfig(steps=6, batch=4, centres=2, width=8, depth=1, calib_images=8)
    with pytest.raises(ValueError, match="was made with"):
        explainer_training.train(target, 4, 1, 32, other, tmp_path / "run", lambda msg: None)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    # Same data stream, centres and optimiser state: 2 + 2 steps give the same weights as 4.
    target = trunks.eager_target(bundle.Bundle(ROOT / "models/tiny-resnet"))
    cfg = ex.ExplainerConfig(steps=4, batch=2, centres=2, width=8, depth=1, calib_images=4)
    quiet = lambda msg: None  # noqa: E731
    a, _ = explainer_training.train(target, 4, 1, 32, cfg, tmp_path / "a", quiet)
    explainer_training.train(target, 4, 1, 32, cfg, tmp_path / "b", quiet, max_steps=2)
    b, _ = explainer_training.train(target, 4, 1, 32, cfg, tmp_path / "b", quiet)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_add_explainer_refuses_a_changed_target(tmp_path):
    shutil.copytree(ROOT / "models/tiny-resnet", tmp_path / "b")
    with open(tmp_path / "b/target.pt", "ab") as f:
        f.write(b"x")
    module = bundle.Bundle(ROOT / "models/tiny-resnet").explainer
    with pytest.raises(ValueError, match="does not match"):
        bundle.add_explainer(tmp_path / "b", module, {"lambda_pos": 1, "lambda_neg": 1, "smooth": True})


def test_evaluation_script_runs_and_caches_occlusion(tmp_path):
    env = {**os.environ, "TVE_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, str(ROOT / "scripts/maintainer/evaluate_explainer.py"), "--model", str(ROOT / "models/tiny-resnet"),
            "--n", "3", "--tasks", "emoji", "--out", str(tmp_path / "eval.json")]
    subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    assert len(list((tmp_path / "cache/occlusion").glob("*-emoji-s1000-n3-g4-r1.pt"))) == 1
    out = json.loads((tmp_path / "eval.json").read_text())
    fid = out["tasks"]["emoji"]["fidelity"]
    assert set(fid) >= {"lneg0_raw", "lneg0_smooth", "lneg1_raw", "lneg1_smooth", "r2_pos", "r2_neg"}
    for setting in ("lneg0_raw", "lneg1_smooth"):
        assert -1.0 <= fid[setting]["spearman"] <= 1.0 and 0.0 <= fid[setting]["pointing_tve"] <= 1.0
    assert out["defaults"]["lambda_pos"] == 1.0 and isinstance(out["defaults"]["smooth"], bool)


def test_a_rewritten_bundle_drops_the_explainer_and_heads_it_no_longer_lists(tmp_path):
    # Rebuilding an encoder makes its old explainer meaningless (it was trained against the old
    # target.pt); the folder must not keep it next to a manifest that no longer mentions it.
    shipped = bundle.Bundle(ROOT / "models/tiny-resnet")
    m = shipped.manifest
    out = tmp_path / "b"
    shutil.copytree(ROOT / "models/tiny-resnet", out)
    assert (out / "explainer.pt").is_file() and (out / "heads/parity.pt").is_file()
    bundle.write_bundle(out, name="b", architecture=m["architecture"], target=shipped.target,
                        labels=shipped.labels, task="test", input_size=m["input"]["height"], grid=m["grid"],
                        radius=m["radius"], embedding_dim=m["embedding_dim"])
    assert not (out / "explainer.pt").exists() and not (out / "heads/parity.pt").exists()
    assert (out / "target.pt").is_file()
    assert bundle.Bundle(out).explainer is None
