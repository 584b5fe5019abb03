"""--threads N reaches OpenBLAS's pool too, not only LibTorch's; freed memory stays in the process;
scripts run OpenBLAS kernels that fit the CPU (tvelib.threads)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tvelib import threads

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


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


FAULTS_PER_FORWARD_PASS = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from tvelib import bundle, threads
if sys.argv[3] == "keep":
    assert threads.keep_freed_memory()
torch.set_num_threads(1)
target = bundle.Bundle(sys.argv[2]).target
x = torch.rand(64, 3, 112, 112)
with torch.no_grad():
    target.embed(x)  # the first pass grows the heap in both modes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        target.embed(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def test_keep_freed_memory_stops_refaulting_the_vit_forward_pass():
    # Page faults are counted by the kernel, not timed. Under glibc's default every large
    # activation of the ViT's forward pass is unmapped when freed and faulted in (and zeroed)
    # again on the next pass; measured 39,584 faults per pass of 64 images against 3,152.
    root = Path(__file__).resolve().parents[2]

    def faults_per_pass(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_FORWARD_PASS, str(root / "scripts"),
                              str(root / "models/vit"), mode], check=True, capture_output=True, text=True)
        return int(out.stdout.strip())

    default, kept = faults_per_pass("default"), faults_per_pass("keep")
    assert kept * 4 < default, (kept, default)


def test_better_openblas_core_only_undoes_a_fall_back():
    avx512_bf16 = {"avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_bf16"}
    assert threads.better_openblas_core("Prescott", avx512_bf16) == "Cooperlake"
    assert threads.better_openblas_core("Prescott", avx512_bf16 - {"avx512_bf16"}) == "SkylakeX"
    assert threads.better_openblas_core("Nehalem", {"avx2", "fma"}) == "Haswell"
    assert threads.better_openblas_core("Haswell", {"avx2", "fma"}) is None
    assert threads.better_openblas_core("SkylakeX", avx512_bf16) is None
    assert threads.better_openblas_core("Prescott", {"sse3"}) is None
    assert threads.better_openblas_core("NeoverseN1", avx512_bf16) is None


def _configure_in_fresh_process(tmp_path, env_core):
    """Runs configure_script in a fresh process with OPENBLAS_CORETYPE set to env_core (None: unset);
    returns the OpenBLAS kernels the process ends up with, and its stderr."""
    script = tmp_path / "report_core.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(SCRIPTS)!r})\n"
                      "from tvelib import threads\nthreads.configure_script(1)\nprint(threads.openblas_core())\n")
    env = {k: v for k, v in os.environ.items() if k != threads.OPENBLAS_CORE_VARIABLE}
    if env_core is not None:
        env[threads.OPENBLAS_CORE_VARIABLE] = env_core
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip(), out.stderr


def test_scripts_run_openblas_kernels_that_fit_the_cpu(tmp_path):
    if threads.loaded_openblas() is None:
        pytest.skip("OpenBLAS is not this process's BLAS")
    core, _ = _configure_in_fresh_process(tmp_path, None)
    assert threads.better_openblas_core(core, threads.cpu_flags()) is None, core
    # A kernel choice the user made is kept, however slow, and said to be slower when it is.
    core, stderr = _configure_in_fresh_process(tmp_path, "Prescott")
    assert core == "Prescott"
    better = threads.better_openblas_core("Prescott", threads.cpu_flags())
    if better is not None:
        assert f"OPENBLAS_CORETYPE=Prescott asks, on a CPU that runs its {better} ones" in stderr, stderr
    # A choice that fits is kept without a word.
    _, stderr = _configure_in_fresh_process(tmp_path, better or "Prescott")
    assert "OPENBLAS_CORETYPE" not in stderr, stderr
