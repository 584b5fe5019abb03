"""The project's virtual environment for the reference libraries (Captum, pytorch-grad-cam) that tve's
attribution methods are checked and benchmarked against (docs/methods.md).

It lives in $TVE_CACHE/venv (default ~/.cache/tve/venv), made with
`/usr/bin/python3 -m venv --system-site-packages`, so it runs Debian's torch, torchvision, numpy,
PIL and pytest, and adds only the packages pinned in scripts/requirements-reference.txt, installed
with --no-deps (pip never resolves, so never pulls a second torch).

    /usr/bin/python3 scripts/reference_env.py install          # scripts/setup.sh; idempotent
    /usr/bin/python3 scripts/reference_env.py python           # prints the venv's interpreter
    /usr/bin/python3 scripts/reference_env.py exec -m pytest   # runs the venv's python (ctest)

`install` is fast when the venv already holds exactly the pinned set (a stamp file in the venv keeps
the requirements it was made from); otherwise it makes the venv anew. No heavy import here: `exec`
runs on every ctest run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-reference.txt"
BASE_PYTHON = "/usr/bin/python3"  # Debian's, with python3-torch; never a pyenv or other python on PATH
STAMP = "tve-requirements.txt"
# Set for the processes `exec` starts: tests that need the reference libraries fail (rather than
# skip) when this is set and an import fails.
ENV_FLAG = "TVE_REFERENCE_ENV"


def venv_dir() -> Path:
    # The project cache of tvelib.files.cache_dir(), without importing tvelib (it imports torch).
    return Path(os.environ.get("TVE_CACHE", Path.home() / ".cache" / "tve")) / "venv"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def stamp_text() -> str:
    version = subprocess.run([BASE_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return f"# base: {BASE_PYTHON} {version}\n" + REQUIREMENTS.read_text()


def pins() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def up_to_date() -> bool:
    stamp = venv_dir() / STAMP
    return venv_python().exists() and stamp.is_file() and stamp.read_text() == stamp_text()


def check(python: Path) -> None:
    """The venv imports the reference libraries, with Debian's torch."""
    probe = ("import sys, torch, torchvision, captum, pytorch_grad_cam, cv2, numpy\n"
             "assert torch.__file__.startswith('/usr/lib/python3/'), torch.__file__\n"
             "print('torch', torch.__version__, 'captum', captum.__version__, 'numpy', numpy.__version__, "
             "'cv2', cv2.__version__)\n")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the reference venv does not import its libraries:\n{out.stderr}")
    print(f"setup: reference venv {venv_dir()}: {out.stdout.strip()}", file=sys.stderr)


def install() -> int:
    if up_to_date():
        print(f"setup: reference venv present in {venv_dir()}", file=sys.stderr)
        return 0
    target = venv_dir()
    print(f"setup: making the reference venv {target} from {REQUIREMENTS.name}", file=sys.stderr)
    if target.exists():
        shutil.rmtree(target)  # a different pin set or a broken venv: anew, so nothing stale stays
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([BASE_PYTHON, "-m", "venv", "--system-site-packages", str(target)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
           "--disable-pip-version-check"]
    # grad-cam is an sdist: built with the venv's setuptools and the pinned wheel, no isolated build
    # environment (whose setuptools would be whatever is newest).
    wheel = [p for p in pins() if p.startswith("wheel==")]
    subprocess.run(pip + wheel, check=True)
    subprocess.run(pip + ["--no-build-isolation", "-r", str(REQUIREMENTS)], check=True)
    check(venv_python())
    (target / STAMP).write_text(stamp_text())  # last: an interrupted install is redone next time
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("install", "python", "exec"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "install":
        try:
            return install()
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            print(f"setup: reference venv: {e}", file=sys.stderr)
            return 1
    python = venv_python()
    if not python.exists():
        print(f"reference_env: no venv at {venv_dir()}; run `bash scripts/setup.sh` "
              f"(or `{BASE_PYTHON} scripts/reference_env.py install`)", file=sys.stderr)
        return 1
    if argv[0] == "python":
        print(python)
        return 0
    os.environ[ENV_FLAG] = str(venv_dir())
    os.execv(str(python), [str(python), *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
