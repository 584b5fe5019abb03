"""Pre-training resumes exactly where it stopped; linear probes are plain affine heads."""
from dataclasses import replace

import torch

from tvelib import training


def _cfg():
    return replace(training.PRETRAIN["resnet"], steps=4, batch=4)


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path):
    log = training.Logger(None)
    straight, s1 = training.pretrain("resnet", _cfg(), tmp_path / "a", log, eval_every=0)
    # max_minutes=0: the stage checkpoints and stops after every step, as a killed run would
    runs = 0
    while True:
        resumed, s2 = training.pretrain("resnet", _cfg(), tmp_path / "b", log, max_minutes=0.0, eval_every=0)
        runs += 1
        if s2["done"]:
            break
    assert runs == 4 and s1["step"] == s2["step"] == 4
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_lr_schedule_warms_up_then_decays():
    cfg = replace(training.PRETRAIN["vit"], steps=100)
    lrs = [training.lr_at(cfg, s) for s in range(100)]
    assert lrs[0] < lrs[4] == max(lrs) and lrs[-1] < 0.01 * cfg.lr


def test_linear_probe_is_affine_on_raw_embeddings():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    centres = torch.randn(3, 8, generator=g) * 3
    z = centres[y] + torch.randn(300, 8, generator=g) + 50.0  # offset: standardisation must be folded
    head, info = training.fit_linear_probe(z, y, 3)
    assert isinstance(head, torch.nn.Linear) and head.in_features == 8 and head.out_features == 3
    assert training.probe_top1(head, z, y) > 0.95
