"""The project's two virtual environments, made by scripts/setup.sh (--for test) or on first use, both in $TVE_CACHE (default
~/.cache/tve) from Debian's /usr/bin/python3, every package pinned and installed with --no-deps (pip
never resolves, so it never pulls a package the file does not name):

  reference  $TVE_CACHE/venv        --system-site-packages over Debian's torch 1.13.1: Captum and
             pytorch-grad-cam, which tve's methods are checked against (scripts/reference_env.py,
             scripts/requirements-reference.txt; docs/methods.md)
  torch      $TVE_CACHE/torch-venv  isolated: current PyTorch from PyPI with torchvision and timm, what
             users export their models with (scripts/torch_env.py, scripts/requirements-torch.txt;
             docs/own-model.md)

    /usr/bin/python3 scripts/reference_env.py install          # idempotent
    /usr/bin/python3 scripts/torch_env.py python               # prints the venv's interpreter
    /usr/bin/python3 scripts/torch_env.py exec -m pytest ...   # runs the venv's python (ctest)

`install` is fast when the venv already holds exactly the pinned set (a stamp file in the venv keeps
the requirements it was made from); otherwise it makes the venv anew, after one line saying what it
installs and how big it is. `python` and `exec` make a missing venv first: a demo or a user who never
needs a venv never downloads one. No heavy import here: `exec` runs on every ctest run.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_PYTHON = "/usr/bin/python3"  # Debian's, with python3-venv; never a pyenv or other python on PATH
STAMP = "tve-requirements.txt"


@dataclass(frozen=True)
class VirtualEnv:
    name: str
    folder: str  # under $TVE_CACHE
    requirements: Path
    system_site_packages: bool
    probe: str  # Python run in the new venv: imports what it is for, asserts, prints versions
    env_flag: str  # set for the processes `exec` starts: their tests fail, not skip, on a missing import
    size: str = ""  # what it installs and how big it is, measured (du -sh of the venv), for the line install prints
    first: tuple = ()  # pins installed before the rest (build requirements of an sdist)

    def dir(self) -> Path:
        # The project cache of tvelib.files.cache_dir(), without importing tvelib (it imports torch).
        return Path(os.environ.get("TVE_CACHE", Path.home() / ".cache" / "tve")) / self.folder

    def python(self) -> Path:
        return self.dir() / "bin" / "python"

    def stamp_text(self) -> str:
        version = subprocess.run([BASE_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        return f"# base: {BASE_PYTHON} {version}\n" + self.requirements.read_text()

    def pins(self) -> list[str]:
        lines = (line.split("#", 1)[0].strip() for line in self.requirements.read_text().splitlines())
        return [line for line in lines if line]

    def up_to_date(self) -> bool:
        stamp = self.dir() / STAMP
        return self.python().exists() and stamp.is_file() and stamp.read_text() == self.stamp_text()

    def check(self) -> None:
        out = subprocess.run([str(self.python()), "-c", self.probe], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"the {self.name} venv does not import its libraries:\n{out.stderr[-2000:]}")
        print(f"setup: {self.name} venv {self.dir()}: {out.stdout.strip()}", file=sys.stderr)

    def install(self) -> int:
        self.dir().parent.mkdir(parents=True, exist_ok=True)
        # Two processes may need the venv at once (ctest runs tests in parallel): one makes it, the
        # other waits and finds it made.
        with open(self.dir().parent / f".{self.folder}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._install()

    def _install(self) -> int:
        if self.up_to_date():
            print(f"setup: {self.name} venv present in {self.dir()}", file=sys.stderr)
            return 0
        target = self.dir()
        print(f"setup: making the {self.name} venv {target} from {self.requirements.name}: {self.size}", file=sys.stderr)
        if target.exists():
            shutil.rmtree(target)  # a different pin set or a broken venv: anew, so nothing stale stays
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([BASE_PYTHON, "-m", "venv", *(["--system-site-packages"] if self.system_site_packages else []),
                        str(target)], check=True)
        pip = [str(self.python()), "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
               "--disable-pip-version-check"]
        first = [p for p in self.pins() if p.split("==")[0] in self.first]
        if first:
            subprocess.run(pip + first, check=True)
        # No isolated build environment: an sdist builds with the pinned tools installed first.
        subprocess.run(pip + ["--no-build-isolation", "-r", str(self.requirements)], check=True)
        self.check()
        (target / STAMP).write_text(self.stamp_text())  # last: an interrupted install is redone next time
        return 0


def main(env: VirtualEnv, argv: list[str], usage: str) -> int:
    if not argv or argv[0] not in ("install", "python", "exec"):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "install":
        try:
            return env.install()
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            print(f"setup: {env.name} venv: {e}", file=sys.stderr)
            return 1
    python = env.python()
    if not (env.dir() / STAMP).is_file():  # first use, or an interrupted install: made now
        try:
            env.install()
        except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
            print(f"setup: {env.name} venv: {e}", file=sys.stderr)
            return 1
    if argv[0] == "python":
        print(python)
        return 0
    os.environ[env.env_flag] = str(env.dir())
    os.execv(str(python), [str(python), *argv[1:]])
