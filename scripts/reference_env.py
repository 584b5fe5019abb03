"""The project's virtual environment for the reference libraries (Captum, pytorch-grad-cam) that tve's
attribution methods are checked and benchmarked against (docs/methods.md): $TVE_CACHE/venv, with
--system-site-packages over Debian's torch, torchvision, numpy, PIL and pytest, plus the pins of
scripts/requirements-reference.txt (scripts/venvs.py says how the venvs are made).

    /usr/bin/python3 scripts/reference_env.py install          # scripts/setup.sh; idempotent
    /usr/bin/python3 scripts/reference_env.py python           # prints the venv's interpreter
    /usr/bin/python3 scripts/reference_env.py exec -m pytest   # runs the venv's python (ctest)
"""
from __future__ import annotations

import sys

from venvs import HERE, VirtualEnv, main

REFERENCE = VirtualEnv(
    name="reference", folder="venv", requirements=HERE / "requirements-reference.txt", system_site_packages=True,
    probe=("import sys, torch, torchvision, captum, pytorch_grad_cam, cv2, numpy\n"
           "assert torch.__file__.startswith('/usr/lib/python3/'), torch.__file__\n"
           "print('torch', torch.__version__, 'captum', captum.__version__, 'numpy', numpy.__version__, "
           "'cv2', cv2.__version__)\n"),
    # Tests that need the reference libraries fail (rather than skip) when this is set and an import fails.
    env_flag="TVE_REFERENCE_ENV",
    size="Captum, pytorch-grad-cam and OpenCV from PyPI over Debian's torch, about 230 MB on disk",
    first=("wheel",),  # grad-cam ships an sdist only, built with the pinned wheel
)

if __name__ == "__main__":
    sys.exit(main(REFERENCE, sys.argv[1:], __doc__))
