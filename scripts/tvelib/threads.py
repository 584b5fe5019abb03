"""One knob for the CPU threads a script uses: LibTorch's intra-op pool and OpenBLAS's own pool.

torch.set_num_threads does not reach OpenBLAS (Debian's LibTorch calls it through libblas.so.3),
whose pool keeps one thread per core. A script asked for one thread then still runs GEMMs on
two, and when other jobs share the cores, a GEMM half waits on a preempted BLAS thread: measured
here, a ViT explainer training at 0.6 scenes/s instead of 3.4, occlusion 5x slower.

The same call also keeps freed memory inside the process (keep_freed_memory): glibc's default
hands every large block back to the kernel, and each tensor of that size then pays for fresh,
zeroed pages on its next use.

Scripts start with configure_script, which first makes sure OpenBLAS runs kernels that fit the CPU
(restart_with_fitting_blas_kernels): the generic ones it falls back to ran matrix multiplies 4x
slower here.
"""
import ctypes
import os
import sys
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


def _openblas() -> ctypes.CDLL | None:
    """The loaded OpenBLAS, to call its control functions; None when it is not this process's BLAS,
    or one built with prefixed symbols (numpy's wheels bundle scipy_openblas64_, whose functions
    are scipy_openblas_*: PyPI's torch brings no OpenBLAS of its own, so that one is not torch's)."""
    lib = loaded_openblas()
    if lib is None:
        return None
    handle = ctypes.CDLL(str(lib))
    return handle if hasattr(handle, "openblas_get_corename") else None


# OpenBLAS's x86-64 kernel sets by vector width, as openblas_get_corename() names them (lower case):
# 0 SSE, 1 AVX, 2 AVX2 with FMA, 3 AVX-512, 4 AVX-512 BF16. The C++ side has the same table
# (src/runtime.cpp, better_openblas_core), which explains the why.
_OPENBLAS_CORE_LEVELS = {
    **dict.fromkeys(["prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "barcelona",
                     "opteron", "opteron_sse3", "nano"], 0),
    **dict.fromkeys(["sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"], 1),
    "haswell": 2, "zen": 2, "skylakex": 3, "cooperlake": 4, "sapphirerapids": 4,
}
OPENBLAS_CORE_VARIABLE = "OPENBLAS_CORETYPE"


def better_openblas_core(current: str, cpu_flags: set) -> str | None:
    """The OpenBLAS kernel set to ask for when `current` is for an older instruction set than the
    CPU's flags (as in /proc/cpuinfo) allow; None when it fits or is a name not in the table.

    Debian's OpenBLAS 0.3.21 gives a CPU newer than its table the generic "Prescott" kernels: on
    the AVX-512 Xeons here its matrix multiplies ran 4x slower (docs/performance.md)."""
    level = _OPENBLAS_CORE_LEVELS.get(current.lower())
    if level is None:
        return None
    avx512 = {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= cpu_flags
    if avx512 and level < 3:
        return "Cooperlake" if "avx512_bf16" in cpu_flags else "SkylakeX"
    if {"avx2", "fma"} <= cpu_flags and level < 2:
        return "Haswell"
    return None


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core() -> str | None:
    """The kernel set the loaded OpenBLAS uses (e.g. 'Cooperlake'), None without OpenBLAS."""
    lib = _openblas()
    if lib is None:
        return None
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib.openblas_get_corename().decode()


def restart_with_fitting_blas_kernels() -> None:
    """Runs this script again, same arguments, with OPENBLAS_CORETYPE set when OpenBLAS chose
    kernels for an older CPU than this one (better_openblas_core): OpenBLAS reads the variable only
    as it loads, which `import torch` did. A variable the user set is respected, with one line on
    stderr when it leaves faster kernels unused. Returns only when nothing was restarted."""
    current = openblas_core()
    better = better_openblas_core(current, cpu_flags()) if current else None
    if better is None:
        return
    if OPENBLAS_CORE_VARIABLE in os.environ:
        # Some machines set it on purpose (older OpenBLAS releases had AVX-512 kernel bugs): say what
        # it costs, change nothing.
        print(f"OpenBLAS runs its {current} kernels, as {OPENBLAS_CORE_VARIABLE}="
              f"{os.environ[OPENBLAS_CORE_VARIABLE]} asks, on a CPU that runs its {better} ones: matrix "
              f"multiplies are slower (docs/performance.md)", file=sys.stderr, flush=True)
        return
    print(f"OpenBLAS chose its {current} kernels on a CPU that runs its {better} ones: "
          f"restarting with {OPENBLAS_CORE_VARIABLE}={better}", file=sys.stderr, flush=True)
    os.environ[OPENBLAS_CORE_VARIABLE] = better
    os.execv(sys.executable, [sys.executable] + sys.argv)


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


def configure_script(n: int) -> None:
    """Every script calls this first: restarts it when OpenBLAS's kernels do not fit the CPU
    (restart_with_fitting_blas_kernels), then use_threads(n)."""
    restart_with_fitting_blas_kernels()
    use_threads(n)


def use_threads(n: int) -> None:
    """Sets LibTorch's and (when loaded) OpenBLAS's thread counts to n, and keeps freed memory in
    the process (keep_freed_memory)."""
    keep_freed_memory()
    torch.set_num_threads(n)
    lib = _openblas()
    if lib is not None:
        lib.openblas_set_num_threads(n)


def openblas_threads() -> int | None:
    lib = _openblas()
    return None if lib is None else int(lib.openblas_get_num_threads())


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


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (taskset, a batch scheduler's cpuset),
    further limited by a cgroup CPU quota (a container's --cpus, Kubernetes limits), at least 1.
    os.cpu_count() counts the machine's cores, which oversubscribes a job given fewer of them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota + 0.5)))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (cgroup v2 cpu.max, or v1 cfs_quota_us / cfs_period_us),
    None when unlimited or unknown."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
