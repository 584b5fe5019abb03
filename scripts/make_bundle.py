#!/usr/bin/python3
"""Makes a tve bundle from your own classifier: the command line of tvelib/cli_bundle.py (its --help
says it all), run from the source tree. Installed as a package (pip install scripts/) it is
`tve-bundle`; docs/own-model.md."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib.cli_bundle import main  # noqa: E402

if __name__ == "__main__":
    main()
