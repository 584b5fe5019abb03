"""Pre-training encoders on EmojiScenes, linear probes on the downstream tasks, evaluation.

Everything is resumable and deterministic by step: the scene stream's batch i depends only on i
(tvelib.data), the learning rate is a function of the step, and a checkpoint holds the model, the
optimiser and the step, so a run killed at any moment continues where its last checkpoint was.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import archs, data, threads
from .files import load_data
from .runs import Logger, resume_checkpoint, run_steps, save_checkpoint, warmup_cosine
from .trunks import TokensToMap, VitTrunk


@dataclass
class PretrainConfig:
    steps: int
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of steps with a linear warm-up
    label_smoothing: float = 0.1
    clip: float = 1.0
    seed: int = 0  # model initialisation; the data stream has its own seed (data.TRAIN_SEED)
    classes: int = data.BASE_PRETRAIN_CLASSES  # EmojiScenes pre-training classes (data.use_pretrain_classes)
    line_art: float = 0.0  # share of training scenes whose main emoji is its outline drawing (data.make_scenes)
    # Distillation from an encoder trained earlier in the same build (its bundle: OUT/<distill_from>,
    # or for a teacher-only encoder in TEACHERS, <work>/teachers/<distill_from>):
    # the student's 14x14 stage is pulled towards the teacher's 14x14 feature map (through a learned
    # linear projection, dropped after training) and its logits towards the teacher's (KL at a
    # temperature). Both teacher and student see the same scenes; labels stay the main signal.
    distill_from: Optional[str] = None
    distill_feature_weight: float = 1.0
    distill_logit_weight: float = 4.0
    distill_temperature: float = 2.0


# The same data budget for ViT and Swin (3000 x 64 = 192,000 scenes). With one thread on the
# 2-core machine ResNet trains at ~100 img/s (32 min per 3000 steps), ViT at ~20 img/s (2.7 h), the
# first (patch-4) Swin config at ~15 img/s (3.6 h); the long ones run as resumable stages of at most
# 90 minutes. The transformers' rates were measured before 2026-12-01 and depend on OpenBLAS's
# kernels (tvelib.threads.configure_script; 2-3x faster where it had fallen back to generic ones).
PRETRAIN = {
    # ResNet: half of its scenes draw the main emoji as line art (Symbola outlines), for stroke
    # features the downstream digits and garments need; that needs twice the schedule (6000 steps,
    # 67 min on two threads) to beat the colour-only 3000-step ResNet on all four sets (models/README.md).
    "resnet": PretrainConfig(steps=6000, lr=2e-3, line_art=0.5),
    # ViT on labels alone reached held-out top-1 0.26 with this budget; distilled from a ResNet
    # (its 14x14 patch tokens after the first block against the ResNet's layer2 map), 0.84.
    "vit": PretrainConfig(steps=3000, lr=1e-3, distill_from="resnet-colour"),
    # Swin (conv stem, patch 8) trains at ~65 img/s. On labels alone 1500 steps (23 min) reached only
    # 0.033 top-1 whatever the learning rate (1e-4..1e-3); distilling a ResNet's 14x14 map and
    # logits lifted train top-1 at step 950 from 0.024 to 0.205 (models/README.md).
    "swin": PretrainConfig(steps=3000, lr=1e-3, distill_from="resnet-colour"),
}

# Encoders that only teach others: built by build_models.py into its work folder when a student
# needs them, never shipped. "resnet-colour" is the ResNet shipped until 2026-12-01 (target SHA-256
# a1e762f5...), trained without line art: the shipped ViT and Swin were distilled from it.
TEACHERS = {"resnet-colour": ("resnet", PretrainConfig(steps=3000, lr=2e-3))}


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to zero, as a pure function of the step."""
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup)


def build_encoder(arch: str, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return archs.build_target(arch, "small", num_classes, image_size=data.IMAGE_SIZE)


def _param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    # No weight decay on norms, biases, position embeddings and the class token (1-D or tokens).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim <= 1 or "pos_embedding" in name or "class_token" in name or "relative_position" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---- distillation ------------------------------------------------------------------------------

def grid_stage_and_logits(target: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving (the feature map of the deepest stage on the attribution grid,
    [B,C,14,14] for 112 px input; the logits). ResNet: layer2's output (stride 8). Swin: the conv
    stem and patch embedding (stride 8) and the first stage. ViT: the patch tokens after the first
    block, on the patch grid."""
    fam = archs.family_of(target)
    if fam.stages is None:  # a token model
        tokens = VitTrunk(target, depth=1)(x)  # shares the target's modules: [B,1+N,D]
        grid = int(round((tokens.shape[1] - 1) ** 0.5))
        return TokensToMap(grid)(tokens), target.classify(target.early_blocks[1:](tokens))
    h, stage = x, None
    for part in fam.stages(target):
        h = part(h)
        if (h.shape[1] if fam.channels_last else h.shape[2]) == data.GRID:
            stage = h
    if stage is None:
        raise ValueError(f"no stage of the {fam.name} is on the {data.GRID} x {data.GRID} grid")
    top = fam.final_norm(target)(h) if fam.final_norm is not None else h
    if fam.channels_last:  # [B,h,w,C] -> [B,C,h,w]
        stage, top = stage.permute(0, 3, 1, 2), top.permute(0, 3, 1, 2)
    return stage, target.classify(top)


class Distiller(nn.Module):
    """The distillation terms of PretrainConfig for one student against a frozen teacher.

    Holds the only trainable part besides the student: a per-cell linear map from the student's
    channels to the teacher's (a 1x1 convolution), which exists only during training.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: PretrainConfig):
        super().__init__()
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        probe = torch.zeros(1, 3, data.IMAGE_SIZE, data.IMAGE_SIZE)
        with torch.no_grad():
            s_map, _ = grid_stage_and_logits(student, probe)
            t_map, _ = grid_stage_and_logits(self.teacher, probe)
        if s_map.shape[2:] != t_map.shape[2:]:
            raise ValueError(f"student grid {tuple(s_map.shape[2:])} != teacher grid {tuple(t_map.shape[2:])}")
        self.proj = nn.Linear(s_map.shape[1], t_map.shape[1])

    def forward(self, student: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (student logits, feature loss, logit loss), both losses already weighted."""
        with torch.no_grad():
            t_map, t_logits = grid_stage_and_logits(self.teacher, x)
            # Standardised per channel over batch and cells: the teacher's post-ReLU channels have
            # arbitrary scales, and the MSE should weigh every channel alike.
            t_map = (t_map - t_map.mean(dim=(0, 2, 3), keepdim=True)) / (t_map.std(dim=(0, 2, 3), keepdim=True) + 1e-5)
        s_map, logits = grid_stage_and_logits(student, x)
        s_proj = self.proj(s_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B,C_teacher,h,w]
        feature_loss = F.mse_loss(s_proj, t_map) * self.cfg.distill_feature_weight
        temp = self.cfg.distill_temperature
        logit_loss = F.kl_div(F.log_softmax(logits / temp, dim=1), F.softmax(t_logits / temp, dim=1),
                              reduction="batchmean") * self.cfg.distill_logit_weight
        return logits, feature_loss, logit_loss


def pretrain(arch: str, cfg: PretrainConfig, run_dir: Path, log: Logger, *, teacher: Optional[nn.Module] = None,
             teacher_id: Optional[str] = None, max_minutes: float = 85.0, checkpoint_minutes: float = 3.0, eval_every: int = 500,
             eval_n: int = 500, task: str = "emoji") -> Tuple[nn.Module, dict]:
    """Trains (or resumes) an encoder on the `task` stream ('emoji': pre-training; a downstream task:
    scripts/maintainer/supervised_ceiling.py's reference). Returns (model, state).

    `teacher` (an eager target) is required exactly when cfg.distill_from is set; `teacher_id` (the
    SHA-256 of its target.pt) goes into the state, and a checkpoint made against another teacher is
    refused rather than resumed.
    state["done"] is False when the stage stopped at max_minutes: call again to continue.
    """
    if (cfg.distill_from is None) != (teacher is None):
        raise ValueError(f"{arch}: distill_from={cfg.distill_from!r} needs a teacher exactly when it is set")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "pretrain.ckpt"
    data.use_pretrain_classes(cfg.classes)
    model = build_encoder(arch, data.num_classes(task), cfg.seed)
    distiller = Distiller(teacher, model, cfg) if teacher is not None else None
    extra = distiller.proj if distiller is not None else None
    trainable = nn.ModuleList([model] + ([extra] if extra is not None else []))
    opt = torch.optim.AdamW(_param_groups(trainable, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    state = resume_checkpoint(ckpt_path, model, opt, asdict(cfg), extra=extra)
    if state is not None and state.get("teacher") != teacher_id:
        raise ValueError(f"{ckpt_path} was distilled from teacher {state.get('teacher')}, not {teacher_id}; "
                         "delete it to start over")
    if state is not None:
        log(f"{arch}: resumed at step {state['step']}/{cfg.steps} ({state['seconds'] / 60:.1f} min so far)")
    else:
        state = {"step": 0, "seconds": 0.0, "images": 0, "config": asdict(cfg), "arch": arch, "history": [],
                 "teacher": teacher_id}
        log(f"{arch}: start, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {asdict(cfg)}")
    threads.record_threads(state)
    log(f"{arch}: this stage runs on {threads.describe_threads(torch.get_num_threads())}")

    def save() -> None:
        save_checkpoint(ckpt_path, model, opt, state, extra=extra)

    seg = {"start": time.time(), "images": 0, "loss": 0.0, "correct": 0, "distill": 0.0}
    model.train()
    stream = data.train_batches(task, cfg.batch, start=state["step"], line_art=cfg.line_art if task == "emoji" else 0.0)

    def step() -> None:
        t0 = time.time()
        scenes = next(stream)
        x = data.normalise(scenes.images)  # [B,3,112,112] f32 normalised RGB
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, state["step"])
        if distiller is None:
            logits, distill_loss = model(x), torch.zeros(())
        else:
            logits, feature_loss, logit_loss = distiller(model, x)
            distill_loss = feature_loss + logit_loss
        loss = F.cross_entropy(logits, scenes.labels, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        (loss + distill_loss).backward()
        nn.utils.clip_grad_norm_(trainable.parameters(), cfg.clip)
        opt.step()
        state["step"] += 1
        state["images"] += cfg.batch
        state["seconds"] += time.time() - t0
        seg["images"] += cfg.batch
        seg["loss"] += float(loss) * cfg.batch
        seg["distill"] += float(distill_loss) * cfg.batch
        seg["correct"] += int((logits.argmax(1) == scenes.labels).sum())
        if state["step"] % 50 == 0 or state["step"] == cfg.steps:
            dt = time.time() - seg["start"]
            distilled = f"distill {seg['distill'] / seg['images']:.3f} " if distiller is not None else ""
            log(f"{arch}: step {state['step']}/{cfg.steps} loss {seg['loss'] / seg['images']:.3f} {distilled}"
                f"train-top1 {seg['correct'] / seg['images']:.3f} lr {lr_at(cfg, state['step'] - 1):.2e} "
                f"{seg['images'] / dt:.1f} img/s")
            seg.update(start=time.time(), images=0, loss=0.0, correct=0, distill=0.0)
        if eval_every and (state["step"] % eval_every == 0 or state["step"] == cfg.steps):
            acc = evaluate(model, task, "test", eval_n)
            state["history"].append({"step": state["step"], "heldout_top1_quick": acc})
            log(f"{arch}: step {state['step']} quick held-out top-1 {acc:.3f} (n={eval_n})")
            model.train()

    stopped = run_steps(state, cfg.steps, step, save, max_minutes=max_minutes, checkpoint_minutes=checkpoint_minutes)
    if not state["done"]:
        log(f"{arch}: stopped at step {state['step']}: {stopped}")
    return model.eval(), state


def load_pretrained(arch: str, cfg: PretrainConfig, run_dir: Path) -> Tuple[nn.Module, dict]:
    ck = load_data(run_dir / "pretrain.ckpt")
    data.use_pretrain_classes(cfg.classes)
    model = build_encoder(arch, data.num_classes("emoji"), cfg.seed)
    model.load_state_dict(ck["model"])
    return model.eval(), ck["state"]


@torch.no_grad()
def evaluate(model: nn.Module, task: str, split: str, n: int) -> float:
    """Top-1 of model(x) on the fixed set (task, split) of n scenes."""
    model.eval()
    correct = 0
    for s in data.fixed_set(task, split, n):
        correct += int((model(data.normalise(s.images)).argmax(1) == s.labels).sum())
    return correct / n


@torch.no_grad()
def embed_set(model: nn.Module, task: str, split: str, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [n,D] f32 and labels [n] of the fixed set (task, split)."""
    model.eval()
    zs, ys = [], []
    for s in data.fixed_set(task, split, n):
        zs.append(model.embed(data.normalise(s.images)))
        ys.append(s.labels)
    return torch.cat(zs), torch.cat(ys)


def fit_linear_probe(z: torch.Tensor, y: torch.Tensor, num_classes: int,
                     l2_grid=(1e-4, 1e-3, 1e-2)) -> Tuple[nn.Linear, dict]:
    """Multinomial logistic regression on frozen embeddings: an nn.Linear(D, C) on raw z.

    Features are standardised for the fit (L-BFGS converges far better), the L2 strength is picked
    on a 20% validation slice of the training set, then refit on all of it; the standardisation is
    folded into the layer so that the head takes raw embeddings, as the bundle format requires.
    """
    mu, sd = z.mean(0), z.std(0) + 1e-6
    zs = (z - mu) / sd  # [N,D]
    n_val = max(1, len(zs) // 5)

    def fit(x: torch.Tensor, t: torch.Tensor, l2: float) -> nn.Linear:
        lin = nn.Linear(x.shape[1], num_classes)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=300, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(lin(x), t) + l2 * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return lin

    scores = {}
    for l2 in l2_grid:
        lin = fit(zs[n_val:], y[n_val:], l2)
        with torch.no_grad():
            scores[l2] = float((lin(zs[:n_val]).argmax(1) == y[:n_val]).float().mean())
    best = max(l2_grid, key=lambda l2: (scores[l2], l2))
    lin = fit(zs, y, best)
    head = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(lin.weight / sd)  # W' z = W (z - mu) / sd + b
        head.bias.copy_(lin.bias - (lin.weight / sd) @ mu)
    return head.eval(), {"l2": best, "val_top1_by_l2": {str(k): v for k, v in scores.items()}}


@torch.no_grad()
def probe_top1(head: nn.Module, z: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(z).argmax(1) == y).float().mean())

