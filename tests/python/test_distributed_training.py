"""Distributed explainer training on CPU (the code path torchrun runs, scripts/tvelib/explainer_training.py):
two gloo processes, each with half of every step's images, train the explainer that one process
trains with the whole batch, for both training schemes (stream: DistributedDataParallel; bank: each
rank's share of the target bank and the gradients summed across ranks).

The processes are started with torch.multiprocessing (spawn) and MASTER_ADDR/MASTER_PORT, as
torchrun would set them: Debian's torchrun 1.13 fails under Python 3.11, the process group and
everything after it are the same."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tvelib import bundle, explainer as ex, explainer_training, trunks

ROOT = Path(__file__).resolve().parents[2]
GRID, RADIUS, SIZE = 4, 1, 32
HALF = 2  # images per rank and step; one process takes 2 * HALF
STEPS = 6
# Largest parameter difference between the two-process and the one-process explainer. Measured
# (6 steps, tiny-resnet, Debian torch 1.13): stream 3.0e-8, bank 1.5e-8: float rounding of sums
# taken in another order. The 6 steps move the weights by 3.1e-3; one process on rank 0's half of
# each batch ends 6.4e-3 away (test_a_rank_alone_differs), as would a rank drawing other centres or
# calibrating on its own bank (what the ranks did before they drew as one process).
TOLERANCE = 1e-6


def _config(scheme: str, batch: int) -> ex.ExplainerConfig:
    # warmup 0: full learning rate from the first step, so that a few steps move the weights.
    return ex.ExplainerConfig(steps=STEPS, batch=batch, centres=2, width=8, depth=1, calib_images=4, warmup=0.0,
                              scheme=scheme, bank_images=16 if scheme == "bank" else 0)


def _source(rank: int, world: int) -> explainer_training.TrainingData:
    """Step s's batch of the whole run is 2 * HALF seeded images; rank r of W takes its slice, as
    tvelib.folder.ImageFolder.batch does for --images."""
    per_rank = 2 * HALF // world

    def batch(step: int) -> torch.Tensor:
        x = torch.randn(2 * HALF, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1000 + step))
        return x[rank * per_rank:(rank + 1) * per_rank]

    def calibration() -> torch.Tensor:
        return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))

    return explainer_training.TrainingData(batch, calibration, {})


def _train(scheme: str, run: Path, rank: int = 0, world: int = 1) -> dict:
    torch.set_num_threads(1)
    target = trunks.eager_target(bundle.Bundle(ROOT / "models/tiny-resnet"))
    model, state = explainer_training.train(
        target, GRID, RADIUS, SIZE, _config(scheme, 2 * HALF // world), run, lambda msg: None,
        source=_source(rank, world), dist=explainer_training.Distributed(rank, world))
    assert state["done"]
    return model.state_dict()


def _rank(rank: int, world: int, port: int, scheme: str, run: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as tdist
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        weights = _train(scheme, Path(run), rank, world)
        torch.save(weights, Path(run) / f"weights-rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(scheme: str, run: Path, world: int = 2) -> list:
    ctx = mp.get_context("spawn")
    port = _free_port()
    ranks = [ctx.Process(target=_rank, args=(r, world, port, scheme, str(run))) for r in range(world)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=240)
    for p in ranks:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in ranks), [p.exitcode for p in ranks]
    return [torch.load(run / f"weights-rank{r}.pt") for r in range(world)]


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


@pytest.mark.parametrize("scheme", ["stream", "bank"])
def test_two_processes_train_the_explainer_of_one(tmp_path, scheme):
    ranks = _distributed(scheme, tmp_path / "two")
    # Every rank ends with the same explainer (rank 0 writes the checkpoint): same start, same
    # reduced gradients, same calibration.
    assert _largest_difference(ranks[0], ranks[1]) == 0.0
    one = _train(scheme, tmp_path / "one")
    difference = _largest_difference(ranks[0], one)
    print(f"{scheme}: two processes vs one, largest parameter difference {difference:.2e}")
    assert difference < TOLERANCE
    # And the steps did move the weights (a run that trained nothing would pass the above).
    untrained = _train_zero(scheme, tmp_path / "untrained")
    moved = _largest_difference(one, untrained)
    print(f"{scheme}: {STEPS} steps moved the weights by up to {moved:.2e}")
    assert moved > 100 * TOLERANCE


def _train_zero(scheme: str, run: Path) -> dict:
    """The explainer before any step (built, calibrated), for the check that training moved it."""
    torch.set_num_threads(1)
    target = trunks.eager_target(bundle.Bundle(ROOT / "models/tiny-resnet"))
    model, _ = explainer_training.train(target, GRID, RADIUS, SIZE, _config(scheme, 2 * HALF), run,
                                        lambda msg: None, source=_source(0, 1), max_steps=0)
    return model.state_dict()


def test_a_rank_alone_differs(tmp_path):
    # What the tolerance separates: one process on only rank 0's half of every batch.
    torch.set_num_threads(1)
    target = trunks.eager_target(bundle.Bundle(ROOT / "models/tiny-resnet"))
    half, _ = explainer_training.train(target, GRID, RADIUS, SIZE, _config("stream", HALF), tmp_path / "half",
                                       lambda msg: None, source=_source(0, 2))
    whole = _train("stream", tmp_path / "whole")
    difference = _largest_difference(half.state_dict(), whole)
    print(f"rank 0's half alone vs the whole batch: {difference:.2e}")
    assert difference > 100 * TOLERANCE
