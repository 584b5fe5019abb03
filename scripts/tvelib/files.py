"""Files that appear whole or not at all, and the project cache.

Every writer in tvelib goes through replace_atomically: the content is written to a temporary
name next to the destination, then renamed over it, so a run killed mid-write leaves the old file
(or none), never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch


def cache_dir() -> Path:
    """$TVE_CACHE (default ~/.cache/tve), created if missing: decoded sources, npm packages,
    training runs, occlusion caches."""
    path = Path(os.environ.get("TVE_CACHE", Path.home() / ".cache" / "tve"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def replace_atomically(path: Path, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """write(temporary) then rename the temporary to `path`. `suffix` ends the temporary's name
    (np.savez appends .npz to a name without it)."""
    tmp = path.with_name(path.name + suffix)
    write(tmp)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically: a run killed mid-write keeps its last checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def write_json(path: Path, obj) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def atomic_savez(path: Path, **arrays) -> None:
    replace_atomically(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")


def find_tve(given: Optional[Path]) -> Optional[Path]:
    """The tve binary scripts call to check their results: `given` (ValueError when it is not a
    file), else the source tree's build/tve, else tve on PATH, else None."""
    if given is not None:
        if not Path(given).is_file():
            raise ValueError(f"--tve {given}: no such file")
        return Path(given)
    for candidate in (Path(__file__).resolve().parents[2] / "build" / "tve", shutil.which("tve")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
