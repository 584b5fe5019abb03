#!/usr/bin/env bash
# --device and --precision on every command that runs a model (README.md, "Devices and precision"):
# a device this build or machine cannot give is one line and exit 5 before any work; records and
# summaries say which device and precision ran; bf16 stays within a measured drift of fp32.
# Usage: TVE=path/to/tve device_test.sh CASE
source "$(dirname "$0")/harness.sh"

# The commands that run a model, each with the smallest arguments that reach the model.
model_commands() {
  mkdir -p "$WORK/labelled/a" "$WORK/labelled/b"
  cp "$FIXTURES/images/rgb8.png" "$WORK/labelled/a/1.png"; cp "$FIXTURES/images/rgba.png" "$WORK/labelled/b/1.png"
  COMMANDS=(
    "explain $SAMPLES/chelsea.jpg --model tiny-resnet --out $WORK/o-explain"
    "predict $SAMPLES/chelsea.jpg --model tiny-resnet"
    "eval $SAMPLES/chelsea.jpg --model tiny-resnet --out $WORK/o-eval"
    "bench --model tiny-resnet --repeats 1"
    "fit-head --model tiny-resnet --data $WORK/labelled --out $WORK/o-head.pt")
}

case_cuda_refused_on_a_cpu_machine() {
  model_commands
  # cuda:63: no machine shows 64 GPUs, so this holds on a CUDA build with GPUs too.
  for device in cuda cuda:63; do
    for command in "${COMMANDS[@]}"; do
      # shellcheck disable=SC2086  # the command's words
      run $command --device "$device"
      if [[ $device == cuda && $rc -eq 0 ]]; then continue; fi  # a CUDA build on a GPU machine: it ran
      expect_rc 5
      expect_in err "--device $device"
      expect_in err "LibTorch"  # names the build
      [[ $(grep -c . "$WORK/err") -eq 1 ]] || fail "$command --device $device: more than one line: $(cat "$WORK/err")"
      [[ ! -s "$WORK/out" ]] || fail "$command --device $device wrote to stdout: $(head -c 500 "$WORK/out")"
    done
  done
  # Before any output: no output folder, no head file.
  [[ ! -e $WORK/o-explain && ! -e $WORK/o-eval && ! -e $WORK/o-head.pt ]] || fail "outputs made before the device check"
  if ! "$TVE" predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --device cuda >/dev/null 2>&1; then
    run predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --device cuda; expect_rc 5
    expect_in err "CPU-only build"
  fi
}

case_device_and_precision_names_checked() {
  run predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --device gpu; expect_rc 2; expect_in err "cuda:N"
  run predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --device cuda:x; expect_rc 2
  run predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --precision fp8; expect_rc 2; expect_in err "fp8"
  # fp16 on the CPU: LibTorch 1.13 has no half-precision CPU convolutions; refused, one line, exit 5.
  run predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --device cpu --precision fp16; expect_rc 5
  expect_in err "--precision fp16 needs a CUDA device"
  [[ $(grep -c . "$WORK/err") -eq 1 ]] || fail "more than one line: $(cat "$WORK/err")"
}

case_records_say_device_and_precision() {
  model_commands
  run explain "$SAMPLES/chelsea.jpg" "$SAMPLES/coffee.jpg" --model tiny-resnet --device cpu --precision bf16 \
    --out "$WORK/o" --format npy,json
  expect_rc 0
  json_check "all(l['device'] == 'cpu' and l['precision'] == 'bf16' for l in lines) and len(lines) == 2"
  py "import json,sys; s=json.load(open(sys.argv[1])); assert s['device']=='cpu' and s['precision']=='bf16' and 'LibTorch' in s['build'], s" \
    "$WORK/o/tve-summary.json"
  py "import json,sys,glob; r=json.load(open(glob.glob(sys.argv[1]+'/**/chelsea.jpg.json', recursive=True)[0])); assert r['precision']=='bf16' and r['settings']['precision']=='bf16', r" \
    "$WORK/o"
  # bf16 outputs are not an fp32 run's: --resume explains them again.
  run explain "$SAMPLES/chelsea.jpg" "$SAMPLES/coffee.jpg" --model tiny-resnet --device cpu --out "$WORK/o" \
    --format npy,json --resume
  expect_rc 0
  json_check "all(l['precision'] == 'fp32' and not l.get('resumed') for l in lines)"
  run predict "$SAMPLES/chelsea.jpg" --model tiny-resnet --precision bf16; expect_rc 0
  json_check "lines[0]['device'] == 'cpu' and lines[0]['precision'] == 'bf16'"
  run bench --model tiny-resnet --repeats 1 --precision bf16; expect_rc 0
  json_check "lines[0]['device'] == 'cpu' and lines[0]['precision'] == 'bf16'"
  run fit-head --model tiny-resnet --data "$WORK/labelled" --out "$WORK/h.pt" --held-out 0 --steps 5 --precision bf16
  expect_rc 0
  json_check "lines[0]['device'] == 'cpu' and lines[0]['precision'] == 'bf16'"
  run eval "$SAMPLES/chelsea.jpg" --model tiny-resnet --methods tve,gradcam --out "$WORK/e" --precision bf16 --no-fidelity
  expect_rc 0
  py "import json,sys; s=json.load(open(sys.argv[1])); assert s['device']=='cpu' and s['precision']=='bf16', s" \
    "$WORK/e/summary.json"
}

# The bound holds with room (docs/performance.md, "Precision"): on data/samples and 40 emoji scenes the
# shipped resnet's bf16 TVE maps kept Spearman >= 0.9996 with fp32's (median 0.9999), the same top-1
# class on every image and its probability within 0.015.
case_bf16_drift_bounded() {
  "$PY" "$TVE_SOURCE_DIR/scripts/maintainer/precision_drift.py" --tve "$TVE" --precision bf16 --min-spearman 0.97 \
    --max-probability-drift 0.03 --json resnet -- "$SAMPLES" >"$WORK/out" 2>"$WORK/err" || fail "$(cat "$WORK/out" "$WORK/err")"
  cat "$WORK/out"
  # ...and bf16 did run: the scores moved (an fp32 run relabelled bf16 would drift by exactly 0).
  json_check "lines[0]['top1_probability_drift_max'] > 1e-4 and lines[0]['images'] == 11"
}

"case_$1"
echo "PASS: $1"
