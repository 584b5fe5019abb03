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
