#!/usr/bin/env bash
# CLI smoke tests: the real binary on real files. Usage: TVE=path/to/tve cli_test.sh CASE
# Each case checks stdout, stderr and the exit code (documented in README.md, "Exit codes").
source "$(dirname "$0")/harness.sh"

# copies N NAME: N distinct copies of a small fixture image in $WORK/NAME (distinct files, so that
# no two are the same input).
copies() {
  mkdir -p "$WORK/$2"
  for ((i = 0; i < $1; i++)); do cp "$FIXTURES/images/rgb8.png" "$WORK/$2/img-$(printf %04d "$i").png"; done
}

case_version() {
  run --version; expect_rc 0; expect_in out "tve 0."
  # Debian's LibTorch 1.13 has no CUDA; the cuda flavour's (PyPI's 2.x) has it compiled in, GPU or
  # not (it once said "no CUDA compiled" on a machine without a GPU: torch::hasCUDA() asks the machine).
  if grep -q "^LibTorch 1\." "$WORK/out"; then expect_in out "no CUDA compiled"; else expect_in out "cuda (compiled in"; fi
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
  # --model checks one bundle, by folder or name (what scripts/make_bundle.py runs)
  run models --check --model "$WORK/tiny-vit"; expect_rc 3; expect_in out "INVALID"
  run models --check --model tiny-resnet --json; expect_rc 0
  json_check "len(lines) == 1 and lines[0]['name'] == 'tiny-resnet' and 'error' not in lines[0]"
  run models --check --model "$WORK/no-such-bundle"; expect_rc 3; expect_in err "no-such-bundle"
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
  # The cause named is the true one: a CPU-only build, or a CUDA build without a usable GPU.
  if "$TVE" --version | grep -q "no CUDA compiled"; then expect_in err "CPU-only build"; else expect_in err "sees no usable CUDA device"; fi
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

case_explain_lanes_change_nothing() {
  # 40 inputs (one truncated) in batches of 4, computed in 2 lanes and in one: the same records in
  # the same order, the same .npy bytes, the log says the lanes; predict has no lanes to ask for.
  copies 39 in
  cp "$FIXTURES/images/truncated.png" "$WORK/in/img-0017-bad.png"
  run explain "$WORK/in" --model tiny-swin --batch-size 4 --threads 1 --lanes 2 --format npy,json --out "$WORK/two"
  expect_rc 1
  expect_in err "2 lanes"
  mv "$WORK/out" "$WORK/two.jsonl"
  run explain "$WORK/in" --model tiny-swin --batch-size 4 --threads 1 --format npy,json --out "$WORK/one"; expect_rc 1
  /usr/bin/python3 - "$WORK" <<'PY' || fail "lanes changed the results"
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
two = [json.loads(l) for l in open(work / "two.jsonl")]
one = [json.loads(l) for l in open(work / "out")]
assert len(one) == len(two) == 40, (len(one), len(two))
for a, b in zip(one, two):
    assert a["input"] == b["input"], (a["input"], b["input"])
    assert a.get("explained") == b.get("explained") and ("error" in a) == ("error" in b), a["input"]
assert sum("error" in r for r in two) == 1 and "img-0017-bad.png" in [r for r in two if "error" in r][0]["input"]
npys = sorted(p.relative_to(work / "one") for p in (work / "one").rglob("*.map.npy"))
assert len(npys) == 39, len(npys)
for p in npys:
    assert (work / "one" / p).read_bytes() == (work / "two" / p).read_bytes(), p
PY
  run predict "$WORK/in" --model tiny-swin --lanes 2; expect_rc 2
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
  # Structure and consistency only: speed is judged by scripts/maintainer/benchmark.sh, never by a test.
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

case_bench_every_method() {
  # Gradient methods need autograd on the classes the forward pass picks: bench once stopped them
  # with an internal error (exit 6) that explain and eval did not have.
  local method
  for method in tve gradcam gradcam++ saliency "smoothgrad --samples 2" "ig --steps 2" occlusion; do
    # shellcheck disable=SC2086  # the method's own options split off on purpose
    run bench --model tiny-resnet --method $method --repeats 1; expect_rc 0
    json_check "lines[0]['method'] == '${method%% *}' and lines[0]['latency']['explain_ms'] > 0"
  done
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
  # ...and says how to get one, and what works meanwhile
  expect_in err "scripts/train_explainer.py --model $WORK/noexp --images"; expect_in err "--method gradcam"
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

case_stdout_write_error() {
  # A result that cannot be written is an error, never a silent cut (exit 7: output not written).
  "$TVE" explain "$SAMPLES/chelsea.jpg" --model tiny-vit >/dev/full 2>"$WORK/err" </dev/null; rc=$?
  expect_rc 7; expect_in err "stdout: cannot write results"
  "$TVE" predict "$SAMPLES" --model tiny-vit >/dev/full 2>"$WORK/err" </dev/null; rc=$?
  expect_rc 7; expect_in err "stdout"
  for listing in "--json" ""; do
    # shellcheck disable=SC2086
    "$TVE" models $listing >/dev/full 2>"$WORK/err" </dev/null; rc=$?
    expect_rc 7; expect_in err "stdout"
  done
}

case_explain_out_inside_inputs() {
  copies 3 in
  for round in 1 2 3; do
    run explain "$WORK/in" --model tiny-vit --out "$WORK/in/res"; expect_rc 0
    json_check "len(lines) == 3"
  done
  expect_in err "in the output folder are not taken as inputs"
  # Listed paths too (find | tve explain -), and the same file named twice is explained once.
  (find "$WORK/in" -type f; echo "$WORK/in/img-0000.png"; echo "$WORK/in/./img-0001.png") >"$WORK/list"
  "$TVE" explain - --model tiny-vit --out "$WORK/in/res" <"$WORK/list" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0; json_check "len(lines) == 3"; expect_in err "given more than once are explained once"
}

case_explain_out_unusable() {
  printf 'x' >"$WORK/file"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --out "$WORK/file"; expect_rc 7
  expect_in err "file: exists and is not a folder"
  ! grep -q "threads:" "$WORK/err" || fail "the model was loaded before the output folder was checked"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --out "$WORK/file/sub"; expect_rc 7; expect_in err "file/sub"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --out ""; expect_rc 7; expect_in err "--out names no folder"
  mkdir -p "$WORK/readonly"; chmod 755 "$WORK" "$WORK/readonly"
  as_unprivileged "$TVE" explain "$SAMPLES/chelsea.jpg" --model tiny-vit --out "$WORK/readonly" >"$WORK/out" 2>"$WORK/err" </dev/null
  rc=$?
  [[ $rc -eq 99 ]] && { echo "cannot drop privileges here: read-only case not run"; return 0; }
  expect_rc 7; expect_in err "readonly"
  [[ ! -s "$WORK/out" ]] || fail "stdout should be empty"
}

case_explain_signal_leaves_no_temporaries() {
  # Stale temporaries of killed runs (this naming and tve 0.x's) are removed; a live process's are kept.
  mkdir -p "$WORK/res0/sub"
  true & local dead=$!; wait $dead
  local host; host=$(hostname | sed 's/[^A-Za-z0-9]/_/g')
  touch "$WORK/res0/sub/.a.png.json.$host-$dead-17.tve.tmp" "$WORK/res0/.b.png.map.npy.$dead.42.tmp" \
        "$WORK/res0/.c.png.json.$host-$$-5.tve.tmp" "$WORK/res0/.d.png.json.otherhost-$dead-5.tve.tmp"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --out "$WORK/res0"; expect_rc 0
  expect_in err "removed 2 temporary file(s)"
  [[ ! -e "$WORK/res0/sub/.a.png.json.$host-$dead-17.tve.tmp" && ! -e "$WORK/res0/.b.png.map.npy.$dead.42.tmp" ]] || fail "stale temporaries kept"
  [[ -e "$WORK/res0/.c.png.json.$host-$$-5.tve.tmp" ]] || fail "a live process's temporary was removed"
  [[ -e "$WORK/res0/.d.png.json.otherhost-$dead-5.tve.tmp" ]] || fail "another host's temporary was removed"
  # SIGINT and SIGTERM in the middle of a run: no temporary left, the process ends by the signal.
  copies 300 in
  for signal in INT TERM; do
    rm -rf "$WORK/res"
    "$TVE" explain "$WORK/in" --model tiny-vit --method occlusion --batch-size 1 --threads 1 --out "$WORK/res" \
        >"$WORK/out.jsonl" 2>"$WORK/err" </dev/null &
    local pid=$!
    for ((i = 0; i < 3000; i++)); do
      [[ $(find "$WORK/res" -name '*.json' 2>/dev/null | wc -l) -ge 3 ]] && break
      sleep 0.01
    done
    kill -s "$signal" $pid; wait $pid; rc=$?
    local expected=$((128 + $(kill -l "$signal")))
    [[ $rc -eq $expected ]] || fail "SIG$signal: exit status $rc, expected $expected; $(tail -3 "$WORK/err")"
    [[ -z "$(find "$WORK/res" -name '*.tmp')" ]] || fail "SIG$signal left temporaries: $(find "$WORK/res" -name '*.tmp')"
    local done; done=$(find "$WORK/res" -name '*.json' | wc -l)
    [[ $done -ge 3 && $done -lt 300 ]] || fail "SIG$signal did not land mid-run ($done of 300 done)"
  done
}

case_explain_scan_reports_what_it_skips() {
  copies 2 in
  mkdir -p "$WORK/in/sub" "$WORK/in/locked"
  cp "$FIXTURES/images/gray8.png" "$WORK/in/sub/ok.png"; cp "$FIXTURES/images/gray8.png" "$WORK/in/locked/hidden.png"
  ln -s "$WORK/nowhere.png" "$WORK/in/dangling.png"
  ln -s self.png "$WORK/in/self.png"
  ln -s .. "$WORK/in/sub/up"
  ln -s sub "$WORK/in/sub-link"          # a link to a folder is followed: sub/ok.png is one input
  chmod -R a+rX "$WORK"; chmod 000 "$WORK/in/locked"
  as_unprivileged "$TVE" explain "$WORK/in" --model tiny-vit >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?
  [[ $rc -eq 99 ]] && { echo "cannot drop privileges here"; return 0; }
  expect_rc 1
  json_check "sorted(l['input'].split('/in/')[1] for l in lines if 'error' not in l) == ['img-0000.png', 'img-0001.png', 'sub/ok.png']"
  json_check "sorted(l['input'].split('/in/')[1] for l in lines if 'error' in l) == ['dangling.png', 'locked', 'self.png', 'sub-link/up', 'sub/up']"
  expect_in err "dangling.png: broken symbolic link"; expect_in err "self.png: symbolic link loop"
  expect_in err "sub/up: symbolic link loop"; expect_in err "locked: cannot read folder"
}

case_explain_non_finite() {
  for option in "--lambda-pos nan" "--lambda-neg inf" "--alpha nan" "--lambda-pos -inf"; do
    # shellcheck disable=SC2086
    run explain "$SAMPLES/chelsea.jpg" --model tiny-vit $option; expect_rc 2; expect_in err "finite"
  done
  run fit-head --model tiny-vit --data "$WORK" --out "$WORK/h.pt" --held-out nan; expect_rc 2
  # Finite options whose map overflows float32: the image fails, naming the cause, nothing is written.
  run explain "$SAMPLES/chelsea.jpg" "$SAMPLES/coffee.jpg" --model tiny-vit --lambda-pos 1e300 --out "$WORK/o"; expect_rc 4
  json_check "len(lines) == 2 and all('not finite' in l['error'] for l in lines)"
  [[ -z "$(find "$WORK/o" -name '*.png' -o -name '*.npy')" ]] || fail "outputs written for a non-finite map"
}

case_explain_calibration_ignores_batch_size() {
  copies 40 in
  run explain "$WORK/in" --model tiny-vit --batch-size 4096 --format none; expect_rc 0
  json_check "len(lines) == 40"
  expect_in err "on a batch of 8"
}

case_eval_compares_methods() {
  mkdir -p "$WORK/in"
  cp "$SAMPLES/chelsea.jpg" "$WORK/in/cat.jpg"
  cp "$SAMPLES/coffee.jpg" "$WORK/in/cup.jpg"
  head -c 3000 "$SAMPLES/astronaut.jpg" > "$WORK/in/truncated.jpg"
  # A mask for the cat (the right half of the image), and one of the wrong size for the cup.
  /usr/bin/python3 - "$WORK/in" <<'PY'
import sys
from pathlib import Path
from PIL import Image
folder = Path(sys.argv[1])
w, h = Image.open(folder / "cat.jpg").size
mask = Image.new("L", (w, h), 0)
mask.paste(255, (w // 2, 0, w, h))
mask.save(folder / "cat.mask.png")
Image.new("L", (7, 7), 255).save(folder / "cup.mask.png")
PY
  local methods=tve,gradcam,gradcam++,saliency,smoothgrad,ig,rise,kernelshap,occlusion
  run eval "$WORK/in" --model tiny-vit --methods "$methods" --samples 30 --steps 4 --out "$WORK/o" --threads 1
  expect_rc 1  # the truncated image failed, the others were evaluated
  expect_in err "2 mask file(s) not taken as images"
  for name in ${methods//,/ }; do expect_in out "| $name |"; done
  cmp -s "$WORK/out" "$WORK/o/table.md" || fail "the table printed is not table.md"
  /usr/bin/python3 - "$WORK/o" "$methods" <<'PY' || fail "eval outputs"
import json, sys
from pathlib import Path
from PIL import Image
out, methods = Path(sys.argv[1]), sys.argv[2].split(",")
records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
errors = [r for r in records if "error" in r]
assert len(errors) == 1 and errors[0]["input"].endswith("truncated.jpg"), errors
good = [r for r in records if "error" not in r]
assert len(good) == 2 * len(methods), len(good)
for r in good:
    assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
    assert len(r["deletion_curve"]) == 5 and len(r["insertion_curve"]) == 5  # grid 4: G + 1 points
    # Both curves end where the other starts: nothing removed = everything inserted, and back.
    assert abs(r["deletion_curve"][0] - r["insertion_curve"][-1]) < 1e-5
    assert abs(r["deletion_curve"][-1] - r["insertion_curve"][0]) < 1e-5
    assert abs(r["deletion_curve"][0] - r["class"]["probability"]) < 1e-5
    assert r["cost"]["ms"] > 0 and r["cost"]["forward_equivalents"] > 0
    assert -1 <= r["fidelity"]["spearman"] <= 1
    if r["method"] == "occlusion":
        assert r["fidelity"]["spearman"] > 0.999 and r["cost"]["forward_passes"] == 33  # G = 4: 2 x 16 masked passes and the one that picks the class
    if r["input"].endswith("cat.jpg"):
        share = r["mask"]["above_median_share_on_object"]  # None for a flat map (no mass above its median)
        assert r["mask"]["file"].endswith("cat.mask.png") and (share is None or 0 <= share <= 1), r["mask"]
        assert isinstance(r["mask"]["pointing_hit"], bool)
    else:
        assert "7x7" in r["mask"]["error"] and "pointing_hit" not in r["mask"], r["mask"]
summary = json.loads((out / "summary.json").read_text())
assert summary["images"] == 2 and summary["failed"] == 1 and set(summary["methods"]) == set(methods)
tve = summary["methods"]["tve"]
assert tve["deletion_auc"]["count"] == 2 and tve["deletion_auc"]["low"] <= tve["deletion_auc"]["median"] <= tve["deletion_auc"]["high"]
assert tve["pointing_game"]["count"] == 1  # only the cat has a usable mask
assert Image.open(out / "curves.png").size[0] > 600
assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporaries left"
PY
  # Random methods are reproducible: the same seed gives the same curves.
  run eval "$WORK/in/cat.jpg" --model tiny-vit --methods rise,kernelshap,smoothgrad --samples 30 --seed 5 --out "$WORK/a" --no-fidelity
  expect_rc 0
  run eval "$WORK/in/cat.jpg" --model tiny-vit --methods rise,kernelshap,smoothgrad --samples 30 --seed 5 --out "$WORK/b" --no-fidelity
  expect_rc 0
  /usr/bin/python3 - "$WORK/a/results.jsonl" "$WORK/b/results.jsonl" <<'PY' || fail "same seed, other curves"
import json, sys
a, b = ([json.loads(l) for l in open(f)] for f in sys.argv[1:])
assert [(r["method"], r["deletion_curve"], r["insertion_curve"]) for r in a] == \
       [(r["method"], r["deletion_curve"], r["insertion_curve"]) for r in b]
assert all("fidelity" not in r for r in a)
PY
  # Bad requests: an unknown method, an unusable --out, nothing to evaluate.
  run eval "$WORK/in" --model tiny-vit --methods tve,nope --out "$WORK/c"; expect_rc 2
  : > "$WORK/file"
  run eval "$WORK/in" --model tiny-vit --out "$WORK/file/o"; expect_rc 7
  mkdir -p "$WORK/empty"
  run eval "$WORK/empty" --model tiny-vit --out "$WORK/d"; expect_rc 4
  [[ ! -e "$WORK/d/results.jsonl" ]] || fail "results written with no input"
}

case_explain_expect_golden() {
  mkdir -p "$WORK/s" && cp "$SAMPLES"/*.jpg "$SAMPLES"/*.png "$WORK/s/" && cd "$WORK" || fail "setup"
  run explain s --model tiny-vit --record golden.json --threads 2; expect_rc 0
  expect_in err "recorded 11 image(s) in golden.json"
  # Another thread count and batch size: the same results within the default tolerances.
  run explain s --model tiny-vit --expect golden.json --threads 1 --batch-size 3 --junit ok.xml; expect_rc 0
  expect_in err "11 of 11 image(s) as recorded"
  # Another model: exit 8, each changed image named with what changed, JUnit XML for CI.
  run explain s --model tiny-resnet --expect golden.json --junit junit.xml; expect_rc 8
  expect_in err "s/chelsea.jpg: top-1 changed"
  expect_in err "model differs from the recorded one"
  # A missing and an extra image are reported, not ignored.
  mv s/chelsea.jpg s/renamed.jpg
  run explain s --model tiny-vit --expect golden.json; expect_rc 8
  expect_in err "s/chelsea.jpg: missing"
  expect_in err "s/renamed.jpg: extra"
  mv s/renamed.jpg s/chelsea.jpg
  # A head with perturbed weights: the same bundle otherwise.
  run explain s --model tiny-vit --head parity --record parity.json; expect_rc 0
  cp -r "$TVE_SOURCE_DIR/models/tiny-vit" perturbed
  /usr/bin/python3 - perturbed <<'PY' || fail "could not perturb the head"
import hashlib, json, sys, torch
from pathlib import Path
bundle = Path(sys.argv[1])
head = torch.jit.load(str(bundle / "heads/parity.pt"))
torch.manual_seed(0)
with torch.no_grad():
    for p in head.parameters():
        p.add_(torch.randn_like(p) * p.abs().mean())
head.save(str(bundle / "heads/parity.pt"))
manifest = json.loads((bundle / "manifest.json").read_text())
manifest["heads"]["parity"]["sha256"] = hashlib.sha256((bundle / "heads/parity.pt").read_bytes()).hexdigest()
(bundle / "manifest.json").write_text(json.dumps(manifest))
PY
  run explain s --model "$WORK/perturbed" --head parity --expect parity.json --junit junit.xml; expect_rc 8
  expect_in err "head_sha256 differs"
  /usr/bin/python3 - junit.xml <<'PY' || fail "JUnit XML"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites"
suite = root.find("testsuite")
cases = suite.findall("testcase")
assert int(suite.get("tests")) == len(cases) == 11, len(cases)
failed = [c for c in cases if c.find("failure") is not None]
assert int(suite.get("failures")) == len(failed) >= 1
assert all(c.get("name").startswith("s/") and float(c.get("time")) >= 0 for c in cases)
assert all(f.find("failure").get("message") for f in failed)
PY
  # An unusable golden file is a usage error naming it, before any model work.
  echo '{"format": "something else"}' > bad.json
  run explain s --model tiny-vit --expect bad.json; expect_rc 2; expect_in err "bad.json"
  run explain s --model tiny-vit --expect nowhere.json; expect_rc 2; expect_in err "nowhere.json"
}

case_shipped_models_match_golden() {
  # What the shipped models predict and where they look on data/samples (docs/ci.md): a change to a
  # bundle that alters either fails here unless tests/golden/ is updated in the same commit.
  cd "$TVE_SOURCE_DIR" || fail "no source dir"
  for model in resnet vit swin; do
    run explain data/samples --model "$model" --expect "tests/golden/$model.json" --threads 2; expect_rc 0
  done
}

# malformed_bundle EDIT EXPECTED...: a copy of tiny-vit changed by the shell snippet EDIT (run in
# the bundle's folder) must fail to load with exit 3, within a minute, with each EXPECTED on stderr.
# README "Explain your own model", the four commands at small scale: a torchvision resnet18 with
# seed-fixed random weights saved as a user's .pth, 40 images of several sizes and formats (plus a
# corrupt one), a few training steps. The commands are the README's, with its placeholders filled
# and its --time-budget swapped for --steps.
case_own_model_readme() {
  local photos="$WORK/my_photos"
  /usr/bin/python3 "$TVE_SOURCE_DIR/scripts/maintainer/export_eval_scenes.py" --split train --n 40 --no-masks --out "$photos" >/dev/null \
    || fail "exporting scenes"
  /usr/bin/python3 - "$WORK" "$photos" <<'PY' || fail "making the .pth and varied images"
import sys, pathlib, torch, torchvision
from PIL import Image
work, photos = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
torch.manual_seed(0)
torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), work / "my_resnet18.pth")
(work / "my_labels.txt").write_text("cat\ndog\nbird\n")
files = sorted(photos.glob("*.png"))
(photos / "big").mkdir()
for i, f in enumerate(files[:10]):  # other sizes, formats and modes, in a subfolder
    im = Image.open(f).convert("RGB").resize((300 + 7 * i, 200 + 5 * i))
    if i % 3 == 0:
        im.save(photos / "big" / (f.stem + ".jpg"), quality=90)
    elif i % 3 == 1:
        im.convert("L").save(photos / "big" / (f.stem + "-gray.png"))
    else:
        im.convert("RGBA").save(photos / "big" / (f.stem + "-alpha.png"))
    f.unlink()
(photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
PY
  local models="$WORK/models"; mkdir -p "$models"
  (cd "$WORK" && /usr/bin/python3 "$TVE_SOURCE_DIR/scripts/make_bundle.py" --torchvision resnet18 --weights my_resnet18.pth \
      --labels my_labels.txt --out "$models/mine" --tve "$TVE" >"$WORK/out" 2>"$WORK/err") \
    || fail "make_bundle: $(cat "$WORK/err")"
  expect_in out "train_explainer.py"
  /usr/bin/python3 "$TVE_SOURCE_DIR/scripts/train_explainer.py" --model "$models/mine" --images "$photos" \
      --steps 3 --batch 4 --centres 2 --calib-images 8 --holdout 3 --run "$WORK/run" --tve "$TVE" --no-progress \
      >"$WORK/out" 2>"$WORK/err" \
    || fail "train_explainer: $(tail -20 "$WORK/err")"
  expect_in out "held-out images, against exact windowed occlusion"; expect_in out "deletion AUC (median"
  /usr/bin/python3 - "$models/mine/manifest.json" <<'PY' || fail "manifest provenance"
import json, sys
m = json.load(open(sys.argv[1]))
e = m["provenance"]["explainer"]
assert m["explainer"]["target_sha256"] == m["target"]["sha256"]
assert e["data"]["files"] == 41 and e["data"]["bad_files"] >= 0 and e["steps_done"] == 3
f = e["fidelity"]
assert 2 <= f["held_out_images"] <= 3 and -1 <= f["lneg1_raw"]["spearman"] <= 1, f
assert set(f["tve_eval"]) == {"tve", "gradcam"}, f
PY
  run explain "$photos" --models-dir "$models" --model mine --out "$WORK/overlays"; expect_rc 1  # the broken file
  [[ $(find "$WORK/overlays" -name '*.overlay.png' | wc -l) -eq 40 ]] || fail "expected 40 overlays: $(find "$WORK/overlays" | head)"
  expect_in err "broken.jpg"
  run eval "$photos/big" --models-dir "$models" --model mine --methods tve,gradcam --no-fidelity --out "$WORK/eval"
  expect_rc 0; expect_in out "deletion"
  [[ -s "$WORK/eval/summary.json" && -s "$WORK/eval/curves.png" ]] || fail "eval outputs missing"
}

malformed_bundle() {
  local edit=$1; shift
  rm -rf "$WORK/b"; cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/b"
  (cd "$WORK/b" && eval "$edit") || fail "could not make the bundle: $edit"
  timeout 60 "$TVE" predict "$SAMPLES/chelsea.jpg" --model "$WORK/b" >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?
  [[ $rc -ne 124 ]] || fail "loading hung: $edit"
  expect_rc 3
  for text in "$@"; do expect_in err "$text"; done
  ! grep -q "stack\|0x[0-9a-f]\{8\}" "$WORK/err" || fail "C++ internals on stderr: $(cat "$WORK/err")"
}

# set_json KEY VALUE: sets manifest.json's KEY (a Python subscript, e.g. ["input"]["height"]) to
# VALUE written as raw JSON text, keeping the rest as it is.
set_json() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
m = json.load(open("manifest.json"))
exec("m" + sys.argv[1] + " = '@@VALUE@@'")
open("manifest.json", "w").write(json.dumps(m).replace('"@@VALUE@@"', sys.argv[2]))
PY
}

case_bundle_malformed_fails_cleanly() {
  malformed_bundle 'set_json "[\"input\"][\"height\"]" 30000' "manifest.json" "'input.height' is 30000, expected 1 to 4096"
  malformed_bundle 'set_json "[\"input\"][\"width\"]" 1e62' "manifest.json" "'input.width' must be an integer"
  malformed_bundle 'set_json "[\"input\"][\"width\"]" 1000000000000000000000000000000000000000000000000000000000000000' \
      "manifest.json" "'input.width'"
  malformed_bundle 'set_json "[\"grid\"]" 1e400' "manifest.json" "not valid JSON"
  malformed_bundle 'set_json "[\"format_version\"]" 4294967297' "manifest.json" "format_version 4294967297 is not supported"
  malformed_bundle 'set_json "[\"explainer\"][\"lambda_neg\"]" 1e999' "manifest.json" "not valid JSON"
  malformed_bundle 'set_json "[\"architecture\"]" "\"resnet\""' "target.pt" "features() gives" "architecture 'resnet'"
  malformed_bundle 'rm target.pt && mkfifo target.pt' "target.pt" "named pipe"
  malformed_bundle 'rm target.pt && mkdir target.pt' "target.pt" "is a folder"
  malformed_bundle 'cp target.pt ../outside.pt && rm target.pt && ln -s ../outside.pt target.pt' \
      "manifest.json" "outside the bundle folder"
  malformed_bundle 'mkfifo labels.txt && set_json "[\"target\"]" "{\"file\": \"target.pt\", \"sha256\": \"$(sha256sum target.pt | cut -c1-64)\", \"labels_file\": \"labels.txt\"}"' \
      "labels.txt" "named pipe"
  malformed_bundle 'rm manifest.json && mkfifo manifest.json' "manifest.json" "named pipe"
  # Labels given on the command line: a pipe, and a device that never ends.
  mkfifo "$WORK/fifo"
  for labels in "$WORK/fifo" /dev/zero; do
    timeout 60 "$TVE" explain "$SAMPLES/chelsea.jpg" --model tiny-vit --head-file "$TVE_SOURCE_DIR/models/tiny-vit/heads/parity.pt" \
        --labels "$labels" >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?
    [[ $rc -ne 124 ]] || fail "--labels $labels hung"
    expect_rc 3; expect_in err "$labels"
  done
}

case_explain_defaults_follow_the_bundle() {
  # tiny-vit's manifest says smooth: true; a run without --smooth/--no-smooth must smooth.
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit; expect_rc 0
  json_check "lines[0]['parameters']['smooth'] is True"
  run explain "$SAMPLES/chelsea.jpg" --model tiny-vit --no-smooth; expect_rc 0
  json_check "lines[0]['parameters']['smooth'] is False"
  # Occlusion computes what TVE amortises: the bundle's lambdas (here lambda_neg 0, as the swin's).
  cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/b"
  (cd "$WORK/b" && set_json '["explainer"]["lambda_neg"]' 0 && set_json '["explainer"]["lambda_pos"]' 0.5)
  run explain "$SAMPLES/chelsea.jpg" --model "$WORK/b" --method occlusion --threads 1 --format npy --out "$WORK/o1"; expect_rc 0
  json_check "lines[0]['parameters'] == {'radius': 1, 'lambda_pos': 0.5, 'lambda_neg': 0.0}"
  run explain "$SAMPLES/chelsea.jpg" --model "$WORK/b" --method occlusion --threads 1 --lambda-neg 1 --format npy --out "$WORK/o2"
  expect_rc 0; json_check "lines[0]['parameters']['lambda_neg'] == 1.0"
  /usr/bin/python3 - "$WORK" <<'PY' || fail "occlusion maps do not follow the lambdas"
import sys, numpy as np, glob
w = sys.argv[1]
a = np.load(glob.glob(f"{w}/o1/**/chelsea.jpg.map.npy", recursive=True)[0])
b = np.load(glob.glob(f"{w}/o2/**/chelsea.jpg.map.npy", recursive=True)[0])
assert not np.allclose(a, b)
PY
}

case_explain_resume_after_kill() {
  /usr/bin/python3 - "$SAMPLES/chelsea.jpg" "$WORK/in" <<'PY'
import sys
from pathlib import Path
from PIL import Image
src = Image.open(sys.argv[1]).convert("RGB").resize((640, 480))
out = Path(sys.argv[2]); out.mkdir()
for i in range(150):
    src.rotate(i, fillcolor=(i, 2 * i % 256, 90)).save(out / f"{i:03d}.jpg", quality=85)
PY
  local args=(explain "$WORK/in" --model tiny-resnet --top-k 2 --batch-size 1 --threads 1)
  "$TVE" "${args[@]}" --out "$WORK/whole" >"$WORK/whole.jsonl" 2>"$WORK/err" </dev/null || fail "uninterrupted run failed"
  "$TVE" "${args[@]}" --out "$WORK/cut" >"$WORK/cut1.jsonl" 2>"$WORK/err" </dev/null &
  local pid=$!
  for ((i = 0; i < 3000; i++)); do
    [[ $(find "$WORK/cut" -name '*.json' 2>/dev/null | wc -l) -ge 10 ]] && break
    sleep 0.01
  done
  kill -9 $pid; wait $pid
  # Make one image partial: its overlay and map written, its record (written last) not.
  local partial; partial=$(find "$WORK/cut" -name '*.jpg.json' | sort | head -1)
  rm "$partial"
  find "$WORK/cut" -name '*.jpg.json' -printf '%p %i %T@\n' | sort >"$WORK/before"
  local done_before; done_before=$(wc -l <"$WORK/before")
  [[ $done_before -ge 9 && $done_before -lt 150 ]] || fail "kill did not land mid-run: $done_before done"
  run "${args[@]}" --out "$WORK/cut" --resume; expect_rc 0
  expect_in err "more done by an earlier run"
  json_check "len(lines) == 150 and sum(1 for l in lines if l.get('resumed')) == $done_before and [l['input'] for l in lines] == sorted(l['input'] for l in lines)"
  # Every image explained exactly once more in total: the records that existed are untouched.
  find "$WORK/cut" -name '*.jpg.json' -printf '%p %i %T@\n' | sort >"$WORK/after"
  [[ -z "$(comm -23 "$WORK/before" "$WORK/after")" ]] || fail "a finished image was explained again"
  [[ -z "$(find "$WORK/cut" -name '*.tmp')" ]] || fail "temporaries of the killed run left behind"
  /usr/bin/python3 - "$WORK/whole" "$WORK/cut" <<'PY' || fail "resumed outputs differ from an uninterrupted run's"
import json, sys
from pathlib import Path
whole, cut = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file() and not p.name.startswith("tve-summary"))
assert len(files) == 150 * 4, len(files)  # two overlays, a map and a record each
for rel in files:
    a, b = (whole / rel).read_bytes(), (cut / rel).read_bytes()
    if rel.suffix == ".json":  # equal but for the timings and the output folder's name
        ra, rb = json.loads(a), json.loads(b)
        for r in (ra, rb):
            r.pop("timings_ms"); r.pop("outputs"); r["cost"].pop("ms")
        assert ra == rb, rel
    else:
        assert a == b, rel
summary = json.loads((cut / "tve-summary.json").read_text())
assert summary["explained"] + summary["resumed"] == 150 and summary["failed"] == 0, summary
PY
  # Other settings: nothing is taken from the earlier run.
  run "${args[@]}" --out "$WORK/cut" --resume --lambda-neg 0.5 --format json; expect_rc 0
  json_check "len(lines) == 150 and not any(l.get('resumed') for l in lines)"
  run "${args[@]}" --out "$WORK/cut" --resume --format overlay; expect_rc 2; expect_in err "--resume needs"
}

case_explain_shards() {
  copies 30 in
  cp "$FIXTURES/images/truncated.png" "$WORK/in/broken.png"
  local args=(--model tiny-vit --format json --threads 1)
  for k in 0 1 2; do
    run explain "$WORK/in" "${args[@]}" --shard "$k/3" --out "$WORK/res"; [[ $rc -le 1 ]] || fail "shard $k: exit $rc"
    cp "$WORK/out" "$WORK/shard$k.jsonl"
  done
  /usr/bin/python3 - "$WORK" <<'PY' || fail "shards are not a disjoint cover"
import json, sys
w = sys.argv[1]
shards = [[json.loads(l)["input"] for l in open(f"{w}/shard{k}.jsonl")] for k in range(3)]
every = [i for s in shards for i in s]
assert len(every) == len(set(every)) == 31, (len(every), len(set(every)))
assert all(len(s) > 0 for s in shards), [len(s) for s in shards]
summaries = [json.load(open(f"{w}/res/tve-summary.shard-{k}-of-3.json")) for k in range(3)]
assert sum(s["explained"] for s in summaries) == 30 and sum(s["failed"] for s in summaries) == 1
failed = [f for s in summaries for f in s["failures"]]
assert failed[0]["input"].endswith("broken.png") and "truncated" in failed[0]["error"], failed
assert all(s["shard"]["count"] == 3 and s["model"] == "tiny-vit" and s["tve_version"] for s in summaries)
PY
  args=(--model tiny-vit --format none --threads 1)  # no --out from here on: records on stdout only
  # Stable whatever the order of discovery: the same shard from a reversed list on stdin.
  find "$WORK/in" -type f | sort -r >"$WORK/list"
  "$TVE" explain - "${args[@]}" --shard 1/3 <"$WORK/list" >"$WORK/out" 2>"$WORK/err"; rc=$?
  [[ $rc -le 1 ]] || fail "stdin shard: exit $rc"
  [[ "$(jq_inputs "$WORK/out")" == "$(jq_inputs "$WORK/shard1.jsonl")" ]] || fail "shard 1/3 depends on input order"
  # auto: a SLURM array of tasks 4-6 (task 5 is the second shard), and a Kubernetes Indexed Job.
  SLURM_ARRAY_TASK_ID=5 SLURM_ARRAY_TASK_MIN=4 SLURM_ARRAY_TASK_MAX=6 "$TVE" explain "$WORK/in" "${args[@]}" --shard auto \
      >"$WORK/out" 2>"$WORK/err" </dev/null
  [[ "$(jq_inputs "$WORK/out")" == "$(jq_inputs "$WORK/shard1.jsonl")" ]] || fail "SLURM task 5 of 4-6 is not shard 1/3"
  JOB_COMPLETION_INDEX=2 "$TVE" explain "$WORK/in" "${args[@]}" --shard auto/3 >"$WORK/out" 2>"$WORK/err" </dev/null
  [[ "$(jq_inputs "$WORK/out")" == "$(jq_inputs "$WORK/shard2.jsonl")" ]] || fail "JOB_COMPLETION_INDEX=2 is not shard 2/3"
  run explain "$WORK/in" "${args[@]}" --shard 3/3; expect_rc 2; expect_in err "not below the shard count"
  run explain "$WORK/in" "${args[@]}" --shard auto; expect_rc 2; expect_in err "neither JOB_COMPLETION_INDEX"
  JOB_COMPLETION_INDEX=1 "$TVE" explain "$WORK/in" "${args[@]}" --shard auto >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?
  expect_rc 2; expect_in err "auto/N"
  run explain "$WORK/in" "${args[@]}" --shard 1/x; expect_rc 2
}

# jq_inputs FILE: the sorted "input" fields of a JSONL file, one per line.
jq_inputs() {
  /usr/bin/python3 -c 'import json, sys; print("\n".join(sorted(json.loads(l)["input"] for l in open(sys.argv[1]))))' "$1"
}

case_cluster_examples_run() {
  # docs/cluster/slurm-array.sh as a SLURM array of tasks 1-3 would run it, one task after the other.
  copies 12 in
  for task in 1 2 3; do
    SLURM_ARRAY_TASK_ID=$task SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_MAX=3 SLURM_ARRAY_TASK_COUNT=3 \
    TVE_MODEL=tiny-vit TVE_INPUTS="$WORK/in" TVE_OUT="$WORK/res" SLURM_CPUS_PER_TASK=1 \
      bash "$TVE_SOURCE_DIR/docs/cluster/slurm-array.sh" >"$WORK/task$task.jsonl" 2>"$WORK/err" </dev/null \
      || fail "task $task failed: $(cat "$WORK/err")"
  done
  [[ $(ls "$WORK/res"/tve-summary.shard-*-of-3.json | wc -l) -eq 3 ]] || fail "not one summary per task"
  [[ $(find "$WORK/res" -name '*.png.json' | wc -l) -eq 12 ]] || fail "not every image explained once"
  [[ $(cat "$WORK"/task*.jsonl | wc -l) -eq 12 ]] || fail "not one record per image"
  bash "$TVE_SOURCE_DIR/docs/cluster/merge-summaries.sh" "$WORK/res" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0; json_check "lines[0]['explained'] == 12 and lines[0]['failed'] == 0 and lines[0]['missing_shards'] == []"
  # A missing shard is reported by the merge.
  rm "$WORK/res/tve-summary.shard-1-of-3.json"
  bash "$TVE_SOURCE_DIR/docs/cluster/merge-summaries.sh" "$WORK/res" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 3; json_check "lines[0]['missing_shards'] == [1]"

  # The Kubernetes Indexed Job's command, run for each index with its paths pointed here.
  copies 12 data/images
  /usr/bin/python3 - "$TVE_SOURCE_DIR/docs/cluster/indexed-job.yaml" "$TVE" "$WORK" >"$WORK/command" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
command = json.loads(re.search(r"command: (\[.*\])", text).group(1))
count = int(re.search(r"completions: (\d+)", text).group(1))
command = [sys.argv[2] if c == "tve" else c.replace("/data", sys.argv[3] + "/data") for c in command]
command = [c if c != "resnet" else "tiny-vit" for c in command]  # the shipped test bundle, for speed
print(count); print("\0".join(command))
PY
  local count; count=$(head -1 "$WORK/command")
  mapfile -d '' -t command < <(tail -n +2 "$WORK/command" | tr -d '\n')
  for ((index = 0; index < count; index++)); do
    JOB_COMPLETION_INDEX=$index "${command[@]}" >>"$WORK/k8s.jsonl" 2>"$WORK/err" </dev/null || fail "index $index: $(cat "$WORK/err")"
  done
  [[ $(wc -l <"$WORK/k8s.jsonl") -eq 12 ]] || fail "the indexed job did not explain each image once"
  bash "$TVE_SOURCE_DIR/docs/cluster/merge-summaries.sh" "$WORK/data/out" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0; json_check "lines[0]['explained'] == 12 and lines[0]['shards'] == $count"
}

"case_$1"
echo "PASS: $1"
