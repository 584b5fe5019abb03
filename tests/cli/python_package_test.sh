# The user tools as an installed Python package (scripts/pyproject.toml, docs/own-model.md): built
# offline from the source tree, installed into a scratch venv, its console scripts run and the
# bundle tve-bundle makes loads, under each torch a user may have:
#   debian_torch   a venv with --system-site-packages over Debian's python (torch 1.13), installed
#                  with `pip install --no-build-isolation --no-deps` from the source, as documented;
#   current_torch  a venv that sees only the current-torch venv's packages (torch 2.x from PyPI,
#                  scripts/torch_env.py), installing the wheel Debian's python built from the source:
#                  that venv has setuptools but not `wheel`, which an offline build needs.
# The scratch venvs use their interpreter's pip (no download, --no-index): nothing is fetched.
RUN_TIMEOUT=120
source "$(dirname "$0")/harness.sh"

# A copy of the package's sources: setuptools builds in the project folder (build/, *.egg-info),
# which must not be the shared source tree.
SRC="$WORK/src"
mkdir -p "$SRC"
cp -r "$TVE_SOURCE_DIR/scripts/pyproject.toml" "$TVE_SOURCE_DIR/scripts/tvelib" "$SRC/"
rm -rf "$SRC/tvelib/__pycache__"

# exercise VENV_PYTHON TORCH_MAJOR: the console scripts and a bundle, from outside the source tree.
exercise() {
  local python=$1 major=$2 bin
  bin=$(dirname "$python")
  cd "$WORK" || fail "no $WORK"
  for tool in tve-bundle tve-train; do
    [[ -x $bin/$tool ]] || fail "the install made no $bin/$tool"
    timeout "$RUN_TIMEOUT" "$bin/$tool" --help >"$WORK/out" 2>"$WORK/err" || fail "$tool --help: $(head -c 2000 "$WORK/err")"
    expect_in out "usage: $tool"
  done
  expect_in out "--images"
  timeout "$RUN_TIMEOUT" "$bin/tve-bundle" --torchvision resnet18 --num-classes 3 --image-size 64 \
    --out "$WORK/bundle" --tve "$TVE" >"$WORK/out" 2>"$WORK/err" || fail "tve-bundle failed: $(head -c 3000 "$WORK/err")"
  expect_in out "next:"
  # A bad input is one line naming the command as typed and the file.
  timeout "$RUN_TIMEOUT" "$bin/tve-bundle" --torchvision resnet18 --labels "$WORK/none.txt" --out "$WORK/b2" \
    >"$WORK/out" 2>"$WORK/err"
  rc=$?
  expect_rc 2
  expect_in err "tve-bundle: error: $WORK/none.txt: cannot read labels"
  [[ ! -e $WORK/b2 ]] || fail "a refused tve-bundle left $WORK/b2"
  "$python" - "$WORK/bundle" "$major" "$(dirname "$bin")" <<'PY' || fail "the bundle does not load in the installed package"
import sys
from pathlib import Path
import torch
import tvelib
from tvelib.bundle import Bundle
bundle, major, prefix = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).resolve()
assert torch.__version__.split(".")[0] == major, torch.__version__
assert Path(tvelib.__file__).resolve().is_relative_to(prefix), ("tvelib not from the venv", tvelib.__file__)
b = Bundle(bundle)
assert b.input_size == 64 and len(b.labels) == 3, (b.input_size, b.labels)
assert b.manifest["provenance"]["torch"] == torch.__version__, b.manifest["provenance"]
with torch.no_grad():
    logits = b.target(b.normalise(torch.rand(2, 3, 64, 64)))
assert tuple(logits.shape) == (2, 3), logits.shape
print("torch", torch.__version__, "bundle", b.manifest["name"], "logits", tuple(logits.shape))
PY
  "$TVE" predict --model "$WORK/bundle" "$SAMPLES"/$(ls "$SAMPLES" | head -1) >"$WORK/out" 2>"$WORK/err" \
    || fail "tve predict on the bundle failed: $(head -c 2000 "$WORK/err")"
}

case_debian_torch() {
  /usr/bin/python3 -m venv --system-site-packages --without-pip "$WORK/venv" || fail "venv failed"
  "$WORK/venv/bin/python" -m pip install -q --no-index --no-build-isolation --no-deps "$SRC" >"$WORK/out" 2>"$WORK/err" \
    || fail "pip install from the source failed: $(tail -c 3000 "$WORK/err")"
  exercise "$WORK/venv/bin/python" 1
}

case_current_torch() {
  local torch_python site
  torch_python=$(/usr/bin/python3 "$TVE_SOURCE_DIR/scripts/torch_env.py" python) || fail "no current-torch venv"
  site=$("$torch_python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") || fail "no purelib"
  /usr/bin/python3 -m pip wheel -q --no-index --no-build-isolation --no-deps -w "$WORK/dist" "$SRC" \
    >"$WORK/out" 2>"$WORK/err" || fail "building the wheel failed: $(tail -c 3000 "$WORK/err")"
  # The scratch venv sees the current-torch venv's packages (a .pth), not Debian's.
  "$torch_python" -m venv --without-pip "$WORK/venv" || fail "venv failed"
  echo "$site" >"$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/current-torch.pth"
  "$WORK/venv/bin/python" -m pip install -q --no-index --no-deps "$WORK"/dist/tve_tools-*.whl >"$WORK/out" 2>"$WORK/err" \
    || fail "pip install of the wheel failed: $(tail -c 3000 "$WORK/err")"
  exercise "$WORK/venv/bin/python" 2
}

"case_$1"
echo "PASS: $1"
