"""Python side of tve: model definitions, bundle export, data and training.

Run with Debian's interpreter (/usr/bin/python3), which has python3-torch and python3-torchvision.
"""

import os
import sys


def reexec_with_fixed_hash_seed() -> None:
    """Restarts the interpreter with PYTHONHASHSEED=0 unless it already runs with it.

    TorchScript writes a module's constants in set-iteration order, which follows Python's string
    hash seed; a fixed seed makes exported .pt files byte-identical from run to run (from the same
    checkout folder: the archives also record source file paths), so their SHA-256 in a manifest
    is reproducible.
    """
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
