#!/usr/bin/python3
"""Trains a TVE explainer into a bundle: the command line of tvelib/cli_train.py (its --help says it
all), run from the source tree (also under torchrun). Installed as a package (pip install scripts/)
it is `tve-train`; docs/own-model.md."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib.cli_train import main  # noqa: E402

if __name__ == "__main__":
    main()
