#!/usr/bin/env bash
# What the cuda build flavour (docs/gpu.md) needs, installed only when asked: after scripts/setup.sh,
#   bash scripts/setup_cuda.sh && bash scripts/build.sh --flavour cuda
# 1. the current-torch venv ($TVE_CACHE/torch-venv, scripts/torch_env.py): the PyPI torch wheel whose
#    LibTorch the flavour links, with its CUDA runtime libraries (scripts/setup.sh makes it too);
# 2. nvcc, nvvm and the CUDA headers of the same CUDA release, from PyPI, into $TVE_CACHE/cuda-toolkit
#    (scripts/requirements-cuda-toolkit.txt; 115 MB download, 308 MB on disk, ~6 s from PyPI).
# Idempotent: a stamp keeps the pins the toolkit was installed from; when they match it only checks.
# Exit 0 when all is in place, 1 when an install step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${TVE_CACHE:-$HOME/.cache/tve}
requirements=scripts/requirements-cuda-toolkit.txt
toolkit=$cache/cuda-toolkit
stamp=$toolkit/tve-requirements.txt

# nvcc must be the release of the wheel's CUDA runtime (PyTorch's CMake config compares them).
pin() { sed -n "s/^$1==\([^ #]*\).*/\1/p" "$2"; }
runtime=$(pin nvidia-cuda-runtime scripts/requirements-torch.txt)
if [[ "$(pin nvidia-cuda-runtime "$requirements")" != "$runtime" || "$(pin nvidia-cuda-nvcc "$requirements")" != "$runtime" ]]; then
  echo "setup_cuda: $requirements: nvidia-cuda-nvcc and nvidia-cuda-runtime must both be $runtime, the runtime pinned in scripts/requirements-torch.txt" >&2
  exit 1
fi

/usr/bin/python3 scripts/torch_env.py install
python=$(/usr/bin/python3 scripts/torch_env.py python)

if [[ -f $stamp ]] && cmp -s "$stamp" "$requirements" && [[ -e $toolkit/nvidia/cu13/lib/libcudart.so ]] \
  && "$toolkit/nvidia/cu13/bin/nvcc" --version >/dev/null 2>&1; then
  echo "setup_cuda: CUDA toolkit for the cuda flavour present in $toolkit" >&2
  exit 0
fi
echo "setup_cuda: installing nvcc and the CUDA headers into $toolkit from $requirements" >&2
rm -rf "$toolkit"  # a different pin set or a broken install: anew, so nothing stale stays
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$toolkit" -r "$requirements"
# FindCUDA looks for the unversioned name that the wheel leaves out.
ln -s libcudart.so.13 "$toolkit/nvidia/cu13/lib/libcudart.so"
"$toolkit/nvidia/cu13/bin/nvcc" --version | tail -n 2 >&2
cp "$requirements" "$stamp"  # last: an interrupted install is redone next time
