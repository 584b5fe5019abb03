"""The project's virtual environment with current PyTorch from PyPI (and torchvision, timm): what
users export their models with. $TVE_CACHE/torch-venv, isolated from Debian's torch 1.13, pins in
scripts/requirements-torch.txt (scripts/venvs.py says how the venvs are made). Used to make bundles
from current torch (scripts/make_bundle.py runs under it too) and by the tests that prove tve,
built on Debian's LibTorch 1.13, loads them (docs/own-model.md, "Current PyTorch").

    /usr/bin/python3 scripts/torch_env.py install                              # scripts/setup.sh; python and exec make it on first use
    $(/usr/bin/python3 scripts/torch_env.py python) scripts/make_bundle.py --torchvision resnet50 ...
    /usr/bin/python3 scripts/torch_env.py exec -m pytest tests/python/test_current_torch.py
"""
from __future__ import annotations

import sys

from venvs import HERE, VirtualEnv, main

TORCH = VirtualEnv(
    name="current-torch", folder="torch-venv", requirements=HERE / "requirements-torch.txt",
    system_site_packages=False,
    probe=("import torch, torchvision, timm, numpy, PIL, pytest\n"
           "assert int(torch.__version__.split('.')[0]) >= 2, torch.__version__\n"
           "print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)\n"),
    env_flag="TVE_TORCH_ENV",
    size=("torch, torchvision and timm from PyPI with the CUDA runtime wheels PyPI's Linux torch needs even "
          "on a CPU (45 packages), about 4.5 GB on disk"),
)

if __name__ == "__main__":
    sys.exit(main(TORCH, sys.argv[1:], __doc__))
