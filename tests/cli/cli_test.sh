#!/usr/bin/env bash
# CLI smoke tests: the real binary on real files. Usage: TVE=path/to/tve cli_test.sh CASE
# Each case checks stdout, stderr and the exit code (documented in README.md, "Exit codes").
set -uo pipefail

: "${TVE:?set TVE to the tve binary}"
: "${TVE_SOURCE_DIR:?set TVE_SOURCE_DIR to the source tree}"
FIXTURES="$TVE_SOURCE_DIR/tests/fixtures"
SAMPLES="$TVE_SOURCE_DIR/data/samples"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TVE_MODELS_DIR=""  # only --models-dir and the shipped models/ count in these tests

fail() { echo "FAIL: $*" >&2; exit 1; }

# run ARGS...: runs tve, leaving stdout in $WORK/out, stderr in $WORK/err, exit code in $rc
run() {
  "$TVE" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
  rc=$?
}
expect_rc() { [[ $rc -eq $1 ]] || fail "exit code $rc, expected $1; stderr: $(cat "$WORK/err")"; }
expect_in() { grep -qF -- "$2" "$WORK/$1" || fail "$1 lacks '$2': $(head -c 2000 "$WORK/$1")"; }

# json_check PYTHON_EXPR: every stdout line parses as JSON; EXPR (over `lines`, a list) holds.
json_check() {
  /usr/bin/python3 - "$WORK/out" "$1" <<'PY' || fail "JSON check failed: $1"
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
ok = eval(sys.argv[2])
if not ok:
    print(json.dumps(lines, indent=1)[:3000], file=sys.stderr)
    sys.exit(1)
PY
}

case_version() {
  run --version; expect_rc 0; expect_in out "tve 0."
}

case_help() {
  run --help; expect_rc 0; expect_in out "Examples:"; expect_in out "Exit codes:"
  run predict --help; expect_rc 0; expect_in out "--top-k"
}

case_models_lists_tiny_bundles() {
  run models; expect_rc 0
  for name in tiny-vit tiny-resnet tiny-swin; do expect_in out "$name"; done
  expect_in out "explainer yes"
}

case_models_json() {
  run models --json; expect_rc 0
  json_check "all('name' in l and 'architecture' in l for l in lines) and any(l['name']=='tiny-vit' and l['grid']==4 and l['explainer'] for l in lines)"
}

case_models_check_detects_corruption() {
  cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/tiny-vit"
  printf 'garbage' >> "$WORK/tiny-vit/target.pt"
  run models --check --models-dir "$WORK"; expect_rc 3
  expect_in out "INVALID"; expect_in out "target.pt: SHA-256 is"
}

case_predict_samples() {
  run predict "$SAMPLES" --model tiny-vit --top-k 3; expect_rc 0
  json_check "len(lines) >= 3 and all(len(l['top_k']) == 3 and l['class']['label'].startswith('class-') and abs(sum(t['probability'] for t in l['top_k'])) <= 1.0001 and l['top_k'][0]['probability'] >= l['top_k'][1]['probability'] for l in lines)"
  expect_in err "threads:"
}

case_predict_folder_and_stdin() {
  mkdir -p "$WORK/in/sub"
  cp "$FIXTURES/images/rgb8.png" "$WORK/in/a.png"; cp "$FIXTURES/images/gray16.png" "$WORK/in/sub/b.png"
  printf '%s\n' "$FIXTURES/images/rgba.png" > "$WORK/list"
  "$TVE" predict "$WORK/in" - --model tiny-resnet <"$WORK/list" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0
  json_check "[l['input'].split('/')[-1] for l in lines] == ['a.png', 'b.png', 'rgba.png']"
}

case_predict_bad_image_in_batch() {
  run predict "$FIXTURES/images/rgb8.png" "$FIXTURES/images/truncated.png" "$FIXTURES/images/gray8.png" \
      --model tiny-vit --batch-size 2; expect_rc 1
  json_check "len(lines) == 3 and 'error' in lines[1] and 'truncated.png' in lines[1]['error'] and 'class' in lines[0] and 'class' in lines[2]"
  expect_in err "truncated.png: PNG is truncated"
}

case_predict_all_bad() {
  run predict "$FIXTURES/images/empty.png" "$FIXTURES/images/bomb.png" --model tiny-vit; expect_rc 4
  json_check "len(lines) == 2 and all('error' in l for l in lines) and 'refused before decoding' in lines[1]['error']"
}

case_predict_no_inputs() {
  mkdir -p "$WORK/empty"
  run predict "$WORK/empty" --model tiny-vit; expect_rc 4; expect_in err "no images found"
}

case_predict_unknown_model() {
  run predict "$SAMPLES" --model no-such-model; expect_rc 3
  expect_in err "no bundle named 'no-such-model'"; expect_in err "tiny-vit"
  [[ ! -s "$WORK/out" ]] || fail "stdout should be empty"
}

case_predict_corrupt_bundle() {
  cp -r "$TVE_SOURCE_DIR/models/tiny-swin" "$WORK/broken"
  /usr/bin/python3 - "$WORK/broken/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); m["embedding_dim"] = 7; json.dump(m, open(sys.argv[1], "w"))
PY
  run predict "$SAMPLES" --model "$WORK/broken"; expect_rc 3
  expect_in err "target.pt: embed() gives [1, 32], expected [1, 7]"
}

case_predict_cuda_unavailable() {
  if "$TVE" predict "$SAMPLES/chelsea.jpg" --model tiny-vit --device cuda >/dev/null 2>&1; then
    echo "CUDA present: nothing to check"; return 0
  fi
  run predict "$SAMPLES/chelsea.jpg" --model tiny-vit --device cuda; expect_rc 5; expect_in err "--device cuda"
}

case_predict_usage_error() {
  run predict; expect_rc 2
  run predict "$SAMPLES" --top-k 0; expect_rc 2
  run predict "$SAMPLES" --model tiny-vit --head nope; expect_rc 2; expect_in err "no head 'nope'"
}

case_predict_downstream_head() {
  run predict "$SAMPLES" --model tiny-vit --head parity; expect_rc 0
  json_check "all(l['head'] == 'parity' and l['class']['label'] in ('even', 'odd') and len(l['top_k']) == 2 for l in lines)"
}

case_predict_odd_names() {
  mkdir -p "$WORK/dir with spaces"
  cp "$FIXTURES/images/odd name ü.png" "$WORK/dir with spaces/"
  cp "$FIXTURES/images/rgb8.png" "$WORK/dir with spaces/-starts-with-dash.png"
  cp "$FIXTURES/images/rgb8.png" "$WORK/dir with spaces/no_extension"
  run predict "$WORK/dir with spaces" "$WORK/dir with spaces/no_extension" --model tiny-vit --threads 1; expect_rc 0
  json_check "len(lines) == 3 and lines[1]['input'].endswith('odd name ü.png') and lines[2]['input'].endswith('no_extension')"
}

"case_$1"
echo "PASS: $1"
