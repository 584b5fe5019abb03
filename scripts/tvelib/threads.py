"""One knob for the CPU threads a script uses: LibTorch's intra-op pool and OpenBLAS's own pool.

torch.set_num_threads does not reach OpenBLAS (Debian's LibTorch calls it through libblas.so.3),
whose pool keeps one thread per core. A script asked for one thread then still runs GEMMs on
two, and when other jobs share the cores, a GEMM half waits on a preempted BLAS thread: measured
here, a ViT explainer training at 0.6 scenes/s instead of 3.4, occlusion 5x slower.
"""
import ctypes
from pathlib import Path

import torch


def loaded_openblas() -> Path | None:
    """The OpenBLAS shared library this process has loaded, if any (read from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1]
        if "openblas" in Path(path).name:
            return Path(path)
    return None


def use_threads(n: int) -> None:
    """Sets LibTorch's and (when loaded) OpenBLAS's thread counts to n."""
    torch.set_num_threads(n)
    lib = loaded_openblas()
    if lib is not None:
        ctypes.CDLL(str(lib)).openblas_set_num_threads(n)


def openblas_threads() -> int | None:
    lib = loaded_openblas()
    return None if lib is None else int(ctypes.CDLL(str(lib)).openblas_get_num_threads())
