"""What every resumable training run here shares: its log, its checkpoints and its learning-rate
schedule, each a pure function of the step so that a resumed run continues exactly."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .files import atomic_save


def warmup_cosine(step: int, steps: int, peak: float, warmup: float, floor: float = 0.0) -> float:
    """Linear warm-up over the first `warmup` fraction of `steps`, then cosine decay from `peak`
    to floor * peak."""
    warm = max(1, int(warmup * steps))
    if step < warm:
        return peak * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, steps - warm))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


class Logger:
    """Appends timestamped lines to a file (and echoes them to stdout)."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict,
                    extra: Optional[nn.Module] = None) -> None:
    """`extra`: a training-only module (a distillation projection) that must resume with the model."""
    ck = {"model": model.state_dict(), "opt": opt.state_dict(), "state": state}
    if extra is not None:
        ck["extra"] = extra.state_dict()
    atomic_save(ck, path)


def resume_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, config: dict,
                      restart_hint: str = "delete it to start over",
                      extra: Optional[nn.Module] = None) -> Optional[dict]:
    """Restores model and optimiser from `path` and returns the saved state, or None when there is
    no checkpoint. Refuses a checkpoint made with another configuration: resuming it would mix runs."""
    if not path.is_file():
        return None
    ck = torch.load(path)
    if ck["state"]["config"] != config:
        raise ValueError(f"{path} was made with {ck['state']['config']}, not {config}; {restart_hint}")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    if extra is not None:
        extra.load_state_dict(ck["extra"])
    return ck["state"]


def run_steps(state: dict, steps: int, step: Callable[[], None], save: Callable[[], None], *,
              max_minutes: float, checkpoint_minutes: float, max_steps: Optional[int] = None) -> str:
    """The loop of a resumable training stage: calls step() (one optimisation step, which advances
    state["step"] and logs or evaluates as it needs) until state["step"] reaches `steps`; writes a
    checkpoint (save()) every checkpoint_minutes and at every stop; stops early after max_steps
    steps (a smoke run) or max_minutes (a stage of a longer run: call again to continue). Sets
    state["done"] and returns why it stopped."""
    start_step, stage_start, last_checkpoint = state["step"], time.time(), time.time()
    stopped = "all steps done"
    while state["step"] < steps:
        step()
        if time.time() - last_checkpoint > checkpoint_minutes * 60:
            save()
            last_checkpoint = time.time()
        if max_steps is not None and state["step"] - start_step >= max_steps:
            stopped = f"max_steps {max_steps} reached"
            break
        if (time.time() - stage_start) / 60 > max_minutes and state["step"] < steps:
            stopped = f"stage time limit ({max_minutes} min) reached; run again to continue"
            break
    state["done"] = state["step"] >= steps
    save()
    return stopped
