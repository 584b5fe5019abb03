"""What every resumable training run here shares: its log, its checkpoints and its learning-rate
schedule, each a pure function of the step so that a resumed run continues exactly."""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .files import load_data, save_data


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


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 95 -> '1m35s', 7 -> '7s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def parse_duration(text: str) -> float:
    """'90s', '45m', '2h', '1.5h' or plain seconds -> seconds. Raises ValueError naming the text."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"time budget {text!r}: expected a number with s, m, h or d, e.g. 90m or 2h") from None
    if not value > 0:
        raise ValueError(f"time budget {text!r} is not positive")
    return value


class Progress:
    """A progress line for a training run: step, percentage, loss, images/s and ETA.

    On a terminal the line rewrites itself in place (at most 4 times a second); otherwise (a log
    file, CI) a plain line every `every` seconds. Rates and ETA are over this stage's steps only,
    so a resumed run does not count the time it was stopped."""

    def __init__(self, every: float = 30.0, stream=sys.stderr):
        self.stream, self.every = stream, every
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.shown = False

    def start(self, step: int, total: int) -> None:
        self.first, self.total, self.t0, self.last = step, total, time.time(), 0.0
        self.images, self.loss = 0, None

    def update(self, step: int, loss: float, images: int) -> None:
        self.images += images
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        now = time.time()
        if now - self.last < (0.25 if self.tty else self.every) and step < self.total:
            return
        self.last = now
        el = now - self.t0
        done = step - self.first
        eta = el / done * (self.total - step) if done else float("nan")
        line = (f"step {step}/{self.total} {100 * step / max(1, self.total):3.0f}% | loss {self.loss:.4f} | "
                f"{self.images / max(el, 1e-9):.1f} img/s | {format_duration(el)} elapsed, "
                f"ETA {format_duration(eta) if eta == eta else '?'}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Ends the in-place line before something else is printed."""
        if self.tty and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict,
                    extra: Optional[nn.Module] = None) -> None:
    """`extra`: a training-only module (a distillation projection) that must resume with the model."""
    ck = {"model": model.state_dict(), "opt": opt.state_dict(), "state": state}
    if extra is not None:
        ck["extra"] = extra.state_dict()
    save_data(ck, path)


def resume_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, config: dict,
                      restart_hint: str = "delete it to start over",
                      extra: Optional[nn.Module] = None, map_location: str = "cpu") -> Optional[dict]:
    """Restores model and optimiser from `path` and returns the saved state, or None when there is
    no checkpoint. Refuses a checkpoint made with another configuration: resuming it would mix runs."""
    if not path.is_file():
        return None
    try:
        ck = load_data(path, map_location)
    except ValueError as e:
        raise ValueError(f"{e}; {restart_hint}") from None
    if ck["state"]["config"] != config:
        saved = ck["state"]["config"]
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(f"{path} was made with other settings ("
                         + ", ".join(f"{k}: {saved.get(k)!r} then, {config.get(k)!r} now" for k in changed)
                         + f"); {restart_hint}")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    if extra is not None:
        extra.load_state_dict(ck["extra"])
    return ck["state"]


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM after saving its checkpoint; `code` is the exit code
    (128 + the signal's number, as a shell reports a job it killed: 130, 143)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.code = 128 + signum
        super().__init__(signal.Signals(signum).name)


_STOP_SIGNAL: list = []


def stop_on_signals() -> None:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler preempting the job) no longer kill the process at
    once: they ask the run to stop at the next safe point (after a step, an image of the report),
    where it saves its checkpoint and raises Interrupted. A second signal of the same kind while
    it saves is ignored, so a double Ctrl-C does not cut the checkpoint."""
    def ask(signum, frame) -> None:
        if not _STOP_SIGNAL:
            _STOP_SIGNAL.append(signum)
    signal.signal(signal.SIGINT, ask)
    signal.signal(signal.SIGTERM, ask)


def stop_requested() -> bool:
    return bool(_STOP_SIGNAL)


def raise_if_stop_requested() -> None:
    if _STOP_SIGNAL:
        raise Interrupted(_STOP_SIGNAL[0])


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
        if stop_requested():
            state["done"] = False
            save()
            raise_if_stop_requested()
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
