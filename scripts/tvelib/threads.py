"""One knob for the CPU threads a script uses: LibTorch's intra-op pool and OpenBLAS's own pool.

torch.set_num_threads does not reach OpenBLAS (Debian's LibTorch calls it through libblas.so.3),
whose pool keeps one thread per core. A script asked for one thread then still runs GEMMs on
two, and when other jobs share the cores, a GEMM half waits on a preempted BLAS thread: measured
here, a ViT explainer training at 0.6 scenes/s instead of 3.4, occlusion 5x slower.

The same call also keeps freed memory inside the process (keep_freed_memory): glibc's default
hands every large block back to the kernel, and each tensor of that size then pays for fresh,
zeroed pages on its next use.
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


# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to serve every block from its heap and never give freed memory back.

    By default a block above the mmap threshold (128 KB, adapting up to 32 MB) is mapped on
    malloc and unmapped on free, so a tensor of that size (a batch of masked images, an attention
    matrix) is page-faulted in and zeroed by the kernel every time it is allocated again: the ViT's
    forward pass ran 5x faster with this setting, pre-training 1.4x (docs/performance.md, "Memory
    allocator"). The cost: a process keeps its peak heap until it exits, which suits these
    single-purpose scripts. Returns False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def use_threads(n: int) -> None:
    """Sets LibTorch's and (when loaded) OpenBLAS's thread counts to n, and keeps freed memory in
    the process (keep_freed_memory): every script calls this first."""
    keep_freed_memory()
    torch.set_num_threads(n)
    lib = loaded_openblas()
    if lib is not None:
        ctypes.CDLL(str(lib)).openblas_set_num_threads(n)


def openblas_threads() -> int | None:
    lib = loaded_openblas()
    return None if lib is None else int(ctypes.CDLL(str(lib)).openblas_get_num_threads())


def record_threads(state: dict) -> None:
    """Adds this process's thread count to a training run's state["threads"], the thread counts its
    stages ran with, in order of first use; the manifests' provenance reports it. A run resumed from
    a checkpoint older than this record starts the list with None (not recorded)."""
    seen = state.setdefault("threads", [] if state.get("step", 0) == 0 else [None])
    count = torch.get_num_threads()
    if count not in seen:
        seen.append(count)


def describe_threads(counts) -> str:
    """README text for a run's thread counts: '1 thread', '1 and 2 threads', '2 threads (earlier
    stages: not recorded)'."""
    counts = [counts] if isinstance(counts, int) or counts is None else list(counts)
    known = [str(c) for c in counts if c is not None]
    if not known:
        return "an unrecorded number of threads"
    text = " and ".join(known) + (" thread" if known == ["1"] else " threads")
    return text + (" (earlier stages: not recorded)" if None in counts else "")
