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
    path.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically: a run killed mid-write keeps its last checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_data(obj, path: Path) -> None:
    """atomic_save for what load_data reads back without running code: tensors, and numbers,
    strings, None, lists and dicts around them. The tensors are stored as tensors, the rest as
    one JSON text (Debian's torch 1.13 refuses Python floats under weights_only=True)."""
    tensors: list = []

    def encode(v):
        if isinstance(v, torch.Tensor):
            tensors.append(v)
            return {"__tensor__": len(tensors) - 1}
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                return {"__dict__": {k: encode(x) for k, x in v.items()}}
            return {"__items__": [[encode(k), encode(x)] for k, x in v.items()]}
        if isinstance(v, (list, tuple)):
            return [encode(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"save_data: cannot store a {type(v).__name__}")

    text = json.dumps(encode(obj))
    atomic_save({"format": "tve-data-1", "json": text, "tensors": tensors}, path)


def load_data(path: Path, map_location: str = "cpu"):
    """What save_data stored, loaded with torch.load(weights_only=True): no code from the file
    runs, whoever wrote it. Raises ValueError naming the file when it is damaged or not one."""
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
        if not (isinstance(raw, dict) and raw.get("format") == "tve-data-1"):
            raise ValueError("not written by this version of the scripts")
        tensors = raw["tensors"]

        def decode(v):
            if isinstance(v, dict):
                if "__tensor__" in v:
                    return tensors[v["__tensor__"]]
                if "__dict__" in v:
                    return {k: decode(x) for k, x in v["__dict__"].items()}
                return {decode(k): decode(x) for k, x in v["__items__"]}
            if isinstance(v, list):
                return [decode(x) for x in v]
            return v

        return decode(json.loads(raw["json"]))
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        detail = str(e).splitlines()[0][:160] if str(e) else "no detail"
        raise ValueError(f"{path} is damaged or not a file of this project's scripts "
                         f"({type(e).__name__}: {detail})") from None


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
