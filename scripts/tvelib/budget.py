"""A training run's plan under a time budget and a memory cap (train_explainer.py --time-budget,
--max-memory): what one encoder pass, one fitting step and the report cost on this machine,
measured in the run's first seconds, turned into the bank size, the fitting steps, the held-out
images of the report and the encoder's chunk size, so that the whole run (loading, calibration,
targets, fitting, report, export) ends within the budget and its peak memory stays under the cap.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch

from .runs import format_duration

GIB = 1024 ** 3
# The report: exact windowed occlusion (2 G^2 passes per held-out image) plus the baselines and
# `tve eval`'s deletion/insertion curves of tve and gradcam (about 4 G + 8 passes per image).
REPORT_SHARE = 0.2  # the report's share of the budget...
REPORT_SHARE_FOR_TWO = 0.35  # ...or up to this much when that is what two held-out images need
MIN_REPORT_IMAGES = 4
# The share of the training time that fitting (as opposed to computing the bank's targets) gets,
# and the fewest bank images that made a useful explainer in docs/own-model.md's measurements.
FIT_SHARE = 0.15
MIN_BANK_IMAGES = 400
MAX_EPOCHS = 40  # fitting steps beyond this many passes over the bank only overfit it
FIXED_SECONDS = 5.0  # export: scripting, writing and checking the bundle


def parse_memory(text: str) -> int:
    """'12G', '12GiB', '800M', '16gb' or plain bytes -> bytes. Raises ValueError naming the text."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--max-memory {text!r}: expected a positive size such as 12G or 800M")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(m.group(2) or "b"))


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS), 0 where /proc is missing."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def available_memory() -> Optional[int]:
    """MemAvailable of the machine, or of the cgroup when its limit is lower; None when unknown."""
    best = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                best = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            value = int(limit.read_text())
            best = value if best is None else min(best, value)
        except (OSError, ValueError):
            continue
    return best


def _status_kib(field_name: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def measured_peak(fn: Callable[[], object]) -> int:
    """Bytes that fn() adds to the process's peak memory: the peak counter is reset (Linux's
    /proc/self/clear_refs, 5) and read after the call. 0 when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        fn()
        return 0
    before = rss_bytes()
    fn()
    return max(0, peak_rss_bytes() - before)


@dataclass
class Costs:
    """What the run measured in its first seconds."""
    seconds_per_pass: float  # one masked encoder pass, batched as the run batches them
    seconds_per_fit_step: float  # one fitting step on the bank
    pass_bytes_per_image: int  # the encoder's activation memory per image of a batched pass
    bank_bytes_per_image: int
    resident_bytes: int  # the process now: models, data, libraries
    input_bytes_per_image: int = 0  # one image as the encoder takes it (a chunk's masked copies)


@dataclass
class Plan:
    """What the run will do, and what it expects that to cost."""
    bank_images: int  # expected from the measured cost
    bank_limit: int  # the bank's size in the run's settings: the budget closes it where it stands
    centres: int
    steps: int
    held_out: int
    chunk: int  # images per encoder call
    seconds: dict = field(default_factory=dict)  # by phase
    peak_bytes: int = 0
    warnings: List[str] = field(default_factory=list)
    needed_seconds: Optional[float] = None  # the smallest useful budget, when this one is smaller

    def describe(self) -> str:
        phases = ", ".join(f"{k} {format_duration(v)}" for k, v in self.seconds.items())
        return (f"plan: {self.bank_images} bank images x {self.centres} centres "
                f"({self.bank_images * (2 * self.centres + 1)} encoder passes; the bank closes by the speed "
                f"observed, at most {self.bank_limit} images), {self.steps} fitting steps, "
                f"report on {self.held_out} held-out images; expected {phases} "
                f"(total {format_duration(sum(self.seconds.values()))}); peak memory about "
                f"{self.peak_bytes / GIB:.1f} GiB, encoder chunks of {self.chunk} images")

    def record(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def report_passes(grid: int) -> int:
    """Encoder passes of the report for one held-out image (see REPORT_SHARE)."""
    return 2 * grid * grid + 4 * grid + 8


def report_images(budget: float, per_image: float, wanted: int, available: int) -> int:
    """Held-out images the report can afford: REPORT_SHARE of the budget, or two within
    REPORT_SHARE_FOR_TWO (a report on two images says more than none), else none."""
    held = min(wanted, available, int(REPORT_SHARE * budget / per_image))
    if held < 2 and min(wanted, available) >= 2 and 2 * per_image <= REPORT_SHARE_FOR_TWO * budget:
        held = 2
    return held if held >= 2 else 0


def plan_budget(budget: float, spent: float, costs: Costs, grid: int, centres: int, batch: int,
                calib_images: int, holdout_wanted: int, holdout_available: int, max_memory: int,
                min_bank_images: int = MIN_BANK_IMAGES) -> Plan:
    """Sizes a bank-scheme run to end within `budget` seconds, of which `spent` are gone.

    The report gets at most REPORT_SHARE of the budget (fewer held-out images when they would
    cost more); the rest, less calibration and export, is split between the bank's targets and
    fitting (FIT_SHARE). Memory: the bank and one encoder chunk on top of what is resident now
    stay under max_memory, the chunk shrinking first, then the bank. Warnings say when the
    budget or the memory cap is too small for a useful explainer, and what would do.
    """
    t_pass = costs.seconds_per_pass
    cells = grid * grid
    k = min(centres, cells)
    per_image = (2 * k + 1) * t_pass
    left = budget - spent
    warnings = []
    per_report_image = report_passes(grid) * t_pass
    held = report_images(budget, per_report_image, holdout_wanted, holdout_available)
    if held < 2:
        if holdout_wanted and holdout_available >= 2:
            warnings.append(f"no fidelity report: one held-out image costs {format_duration(per_report_image)} of "
                            f"exact occlusion, and two need more than {int(100 * REPORT_SHARE_FOR_TWO)}% "
                            f"of the budget (give at least "
                            f"{math.ceil(MIN_REPORT_IMAGES * per_report_image / REPORT_SHARE / 60)}m for a report on "
                            f"{MIN_REPORT_IMAGES})")
    seconds = {"loading and measuring": spent}  # the bank scheme calibrates on its bank
    seconds["report"] = held * per_report_image
    seconds["export"] = FIXED_SECONDS
    train = left - seconds["report"] - seconds["export"]
    # Memory: resident + bank + one bank chunk's masked copies + one encoder call <= max_memory.
    masked_copies = batch * 2 * k * costs.input_bytes_per_image
    free = max_memory - costs.resident_bytes - masked_copies
    chunk = 256
    while chunk > 1 and chunk * costs.pass_bytes_per_image > 0.5 * free:
        chunk //= 2
    bank_cap = max(0, int((free - chunk * costs.pass_bytes_per_image) / max(1, costs.bank_bytes_per_image)))
    images = max(0, int((1 - FIT_SHARE) * train / per_image)) if train > 0 else 0
    images = images // batch * batch
    if images > bank_cap:
        warnings.append(f"--max-memory {max_memory / GIB:.1f} GiB holds a bank of {bank_cap} images, not the "
                        f"{images} the time budget allows: the run ends early (raise --max-memory to use the time)")
        images = bank_cap // batch * batch
    steps = int(FIT_SHARE * train / costs.seconds_per_fit_step) if train > 0 else 0
    if images:
        steps = min(steps, MAX_EPOCHS * images // batch)
    seconds["bank targets"] = images * per_image
    seconds["fitting"] = steps * costs.seconds_per_fit_step
    need = None
    if images < min_bank_images:
        # The report takes at most REPORT_SHARE of a larger budget too; one batch for the rounding.
        need = (spent + seconds["export"] + (min_bank_images + batch) * per_image / (1 - FIT_SHARE)) \
            / (1 - REPORT_SHARE)
        warnings.append(f"this budget allows a bank of {images} images; explainers from fewer than "
                        f"{min_bank_images} were not useful in our measurements (docs/own-model.md), so "
                        f"expect maps no better than the report's baselines: give --time-budget "
                        f"{math.ceil(need / 60)}m or more")
    bank_phase = masked_copies + chunk * costs.pass_bytes_per_image
    # The report's exact occlusion runs the same chunks, each of masked copies of one image.
    report_phase = chunk * (costs.pass_bytes_per_image + 2 * costs.input_bytes_per_image)
    peak = costs.resident_bytes + images * costs.bank_bytes_per_image + max(bank_phase, report_phase)
    # The cost probe takes seconds on a busy machine and can be off by 2x: the bank may grow to
    # 4x the expected size (memory permitting) and closes when the observed speed says so.
    limit = max(images, min(4 * images, bank_cap // batch * batch))
    return Plan(images, limit, k, max(steps, 0), held, chunk, seconds, peak, warnings, need)


def measure_costs(encoder, x: torch.Tensor, masks: torch.Tensor, batch: int, centres: int,
                  bank_bytes_per_image: int, fit_step: Callable[[], None], load_batch: Callable[[], torch.Tensor],
                  passes: int = 16, precision: str = "fp32") -> Costs:
    """Measures, in seconds rather than minutes even for a real-size encoder: one batched encoder
    call on `passes` masked copies of x (after a warm-up call), with the activation memory it
    adds; reading and decoding one batch of images (load_batch); one fitting step. The cost of a
    masked pass returned includes each bank image's share of reading and of its unmasked passes."""
    import time
    n = min(passes, masks.shape[0])
    xs = (x[:1] * masks[:n]).contiguous()  # n masked images, as the bank makes them
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        largest = largest_activation_bytes(encoder, xs[:1])  # and the warm-up: allocator, kernels
        t = time.perf_counter()
        peak = measured_peak(lambda: encoder.embed(xs))
        t_pass = (time.perf_counter() - t) / n
    t = time.perf_counter()
    load_batch()
    t_load = (time.perf_counter() - t) / batch
    per_image = t_load + (2 * centres + 2) * t_pass  # + E(x) and the trunk's features, about a pass
    fit_step()  # warm-up
    t = time.perf_counter()
    fit_step()
    fit_s = time.perf_counter() - t
    # The peak counter undercounts when freed memory is reused (tvelib.threads keeps it in the
    # process), so the estimate is also at least three of the largest activation (a layer's input,
    # its output and a residual branch alive at once).
    per_image_memory = max(int(1.25 * peak / n), 3 * largest)
    return Costs(per_image / (2 * centres + 1), fit_s, per_image_memory, bank_bytes_per_image, rss_bytes(),
                 x[0].numel() * 4)


def largest_activation_bytes(encoder, x: torch.Tensor) -> int:
    """The largest tensor any module of the encoder outputs for x (one image), in bytes."""
    largest = [0]

    def hook(module, inputs, output):
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())
    handles = [m.register_forward_hook(hook) for m in encoder.modules()]
    try:
        encoder.embed(x)
    finally:
        for h in handles:
            h.remove()
    return largest[0]
