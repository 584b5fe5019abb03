"""Training a TVE explainer against a frozen target encoder, without labels (docs/design.md,
section 4): draw images and centres, compute the masked embeddings with the encoder, regress the
explainer's outputs at those cells onto them. Resumable from checkpoints, seeded per step.
"""
from __future__ import annotations

import hashlib
import json
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import data, threads
from .explainer import ExplainerConfig, TrunkExplainer, build, freeze_norm_stats, use_scene_version
from .occlusion import window_masks
from .files import load_data, save_data
from .runs import (Progress, raise_if_stop_requested, resume_checkpoint, run_steps, save_checkpoint, stop_requested,
                   warmup_cosine)


@dataclass
class TrainingData:
    """Where a run's images come from: batch(step) -> [B,3,S,S] normalised, a pure function of
    the step (so a resumed run continues on the same images); a fixed calibration batch; and
    what identifies the data in the checkpoint's config (a resume on other data is refused)."""
    batch: Callable[[int], torch.Tensor]
    calibration: Callable[[], torch.Tensor]
    identity: dict


def emoji_data(cfg: ExplainerConfig, image_size: int, rank: int = 0, world: int = 1) -> TrainingData:
    """The built-in EmojiScenes training stream (the shipped explainers' data); rank r of a
    distributed run of `world` processes takes scene batch step * world + r."""
    use_scene_version(cfg.scene_version)
    data.use_pretrain_classes(cfg.pretrain_classes)

    def resized(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return x

    def batch(step: int) -> torch.Tensor:
        index = step * world + rank
        return resized(data.normalise(data.make_scenes("emoji", "train", cfg.data_seed, index, cfg.batch).images))

    def calibration() -> torch.Tensor:
        s = data.make_scenes("emoji", "train", cfg.data_seed + 7919, 0, cfg.calib_images, size=image_size)
        return data.normalise(s.images)

    return TrainingData(batch, calibration, {})


def lr_at(cfg: ExplainerConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 5% of the peak, a pure function of the step."""
    return warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup, floor=0.05)


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"centres|{seed}|{step}".encode()).digest()[:8], "little") >> 1


def draw_centres(seed: int, step: int, batch: int, cells: int, centres: int) -> torch.Tensor:
    """[B,K] distinct random centres per image, a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(_step_seed(seed, step))
    return torch.stack([torch.randperm(cells, generator=g)[:centres] for _ in range(batch)])


@torch.no_grad()
def masked_targets(encoder: nn.Module, x: torch.Tensor, masks: torch.Tensor, centres: torch.Tensor,
                   chunk: int = 256, precision: str = "fp32") -> Tuple[torch.Tensor, torch.Tensor]:
    """Frozen-encoder targets: x [B,3,H,W], masks [N,1,H,W], centres [B,K] -> (z_pos, z_neg) [B,K,D].

    All 2*B*K masked images go through the encoder in large batches: this is the expensive part.
    precision "bf16" runs them under bfloat16 autocast (CPUs with AVX-512 BF16, GPUs), the
    targets returned in float32 (docs/own-model.md measures what it changes).
    """
    b, k = centres.shape
    m = masks[centres.flatten()].view(b, k, 1, *masks.shape[2:])  # [B,K,1,H,W]
    xs = x.unsqueeze(1)  # [B,1,3,H,W]
    inputs = torch.cat([(xs * m).flatten(0, 1), (xs * (1 - m)).flatten(0, 1)])  # [2BK,3,H,W]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        z = torch.cat([encoder.embed(inputs[i:i + chunk]) for i in range(0, len(inputs), chunk)]).float()
    return z[: b * k].view(b, k, -1), z[b * k:].view(b, k, -1)


def calibrate(model: TrunkExplainer, encoder: nn.Module, masks: torch.Tensor, cfg: ExplainerConfig,
              x: torch.Tensor) -> None:
    """Sets the explainer's output mean/std from a fixed calibration batch x (normalised)."""
    c = draw_centres(cfg.seed + 7919, 0, len(x), masks.shape[0], min(8, masks.shape[0])).to(x.device)
    zp, zn = masked_targets(encoder, x, masks, c, precision=cfg.target_precision)  # [B,K,D] each
    with torch.no_grad():
        calibrate_from(model, zp, zn, encoder.embed(x))


def calibrate_from(model: TrunkExplainer, zp: torch.Tensor, zn: torch.Tensor, clean: torch.Tensor,
                   dist: Optional["Distributed"] = None) -> None:
    """Sets the explainer's output mean/std from targets zp, zn [B,K,D] and the embeddings
    E(x) [B,D] of their images (the bank scheme uses its bank: no extra encoder passes).
    With a dist of several ranks, each passes its share of the images (possibly none) and all
    get the statistics of the union, so that every rank starts from the same explainer."""
    zp, zn, clean = zp.float(), zn.float(), clean.float()
    if model.has_global:
        zn = zn - clean.unsqueeze(1)  # the change that removing S_k makes
    d = zp.shape[-1]
    zp, zn = zp.reshape(-1, d), zn.reshape(-1, d)
    if dist is not None and dist.world > 1:
        mean_p, std_p = dist.mean_std(zp)
        mean_n, std_n = dist.mean_std(zn)
    else:
        mean_p, std_p, mean_n, std_n = zp.mean(0), zp.std(0), zn.mean(0), zn.std(0)
    # The global branch starts exact, so the learned change starts at zero mean.
    model.mean.copy_(torch.cat([mean_p, torch.zeros(d, device=zp.device) if model.has_global else mean_n]))
    model.std.copy_(torch.cat([std_p, std_n]).clamp(min=1e-3))


def param_groups(model: TrunkExplainer, cfg: ExplainerConfig) -> List[dict]:
    """What the optimiser trains: the new layers, with weight decay on weights but not on norms
    and biases. The copied encoder stages (trunk and global branch) are frozen: train() freezes
    the target before build() copies it, so every explainer trained so far (the shipped ones
    included) holds exact copies of its encoder's stages, which is why forward_with_embedding gives
    the same maps as forward. Sharing those stages with the target is the next speed lever
    (docs/performance.md)."""
    frozen = {id(p) for p in list(model.trunk.parameters()) + list(model.rest.parameters())}
    trained = [p for p in model.parameters() if id(p) not in frozen and p.requires_grad]
    return [{"params": [p for p in trained if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0}]


_HEAD_MATRICES: "weakref.WeakKeyDictionary[nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()


def head_matrix(encoder: nn.Module, d: int, device) -> torch.Tensor:
    """The frozen target head's weight as a [D,C] matrix (W^T), read off the head once per encoder:
    recomputing it every step cost a real-size model (D 2048, C 1000) more than the step itself."""
    w = _HEAD_MATRICES.get(encoder)
    if w is None or w.device != torch.device(device):
        with torch.no_grad():
            eye = torch.eye(d, device=device)
            w = (encoder.head(eye) - encoder.head(torch.zeros(1, d, device=device))).detach()
        _HEAD_MATRICES[encoder] = w
    return w


def fit_loss(model: TrunkExplainer, encoder: nn.Module, p_pos: torch.Tensor, p_neg: torch.Tensor,
             z_pos: torch.Tensor, z_neg: torch.Tensor, logit_weight: float,
             batch_images: Optional[int] = None,
             dist: Optional["Distributed"] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The regression of the explainer's outputs at the drawn cells (p_pos, p_neg [B,K,D]) onto
    the exact masked embeddings (z_pos, z_neg [B,K,D]); both training schemes use it.

    A rank of a distributed run holds part of the step's batch: batch_images is the whole batch's
    image count (the means divide by it, so the ranks' losses add up to the whole batch's), and
    dist makes the logit term's scale the whole batch's spread, not this part's. Without them
    (one process) the loss is the plain mean, bit for bit as before."""
    d = model.embedding_dim

    def mean(t: torch.Tensor) -> torch.Tensor:
        if batch_images is None or batch_images == len(t):
            return t.mean()
        return t.sum() / (batch_images * t[0].numel())

    # MSE in units of each dimension's spread: dimensions with tiny variance count as much as
    # those with large variance, as a downstream linear head may weigh any of them.
    l_pos = mean(((p_pos - z_pos) / model.std[:d]).pow(2))
    l_neg = mean(((p_neg - z_neg) / model.std[d:]).pow(2))
    loss = l_pos + l_neg
    parts = {"pos": float(l_pos.detach()), "neg": float(l_neg.detach())}
    if logit_weight > 0:
        # The target head's logits on psi vs on the true embeddings, scaled by the logits' spread.
        w = head_matrix(encoder, d, p_pos.device)
        logits = (z_pos @ w).detach()
        spread = dist.mean_std(logits.reshape(-1, 1))[1][0] if dist is not None and dist.world > 1 else logits.std()
        scale = spread.clamp(min=1e-6) ** 2
        l_log = (mean(((p_pos - z_pos) @ w).pow(2)) + mean(((p_neg - z_neg) @ w).pow(2))) / scale
        loss = loss + logit_weight * l_log
        parts["logit"] = float(l_log.detach())
    return loss, parts


def at_cells(psi: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """psi [B,N,D] at the cells centres [B,K] -> [B,K,D]."""
    return psi.gather(1, centres.unsqueeze(-1).expand(-1, -1, psi.shape[-1]))


def losses(model: TrunkExplainer, encoder: nn.Module, x: torch.Tensor, masks: torch.Tensor,
           centres: torch.Tensor, logit_weight: float, forward: Optional[nn.Module] = None,
           precision: str = "fp32",
           dist: Optional["Distributed"] = None) -> Tuple[torch.Tensor, Dict[str, float], Dict[str, float]]:
    """One objective evaluation of the stream scheme (fresh targets for every step). Returns
    (loss, parts, seconds spent per phase).
    forward: what computes model(x) (a DistributedDataParallel wrapper of model, or model). Each
    rank's loss is the mean over its equal share of the batch, and DDP averages the gradients:
    the whole batch's mean (with dist, the logit term's scale is the whole batch's too)."""
    t0 = time.perf_counter()
    z_pos, z_neg = masked_targets(encoder, x, masks, centres, precision=precision)  # [B,K,D] each
    if x.is_cuda:
        torch.cuda.synchronize()  # so the phase time is the encoder's, not queued kernels'
    t1 = time.perf_counter()
    psi_pos, psi_neg = (forward or model)(x)  # [B,N,D] each
    loss, parts = fit_loss(model, encoder, at_cells(psi_pos, centres), at_cells(psi_neg, centres),
                           z_pos, z_neg, logit_weight, dist=dist)
    return loss, parts, {"targets": t1 - t0}


class TargetBank:
    """The bank scheme's training set: for each of n images, the frozen trunk's features f, the
    encoder's embedding z = E(x), K centres and their exact masked embeddings (z_pos, z_neg).

    Every encoder pass is spent once: the fitting steps that follow draw from the bank, and they
    run only the explainer's trained layers (TrunkExplainer.from_features), since the trunk is a
    frozen copy of the encoder's first stages and its output is stored. Filled in chunks of one
    source batch, a pure function of the chunk index, and saved every few minutes: a killed run
    continues where it stopped. Stored in `dtype` (bfloat16 halves the memory of real-size
    encoders' features).
    """

    def __init__(self, path: Path, images: int, chunk: int, centres: int, seed: int, dtype: torch.dtype,
                 dist: Optional["Distributed"] = None):
        self.path, self.chunk, self.centres, self.seed, self.dtype = path, chunk, centres, seed, dtype
        # Rank r of a run of W holds, of each chunk of W * chunk images (source.batch(i) is this
        # rank's slice of the step's images), its own slice: together the ranks' banks are the bank
        # one process with W times the batch would make, entry for entry (global_index).
        self.dist = dist or Distributed()
        self.size = max(1, -(-images // chunk)) * chunk
        self.filled = 0  # images
        self.tensors: Dict[str, torch.Tensor] = {}
        if path.is_file():
            saved = load_data(path)
            if saved["key"] != self.key:
                raise ValueError(f"{path} holds a target bank made with {saved['key']}, not {self.key}; "
                                 f"delete it, or pass --restart, to start over")
            self.filled, self.tensors = saved["filled"], saved["tensors"]
            self.size = min(self.size, saved.get("closed_at", self.size))

    @property
    def key(self) -> dict:
        return {"chunk": self.chunk, "centres": self.centres, "seed": self.seed, "dtype": str(self.dtype)}

    def save(self, closed: bool = False) -> None:
        record = {"key": self.key, "filled": self.filled, "tensors": self.tensors}
        if closed or self.size == self.filled:
            record["closed_at"] = self.filled
        save_data(record, self.path)

    def close(self) -> None:
        """Ends the bank at the images it has (a time budget ran out): it is never filled further."""
        self.size = self.filled
        self.tensors = {name: t[: self.filled].clone() for name, t in self.tensors.items()}
        self.save(closed=True)

    def training_mean_map(self, head, cells: int):
        """The training images' mean occlusion map (fidelity.TrainingMeanMap) from the bank."""
        from .fidelity import TrainingMeanMap
        mean = TrainingMeanMap(cells)
        t = self.tensors
        for lo in range(0, self.filled, 64):
            hi = min(self.filled, lo + 64)
            mean.add(head, t["embedding"][lo:hi], t["centres"][lo:hi], t["z_pos"][lo:hi], t["z_neg"][lo:hi])
        return mean.state()

    def bytes_per_image(self, model: TrunkExplainer, x: torch.Tensor) -> int:
        with torch.no_grad():
            f = model.trunk(x[:1])
        item = torch.tensor([], dtype=self.dtype).element_size()
        return item * (f.numel() + model.embedding_dim * (1 + 2 * self.centres)) + 8 * self.centres

    @torch.no_grad()
    def fill(self, model: TrunkExplainer, encoder: nn.Module, source: TrainingData, masks: torch.Tensor,
             device: str, log: Callable[[str], None], checkpoint_minutes: float,
             stop: Callable[[int, float], bool] = lambda n, s: False, chunk: int = 256,
             precision: str = "fp32") -> int:
        """Computes the missing chunks; returns the encoder passes spent in this call. Stops early
        (saved) when stop(images filled in this call, seconds spent in it) says so.
        chunk: images per encoder call (memory)."""
        passes, last_save, t0, last_log = 0, time.time(), time.time(), 0.0
        first = self.filled
        while self.filled < self.size and not stop(self.filled - first, time.time() - t0):
            index = self.filled // self.chunk
            x = source.batch(index).to(device)[: self.chunk]
            # The whole chunk's centres, drawn as one process would, and this rank's rows of them.
            centres = self.dist.slice(draw_centres(self.seed, index, len(x) * self.dist.world, masks.shape[0],
                                                   min(self.centres, masks.shape[0])))
            z_pos, z_neg = masked_targets(encoder, x, masks, centres.to(device), chunk, precision)
            parts = {"features": model.trunk(x), "embedding": encoder.embed(x), "centres": centres,
                     "z_pos": z_pos, "z_neg": z_neg}
            for name, value in parts.items():
                value = value.cpu() if name == "centres" else value.to("cpu", self.dtype)
                if name not in self.tensors:
                    self.tensors[name] = torch.empty((self.size, *value.shape[1:]), dtype=value.dtype)
                self.tensors[name][self.filled:self.filled + len(x)] = value
            self.filled += len(x)
            passes += len(x) * (2 * centres.shape[1] + 1)
            if time.time() - last_save > checkpoint_minutes * 60:
                self.save()
                last_save = time.time()
            if time.time() - last_log > 30 or self.filled == self.size:
                last_log = time.time()
                log(f"target bank: {self.filled}/{self.size} images, {time.time() - t0:.0f} s")
        self.save()
        return passes

    def global_index(self) -> torch.Tensor:
        """[filled] int64: where each of this rank's entries sits in the bank of the whole run
        (entry j of this rank's chunk c is image (c * W + rank) * chunk + j)."""
        local = torch.arange(self.filled)
        return (local // self.chunk * self.dist.world + self.dist.rank) * self.chunk + local % self.chunk

    def batch(self, step: int, batch: int, device: str) -> Dict[str, torch.Tensor]:
        """This rank's entries of the step's training batch: batch * W entries drawn uniformly
        from the whole run's bank (seeded by the step), the same draw on every rank and in one
        process; each rank takes those it holds (any number, none included)."""
        g = torch.Generator().manual_seed(_step_seed(self.seed + 104729, step))
        world, rank = self.dist.world, self.dist.rank
        idx = torch.randint(self.filled * world, (batch * world,), generator=g)
        if world > 1:
            per_chunk = self.chunk * world
            mine = (idx % per_chunk) // self.chunk == rank
            idx = idx[mine] // per_chunk * self.chunk + idx[mine] % self.chunk
        return {name: (t[idx].to(device) if name == "centres" else t[idx].to(device, torch.float32))
                for name, t in self.tensors.items()}


def bank_losses(model: TrunkExplainer, encoder: nn.Module, entries: Dict[str, torch.Tensor],
                logit_weight: float, batch_images: Optional[int] = None,
                dist: Optional["Distributed"] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The bank scheme's objective on one batch of bank entries: the trained layers only.
    batch_images, dist: this rank holds part of a batch of that many entries (fit_loss)."""
    pos, neg = model.from_features_at(entries["features"], entries["centres"])  # [B,K,D] each
    if model.has_global:
        neg = neg + entries["embedding"].unsqueeze(1)  # what forward_with_embedding adds
    return fit_loss(model, encoder, pos, neg, entries["z_pos"], entries["z_neg"], logit_weight, batch_images, dist)


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed). Every rank
    takes its own slice of each step's images; rank 0 alone logs and writes checkpoints."""
    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def slice(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of t's rows (all of them in one process)."""
        n = len(t) // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def mean_std(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and (unbiased) std over the rows of every rank's t [n_r, D] together, on every
        rank: count, sum and sum of squares summed across the ranks (in float64: the squares of
        a few thousand values lose digits in float32)."""
        import torch.distributed as tdist
        t = t.double()
        stats = torch.cat([torch.tensor([float(len(t))], dtype=torch.float64, device=t.device),
                           t.sum(0), t.pow(2).sum(0)])
        tdist.all_reduce(stats)
        d = t.shape[1]
        n, total, squares = stats[0], stats[1:1 + d], stats[1 + d:]
        mean = total / n
        var = (squares - n * mean.pow(2)) / (n - 1).clamp(min=1)
        return mean.float(), var.clamp(min=0).sqrt().float()


def open_bank(run_dir: Path, cfg: ExplainerConfig, dist: Distributed = Distributed()) -> "TargetBank":
    """This rank's target bank of a bank-scheme run (its share of cfg.bank_images; every rank
    draws from the seed one process would use, TargetBank)."""
    return TargetBank(run_dir / f"bank-rank{dist.rank}.pt", -(-cfg.bank_images // dist.world), cfg.batch,
                      cfg.centres, cfg.seed, torch.float32, dist)


def sum_gradients(model: nn.Module) -> None:
    """The bank scheme's counterpart of DistributedDataParallel (its steps run the trained layers
    on stored features, not model.forward, so DDP's hooks would not see them): each rank's loss
    is its entries' share of the whole batch's mean (fit_loss's batch_images), so the gradients
    add up. A rank that drew none of the batch adds zeros: every rank must join every reduce."""
    import torch.distributed as tdist
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tdist.all_reduce(p.grad)


def train(target: nn.Module, grid: int, radius: int, image_size: int, cfg: ExplainerConfig, run_dir: Path,
          log: Callable[[str], None], *, max_minutes: float = 85.0, checkpoint_minutes: float = 3.0,
          max_steps: Optional[int] = None, eval_fn: Optional[Callable[[TrunkExplainer, int], dict]] = None,
          eval_every: int = 0, source: Optional[TrainingData] = None, device: str = "cpu",
          dist: Distributed = Distributed(), progress: Optional[Progress] = None,
          fit_reserve_seconds: float = 0.0, chunk: int = 256,
          new_state: Optional[dict] = None, fill_stop: Optional[Callable[[int, float], bool]] = None,
          fit_deadline: Optional[Callable[[], float]] = None) -> Tuple[TrunkExplainer, dict]:
    """Trains (or resumes) an explainer against the frozen target encoder on `source` (default:
    the built-in EmojiScenes stream), on `device`, as one rank of `dist`.

    Stops at cfg.steps, at max_steps (a smoke run), or after max_minutes (a stage or the user's
    time budget); state["done"] says whether cfg.steps was reached. A checkpoint (model, optimiser,
    step) is written every checkpoint_minutes and at every stop, atomically, so a killed run
    continues from the last one.

    The bank scheme first fills its target bank; under a time limit the filling stops
    fit_reserve_seconds before it, the bank closes at what it has, and the fitting gets the rest.
    SIGINT/SIGTERM (runs.stop_on_signals) stop it at the next step or bank chunk, checkpointed,
    with runs.Interrupted. chunk: images per encoder call (memory). new_state: entries of a new
    run's state (its budget plan), kept in every checkpoint. fill_stop(images, seconds) may close
    the bank earlier (a budget replanned from the observed speed); fit_deadline() gives the time
    the fitting must end by, asked when it starts.
    """
    torch.manual_seed(cfg.seed)
    deadline = time.time() + max_minutes * 60  # for the whole call: bank, then fitting
    source = source or emoji_data(cfg, image_size, dist.rank, dist.world)
    config = {**asdict(cfg), **({"data": source.identity} if source.identity else {})}
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "explainer.ckpt"
    target = target.eval().to(device)
    for p in target.parameters():
        p.requires_grad_(False)
    masks = window_masks(grid, radius, image_size, image_size).to(device)  # [N,1,H,W]
    model = build(target, grid, radius, image_size, cfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    state = resume_checkpoint(ckpt_path, model, opt, config, "pass --restart (or another --run) to start over",
                              map_location=device)
    if state is not None:
        log(f"resumed at step {state['step']}/{cfg.steps} ({state['seconds'] / 60:.1f} min so far)")
    else:
        state = {"step": 0, "seconds": 0.0, "target_seconds": 0.0, "images": 0, "encoder_passes": 0,
                 "config": config, "history": [], "evals": [], "calibrated": False, **(new_state or {})}
        if cfg.scheme != "bank":  # the bank scheme calibrates on its bank, once it has one
            calibrate(model, target, masks, cfg, source.calibration().to(device))
            state["calibrated"] = True
        n_params = sum(p.numel() for p in model.parameters())
        log(f"start: {n_params / 1e6:.3f}M params ({sum(p.numel() for p in model.trunk.parameters()) / 1e6:.3f}M "
            f"in the copied trunk), {asdict(cfg)}")
    state.setdefault("encoder_passes", 0)
    bank = None
    if cfg.scheme == "bank":
        bank = open_bank(run_dir, cfg, dist)
        if bank.filled < bank.size:
            t0 = time.time()
            model.eval()
            state["encoder_passes"] += bank.fill(
                model, target, source, masks, device, log, checkpoint_minutes, chunk=chunk,
                precision=cfg.target_precision,
                stop=lambda n, s: (time.time() > deadline - fit_reserve_seconds or stop_requested()
                                   or (fill_stop is not None and fill_stop(n, s))))
            state["seconds"] += time.time() - t0
            state["target_seconds"] += time.time() - t0
            if bank.filled < bank.size:
                if dist.leader:
                    save_checkpoint(ckpt_path, model, opt, state)
                raise_if_stop_requested()
                if bank.filled == 0:
                    raise ValueError("the time limit ended before the first chunk of the target bank was made")
                log(f"time limit: the target bank closes at {bank.filled} of {bank.size} images")
                bank.close()
        if not state.get("calibrated", True):
            # From the run's first 64 bank images, wherever they are: the ranks hold parts of
            # them, and all get the statistics of the whole (the same explainer on every rank,
            # the same as one process's).
            t = bank.tensors
            first = (bank.global_index() < min(bank.filled * dist.world, 64)).nonzero().flatten()
            calibrate_from(model, t["z_pos"][first].to(device), t["z_neg"][first].to(device),
                           t["embedding"][first].to(device), dist)
            state["calibrated"] = True
    elif cfg.scheme != "stream":
        raise ValueError(f"unknown training scheme {cfg.scheme!r}: expected stream or bank")
    forward: nn.Module = model
    if dist.world > 1 and bank is None:
        # Ranks start from the same weights (same seed, same calibration batch, or the same
        # checkpoint); DDP averages the trained layers' gradients, the frozen copies have none.
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index]
                                                      if device.startswith("cuda") else None)
    threads.record_threads(state)
    log(f"this stage runs on {device}, {threads.describe_threads(torch.get_num_threads())}"
        + (f", rank {dist.rank} of {dist.world}" if dist.world > 1 else ""))

    def save() -> None:
        if dist.leader:
            save_checkpoint(ckpt_path, model, opt, state)

    seg = {"t": time.time(), "n": 0, "pos": 0.0, "neg": 0.0, "logit": 0.0, "targets": 0.0}
    model.train()
    freeze_norm_stats(model)
    images_per_step = cfg.batch * dist.world
    if progress is not None:
        progress.start(state["step"], cfg.steps)

    def step() -> None:
        nonlocal seg
        t0 = time.time()
        index = state["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, index)
        if bank is None:
            x = source.batch(index).to(device)  # [B,3,H,W] f32 normalised RGB, this rank's slice
            # The whole step's centres, drawn as one process with the whole batch would, and this
            # rank's rows: a run on W ranks trains the explainer one process would.
            centres = dist.slice(draw_centres(cfg.seed, index, len(x) * dist.world, masks.shape[0],
                                              min(cfg.centres, masks.shape[0]))).to(device)
            loss, parts, phases = losses(model, target, x, masks, centres, cfg.logit_weight, forward,
                                         cfg.target_precision, dist)
            state["encoder_passes"] += 2 * centres.numel() * dist.world
        else:
            entries = bank.batch(index, cfg.batch, device)
            loss, parts = None, {"pos": 0.0, "neg": 0.0}
            if len(entries["centres"]) > 0:  # a rank may hold none of this step's draw
                loss, parts = bank_losses(model, target, entries, cfg.logit_weight, cfg.batch * dist.world, dist)
            elif cfg.logit_weight > 0:
                dist.mean_std(torch.zeros(0, 1, device=device))  # its part (nothing) of the logit scale
            phases = {"targets": 0.0}
        opt.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        if bank is not None and dist.world > 1:
            sum_gradients(model)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        state["step"] += 1
        state["images"] += images_per_step
        dt = time.time() - t0
        state["seconds"] += dt
        state["target_seconds"] += phases["targets"]
        seg["n"] += 1
        seg["targets"] += phases["targets"]
        for k, v in parts.items():
            seg[k] += v
        if progress is not None and dist.leader:
            progress.update(state["step"], float(loss.detach()) if loss is not None else 0.0, images_per_step)
        if state["step"] % 25 == 0 or state["step"] == cfg.steps:
            el = time.time() - seg["t"]
            msg = (f"step {state['step']}/{cfg.steps} loss pos {seg['pos'] / seg['n']:.4f} "
                   f"neg {seg['neg'] / seg['n']:.4f}")
            if cfg.logit_weight > 0:
                msg += f" logit {seg['logit'] / seg['n']:.4f}"
            msg += (f" lr {lr_at(cfg, state['step'] - 1):.2e} {seg['n'] * images_per_step / el:.1f} img/s "
                    f"({seg['n'] * images_per_step * cfg.centres / el:.0f} centres/s, "
                    f"{100 * seg['targets'] / el:.0f}% of time in encoder targets)")
            if dist.leader:
                if progress is not None:
                    progress.clear()
                log(msg)
            state["history"].append({"step": state["step"], "pos": seg["pos"] / seg["n"],
                                     "neg": seg["neg"] / seg["n"], "img_per_s": seg["n"] * images_per_step / el,
                                     "target_share": seg["targets"] / el})
            seg = {"t": time.time(), "n": 0, "pos": 0.0, "neg": 0.0, "logit": 0.0, "targets": 0.0}
        if eval_fn is not None and eval_every and state["step"] % eval_every == 0 and dist.leader:
            model.eval()
            result = eval_fn(model, state["step"])
            state["evals"].append({"step": state["step"], **result})
            log(f"step {state['step']} eval {json.dumps(result)}")
            model.train()
            freeze_norm_stats(model)

    end = min(deadline, fit_deadline()) if fit_deadline is not None else deadline
    stopped = run_steps(state, cfg.steps, step, save, max_minutes=(end - time.time()) / 60,
                        checkpoint_minutes=checkpoint_minutes, max_steps=max_steps)
    if progress is not None:
        progress.clear()
    log(f"stopped at step {state['step']}/{cfg.steps}: {stopped}")
    return model.eval(), state


def fit_step_timer(model: TrunkExplainer, encoder: nn.Module, x: torch.Tensor,
                   cfg: ExplainerConfig) -> Callable[[], None]:
    """One bank-scheme fitting step (what a --time-budget plan times) on a throwaway explainer:
    stored features of x, stand-in targets, forward, backward, an update with learning rate 0."""
    with torch.no_grad():
        entries = {"features": model.trunk(x), "embedding": encoder.embed(x)}
    d = model.embedding_dim
    k = min(cfg.centres, model.grid * model.grid)
    entries["centres"] = draw_centres(cfg.seed, 0, len(x), model.grid * model.grid, k).to(x.device)
    entries["z_pos"] = torch.zeros(len(x), k, d, device=x.device)
    entries["z_neg"] = torch.zeros(len(x), k, d, device=x.device)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=0.0)

    def step() -> None:
        loss, _ = bank_losses(model, encoder, entries, cfg.logit_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def load_checkpoint(target: nn.Module, grid: int, radius: int, image_size: int,
                    ckpt_path: Path) -> Tuple[TrunkExplainer, dict]:
    ck = load_data(ckpt_path)
    cfg = ExplainerConfig.from_dict(ck["state"]["config"])
    model = build(target, grid, radius, image_size, cfg)
    model.load_state_dict(ck["model"])
    return model.eval(), ck["state"]
