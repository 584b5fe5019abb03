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

case_explain_samples() {
  run explain "$SAMPLES" --model tiny-vit --out "$WORK/res"; expect_rc 0
  json_check "len(lines) >= 3 and all(l['method'] == 'tve' and len(l['explained'][0]['values']) == 4 and len(l['outputs']['overlay']) == 1 for l in lines)"
  for f in chelsea coffee astronaut; do
    [[ -n "$(find "$WORK/res" -name "$f.jpg.overlay.png")" ]] || fail "no overlay for $f"
  done
  [[ -z "$(find "$WORK/res" -name '*.tmp')" ]] || fail "temporary files left behind"
  expect_in err "outputs in"
}

case_explain_outputs_readable_by_numpy() {
  cp "$FIXTURES/images/rgb8.png" "$WORK/x.png"
  (cd "$WORK" && "$TVE" explain x.png --model tiny-resnet --top-k 3 --out out --format npy,json >"$WORK/out.jsonl" 2>"$WORK/err"); rc=$?
  expect_rc 0
  /usr/bin/python3 - "$WORK" <<'PY' || fail "npy/json mismatch"
import json, sys, numpy as np
work = sys.argv[1]
record = json.load(open(f"{work}/out/x.png.json"))
maps = np.load(f"{work}/out/x.png.map.npy")
assert maps.shape == (3, 4, 4) and maps.dtype == np.float32, maps.shape
for k in range(3):
    assert np.allclose(maps[k], np.array(record["explained"][k]["values"], dtype=np.float32))
assert [e["index"] for e in record["explained"]] == [t["index"] for t in record["top_k"][:3]]
PY
  [[ -z "$(find "$WORK/out" -name '*.png')" ]] || fail "--format npy,json wrote an overlay"
}

case_explain_equal_names_and_stdin() {
  mkdir -p "$WORK/a" "$WORK/b"
  cp "$FIXTURES/images/rgb8.png" "$WORK/a/same.png"; cp "$FIXTURES/images/gray8.png" "$WORK/b/same.png"
  cp "$FIXTURES/images/truncated.png" "$WORK/b/bad.png"
  printf '%s\n' "$WORK/b/same.png" "$WORK/b/bad.png" > "$WORK/list"
  (cd "$WORK" && "$TVE" explain a - --model tiny-swin --out res <"$WORK/list" >"$WORK/out" 2>"$WORK/err"); rc=$?
  expect_rc 1
  json_check "len(lines) == 3 and 'error' in lines[2] and 'bad.png' in lines[2]['error'] and lines[0]['outputs']['npy'] != lines[1]['outputs']['npy']"
  [[ -f "$WORK/res/a/same.png.overlay.png" ]] || fail "a/same.png not mirrored"
  [[ -n "$(find "$WORK/res" -path '*b/same.png.overlay.png')" ]] || fail "b/same.png not mirrored"
  [[ -z "$(find "$WORK/res" -name 'bad.png*')" ]] || fail "outputs written for a bad image"
}

case_explain_class_and_options() {
  run explain "$SAMPLES/coffee.jpg" --model tiny-vit --class class-3 --colormap viridis --alpha 0.3 --no-smooth --lambda-neg 0 --out "$WORK/o"
  expect_rc 0
  json_check "lines[0]['explained'][0]['label'] == 'class-3' and lines[0]['parameters'] == {'lambda_pos': 1.0, 'lambda_neg': 0.0, 'smooth': False, 'radius': 1}"
  run explain "$SAMPLES/coffee.jpg" --model tiny-vit --class nope; expect_rc 2; expect_in err "--class 'nope'"
  run explain "$SAMPLES/coffee.jpg" --model tiny-vit --colormap rainbow; expect_rc 2
  run explain "$SAMPLES/coffee.jpg" --model tiny-vit --format gif; expect_rc 2; expect_in err "unknown output format 'gif'"
}

case_explain_occlusion() {
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --method occlusion --threads 1; expect_rc 0
  json_check "lines[0]['method'] == 'occlusion' and lines[0]['model_evaluations'] == 32"
}

case_explain_progress_only_on_terminals() {
  run explain "$SAMPLES" --model tiny-vit; expect_rc 0
  ! grep -q "images/s" "$WORK/err" || fail "progress bar drawn on a non-terminal"
  run explain "$SAMPLES" --model tiny-vit --progress always; expect_rc 0
  grep -qE '([0-9]+)/\1 images' "$WORK/err" || fail "progress bar did not reach the end: $(cat "$WORK/err")"
}

case_fit_head_then_explain() {
  /usr/bin/python3 - "$WORK/data" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for name, colour in [("blue", (40, 40, 230)), ("red", (230, 40, 40))]:
    (Path(sys.argv[1]) / name).mkdir(parents=True)
    for i in range(30):
        image = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
        y, x = rng.integers(0, 18, size=2)
        image[y:y + 14, x:x + 14] = colour
        Image.fromarray(image).save(Path(sys.argv[1]) / name / f"{i}.png")
PY
  run fit-head --model tiny-vit --data "$WORK/data" --out "$WORK/heads/colour.pt"; expect_rc 0
  json_check "lines[0]['classes'] == ['blue', 'red'] and lines[0]['held_out_images'] == 12 and lines[0]['held_out_accuracy'] >= 0.9"
  run explain "$WORK/data/red" --model tiny-vit --head-file "$WORK/heads/colour.pt" --format none --out "$WORK/o"; expect_rc 0
  json_check "len(lines) == 30 and sum(l['explained'][0]['label'] == 'red' for l in lines) >= 27 and all(l['head'] == 'colour' for l in lines)"
  printf 'a\nb\n' > "$WORK/labels.txt"
  run explain "$WORK/data/red" --model tiny-vit --head-file "$TVE_SOURCE_DIR/tests/fixtures/bundle_parts/head_nonlinear.pt" --labels "$WORK/labels.txt"
  expect_rc 3; expect_in err "not affine"
  run explain "$WORK/data/red" --model tiny-vit --head-file "$WORK/heads/colour.pt" --labels /dev/null
  expect_rc 3; expect_in err "no labels"
}

case_bench_reports_ratios() {
  # Structure and consistency only: speed is judged by scripts/benchmark.sh, never by a test.
  local images; images=$(find "$SAMPLES" -type f \( -name '*.png' -o -name '*.jpg' \) | wc -l)
  run bench "$SAMPLES" --model tiny-resnet --repeats 3 --out "$WORK/bench-out"; expect_rc 0
  json_check "len(lines) == 1 and lines[0]['model'] == 'tiny-resnet' and lines[0]['method'] == 'tve'"
  /usr/bin/python3 - "$WORK/out" "$images" <<'PY' || fail "bench report inconsistent"
import json, math, sys
r = json.loads(open(sys.argv[1]).read())
t, lat = r["throughput"], r["latency"]
assert t["images"] == int(sys.argv[2]) and t["failed"] == 0 and t["writes"], t
for key in ("pipeline_images_per_s", "compute_images_per_s", "compute_images_per_s_before", "compute_images_per_s_after"):
    assert math.isfinite(t[key]) and t[key] > 0, key
assert math.isclose(t["pipeline_over_compute"], t["pipeline_images_per_s"] / t["compute_images_per_s"], rel_tol=1e-9)
# the reported compute rate is the one of the mean time per image, before and after
mean_s = 0.5 * (1 / t["compute_images_per_s_before"] + 1 / t["compute_images_per_s_after"])
assert math.isclose(t["compute_images_per_s"], 1 / mean_s, rel_tol=1e-9)
assert math.isclose(lat["explain_over_forward"], lat["explain_ms"] / lat["forward_ms"], rel_tol=1e-9)
assert r["peak_rss_mib"] > 0
PY
  [[ $(find "$WORK/bench-out" -name '*.overlay.png' | wc -l) -eq $images ]] || fail "bench --out did not write one overlay per image"
}

case_bench_all_bad() {
  mkdir -p "$WORK/bad" && cp "$FIXTURES/images/empty.png" "$WORK/bad/a.png" && cp "$FIXTURES/images/bomb.png" "$WORK/bad/b.png"
  run bench "$WORK/bad" --model tiny-resnet --repeats 1; expect_rc 4; expect_in err "none of the 2 images could be explained"
}

case_explain_no_explainer() {
  cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/noexp"
  /usr/bin/python3 - "$WORK/noexp/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); del m["explainer"]; json.dump(m, open(sys.argv[1], "w"))
PY
  run explain "$SAMPLES/chelsea.jpg" --model "$WORK/noexp"; expect_rc 3; expect_in err "no explainer"
  run explain "$SAMPLES/chelsea.jpg" --model "$WORK/noexp" --method occlusion; expect_rc 0
}

case_explain_bad_head_file() {
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --head-file "$WORK/missing.pt"; expect_rc 3
  expect_in err "missing.pt: head file does not exist"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --head-file "$TVE_SOURCE_DIR/tests/fixtures/bundle_parts/not_torchscript.pt" --labels "$WORK/none.txt"
  expect_rc 3; expect_in err "none.txt: cannot open labels file"
  printf 'a\nb\n' > "$WORK/labels.txt"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --head-file "$TVE_SOURCE_DIR/tests/fixtures/bundle_parts/not_torchscript.pt" --labels "$WORK/labels.txt"
  expect_rc 3; expect_in err "not a loadable TorchScript module"
  run fit-head --model tiny-vit --data "$WORK/nothing" --out "$WORK/h.pt"; expect_rc 2; expect_in err "one sub-folder per class"
  [[ ! -e "$WORK/h.pt" ]] || fail "a head was written"
  mkdir -p "$WORK/d/a" "$WORK/d/b"; cp "$FIXTURES/images/rgb8.png" "$WORK/d/a/"; cp "$FIXTURES/images/gray8.png" "$WORK/d/b/"
  printf 'x' > "$WORK/file"
  run fit-head --model tiny-vit --data "$WORK/d" --out "$WORK/file/h.pt"; expect_rc 7; expect_in err "file/h.pt"
}

case_blas_kernels_fit_the_cpu() {
  # Debian's OpenBLAS 0.3.21 gives CPUs newer than its table its generic SSE3 kernels ("Prescott");
  # tve then restarts itself with OPENBLAS_CORETYPE set to what the CPU runs (runtime.hpp), and
  # warns when the kernels still do not fit, as when the user set the variable.
  env -u OPENBLAS_CORETYPE "$TVE" predict "$FIXTURES/images/rgb8.png" --model tiny-vit -v \
      >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?
  expect_rc 0; expect_in err " kernels"
  ! grep -qF "OpenBLAS runs its" "$WORK/err" || fail "kernels still generic: $(cat "$WORK/err")"
  if grep -qw avx2 /proc/cpuinfo; then
    OPENBLAS_CORETYPE=Prescott "$TVE" predict "$FIXTURES/images/rgb8.png" --model tiny-vit \
        >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?
    expect_rc 0; expect_in err "OpenBLAS runs its Prescott kernels"; expect_in err ", Prescott kernels"
    json_check "len(lines) == 1"
  fi
}

"case_$1"
echo "PASS: $1"
