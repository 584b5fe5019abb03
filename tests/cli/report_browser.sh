#!/usr/bin/env bash
# report.html of tve eval and tve explain --report, opened in headless Chromium (check_report.py):
# no console message, every image decodes, nothing from the network, a phone-wide page, every input
# in the gallery under its own name (odd characters included), failures shown with their error,
# and eval's table showing summary.json's numbers.
# Usage: report_browser.sh CASE (TVE and TVE_SOURCE_DIR set, as tests/CMakeLists.txt does)

RUN_TIMEOUT=240
source "$(dirname "$0")/harness.sh"
CHECK="$TVE_SOURCE_DIR/tests/cli/check_report.py"

# Two real images, one whose name holds what HTML and URLs treat specially, and a truncated one.
inputs() {
  mkdir -p "$WORK/in/sub dir"
  cp "$SAMPLES/chelsea.jpg" "$WORK/in/cat.jpg"
  cp "$SAMPLES/coffee.jpg" "$WORK/in/sub dir/a <b> & \"c\" 'd' ü #1?%.jpg"
  head -c 3000 "$SAMPLES/astronaut.jpg" > "$WORK/in/truncated <x>.jpg"
}

case_eval_report() {
  inputs
  run eval "$WORK/in" --model tiny-vit --methods tve,gradcam,occlusion --out "$WORK/o" --threads 1
  expect_rc 1  # the truncated image failed, the others were evaluated
  expect_in err "report.html"
  [[ -f $WORK/o/report.html ]] || fail "no report.html"
  py 'import json,sys; assert json.load(open(sys.argv[1]))["report"] == "report.html"' "$WORK/o/summary.json"
  # 2 images x 3 methods, each overlay small (at most 320 px a side) and under overlays/.
  [[ $(find "$WORK/o/overlays" -name '*.overlay.png' | wc -l) -eq 6 ]] || fail "overlays: $(find "$WORK/o/overlays")"
  "$PY" "$CHECK" "$WORK/o/report.html" --summary "$WORK/o/summary.json" --records "$WORK/o/results.jsonl" \
    --min-images 6 --failed 1 || fail "report.html in the browser"
  # A second run into the images' own folder does not take the overlays or the report as images.
  cp -r "$WORK/o/overlays" "$WORK/in/" && cp "$WORK/o/report.html" "$WORK/in/"
  run eval "$WORK/in" --model tiny-vit --methods tve --out "$WORK/in" --threads 1 --no-fidelity
  expect_rc 1
  expect_in err "on 3 image(s)"
}

case_explain_report() {
  inputs
  run explain "$WORK/in" --model tiny-vit --top-k 2 --out "$WORK/x" --report --format overlay,json --threads 1
  expect_rc 1
  [[ -f $WORK/x/report.html ]] || fail "no report.html"
  "$PY" "$CHECK" "$WORK/x/report.html" --records "$WORK/out" --min-images 4 --failed 1 || fail "report.html in the browser"
  grep -qF 'probability' "$WORK/x/report.html" || fail "no probabilities in the report"
}

case_explain_report_needs_overlays() {
  inputs
  run explain "$WORK/in/cat.jpg" --model tiny-vit --report --format json --out "$WORK/x"
  expect_rc 2
  expect_in err "--report"
  run explain "$WORK/in/cat.jpg" --model tiny-vit --report
  expect_rc 2
  expect_in err "--report"
}

"case_$1"
echo "PASS: $1"
