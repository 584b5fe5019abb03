"""--threads N reaches OpenBLAS's pool too, not only LibTorch's (tvelib.threads)."""
import pytest
import torch

from tvelib import threads


def test_use_threads_sets_libtorch_and_openblas():
    torch.ones(8, 8) @ torch.ones(8, 8)  # make sure the BLAS library is loaded
    if threads.loaded_openblas() is None:
        pytest.skip("this process runs on a BLAS other than OpenBLAS")
    before = torch.get_num_threads()
    try:
        threads.use_threads(1)
        assert torch.get_num_threads() == 1
        assert threads.openblas_threads() == 1
    finally:
        threads.use_threads(before)


def test_a_resumed_run_records_every_thread_count_its_stages_used():
    before = torch.get_num_threads()
    try:
        state = {"step": 0}
        torch.set_num_threads(1)
        threads.record_threads(state)
        threads.record_threads(state)  # a second stage on the same count adds nothing
        torch.set_num_threads(2)
        threads.record_threads(state)
        assert state["threads"] == [1, 2]
        assert threads.describe_threads(state["threads"]) == "1 and 2 threads"
        legacy = {"step": 120}  # a checkpoint written before the record existed
        threads.record_threads(legacy)
        assert legacy["threads"] == [None, 2]
        assert threads.describe_threads(legacy["threads"]) == "2 threads (earlier stages: not recorded)"
        assert threads.describe_threads(1) == "1 thread"
    finally:
        torch.set_num_threads(before)
