# What every CLI test script shares (sourced by cli_test.sh and the hostile_*.sh suites): the real
# binary ($TVE) and source tree ($TVE_SOURCE_DIR), a scratch folder $WORK removed at exit, and the
# checks. A script sets RUN_TIMEOUT (seconds) before sourcing this to bound every tve run.
set -uo pipefail

: "${TVE:?set TVE to the tve binary}"
: "${TVE_SOURCE_DIR:?set TVE_SOURCE_DIR to the source tree}"
FIXTURES="$TVE_SOURCE_DIR/tests/fixtures"
SAMPLES="$TVE_SOURCE_DIR/data/samples"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TVE_MODELS_DIR=""  # only --models-dir and the shipped models/ count in these tests
PY=/usr/bin/python3

fail() { echo "FAIL: $*" >&2; exit 1; }

# run ARGS...: runs tve (RUN_TIMEOUT seconds at most, when set: a pipe must not hang a test),
# leaving stdout in $WORK/out, stderr in $WORK/err, exit code in $rc.
run() {
  if [[ -n ${RUN_TIMEOUT:-} ]]; then
    timeout "$RUN_TIMEOUT" "$TVE" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
    rc=$?
    [[ $rc -ne 124 ]] || fail "tve $* did not end within $RUN_TIMEOUT s"
  else
    "$TVE" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
    rc=$?
  fi
}
expect_rc() { [[ $rc -eq $1 ]] || fail "exit code $rc, expected $1; stderr: $(head -c 3000 "$WORK/err")"; }
expect_in() { grep -qF -- "$2" "$WORK/$1" || fail "$1 lacks '$2': $(head -c 3000 "$WORK/$1")"; }
not_in() { ! grep -qF -- "$2" "$WORK/$1" || fail "$1 has '$2': $(head -c 3000 "$WORK/$1")"; }
# py CODE ARGS...: a Python check; a failed assert fails the case.
py() { local code=$1; shift; "$PY" -c "$code" "$@" || fail "check failed: $code"; }

# json_check PYTHON_EXPR: every stdout line parses as JSON; EXPR (over `lines`, a list) holds.
json_check() {
  "$PY" - "$WORK/out" "$1" <<'PY' || fail "JSON check failed: $1"
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
ok = eval(sys.argv[2])
if not ok:
    print(json.dumps(lines, indent=1)[:3000], file=sys.stderr)
    sys.exit(1)
PY
}

# as_unprivileged CMD...: runs CMD as user nobody when the tests run as root (CI does), so that
# permissions mean something; as is otherwise. Returns 99 when that is impossible here.
as_unprivileged() {
  if [[ $(id -u) -ne 0 ]]; then "$@"; return; fi
  command -v setpriv >/dev/null || return 99
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"
}

# images N DIR: N distinct small images (different content, so maps and curves differ).
images() {
  mkdir -p "$2"
  "$PY" - "$1" "$2" <<'PY' || fail "could not make images"
import sys
from PIL import Image, ImageDraw
n, folder = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    image = Image.new("RGB", (48, 40), (20 * (i % 12), 90, 200 - 15 * (i % 13)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4 + 2 * (i % 9), 6, 30 + i % 7, 34), fill=(250, 240 - 9 * (i % 20), 10))
    image.save(f"{folder}/img-{i:03d}.png")
PY
}
