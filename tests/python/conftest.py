import sys
from pathlib import Path

# Let tests import the scripts' package (scripts/tvelib) without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
