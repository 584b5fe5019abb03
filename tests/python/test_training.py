"""Pre-training resumes exactly where it stopped; linear probes are plain affine heads."""
from dataclasses import replace

import pytest
import torch

from tvelib import archs, data, training
from tvelib.runs import Logger


def _cfg():
    return replace(training.PRETRAIN["resnet"], steps=4, batch=4)


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path):
    log = Logger(None)
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


def _distill_setup():
    torch.manual_seed(1)
    teacher = archs.build_target("resnet", "small", data.num_classes("emoji"), image_size=data.IMAGE_SIZE).eval()
    cfg = replace(training.PRETRAIN["swin"], steps=3, batch=4)
    assert cfg.distill_from == "resnet-colour"
    return teacher, cfg


def test_grid_stage_and_logits_are_the_models_own_forward_pass():
    x = torch.randn(2, 3, data.IMAGE_SIZE, data.IMAGE_SIZE)
    for arch in ("resnet", "swin", "vit"):
        model = archs.build_target(arch, "small", 200, image_size=data.IMAGE_SIZE).eval()
        with torch.no_grad():
            stage, logits = training.grid_stage_and_logits(model, x)
            assert torch.allclose(logits, model(x), atol=1e-5), arch
        assert stage.shape[0] == 2 and stage.shape[2:] == (14, 14), (arch, stage.shape)
    with pytest.raises(TypeError):
        training.grid_stage_and_logits(torch.nn.Linear(2, 2), x)


def test_distillation_moves_the_student_towards_the_teacher():
    teacher, cfg = _distill_setup()
    cfg = replace(cfg, distill_logit_weight=0.0)
    student = archs.build_target("swin", "small", 200, image_size=data.IMAGE_SIZE)
    distiller = training.Distiller(teacher, student, cfg)
    x = torch.randn(8, 3, data.IMAGE_SIZE, data.IMAGE_SIZE)
    opt = torch.optim.Adam(list(student.parameters()) + list(distiller.proj.parameters()), lr=1e-3)
    losses = []
    for _ in range(30):
        _, feature_loss, logit_loss = distiller(student, x)
        assert float(logit_loss) == 0.0
        opt.zero_grad()
        feature_loss.backward()
        opt.step()
        losses.append(float(feature_loss))
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen


def test_distilled_pretraining_resumes_and_refuses_another_teacher(tmp_path):
    teacher, cfg = _distill_setup()
    log = Logger(None)
    with pytest.raises(ValueError):
        training.pretrain("swin", cfg, tmp_path / "x", log, eval_every=0)  # a distilling config needs its teacher
    straight, _ = training.pretrain("swin", cfg, tmp_path / "a", log, teacher=teacher, teacher_id="t1", eval_every=0)
    while True:
        resumed, state = training.pretrain("swin", cfg, tmp_path / "b", log, teacher=teacher, teacher_id="t1",
                                           max_minutes=0.0, eval_every=0)
        if state["done"]:
            break
    assert state["teacher"] == "t1"
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    with pytest.raises(ValueError, match="teacher"):
        training.pretrain("swin", cfg, tmp_path / "b", log, teacher=teacher, teacher_id="t2", eval_every=0)
