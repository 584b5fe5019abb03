#!/usr/bin/env bash
# The cuda build flavour's CPU test (docs/gpu.md): on CPU, its binary ($TVE, LibTorch 2.x from the PyPI
# wheel) gives the Debian build's ($TVE_REFERENCE, LibTorch 1.13) predictions and maps, for every method,
# within the tolerances measured on the three shipped models (docs/gpu.md, "Parity").
# Usage: flavour_parity.sh MODEL   (registered in the cuda flavour's ctest as flavour.parity.MODEL)
RUN_TIMEOUT=300
source "$(dirname "$0")/harness.sh"
: "${TVE_REFERENCE:?set TVE_REFERENCE to the tve of the Debian build}"
[[ -x $TVE_REFERENCE ]] || fail "$TVE_REFERENCE: no Debian-flavour tve to compare with; build it first (bash scripts/build.sh tve)"
model=${1:?usage: flavour_parity.sh MODEL}

# The tolerances: about ten times the largest differences measured on the shipped models (docs/gpu.md,
# "Parity"; 2026-12-03): maps 3.7e-6 of their range, probabilities 2.1e-7, except Grad-CAM++ on the ViT,
# 6.7e-4 (its weights divide by sums of squared gradients, which magnifies rounding). Random methods
# draw masks and noise from LibTorch's CPU generator: the same stream in 1.13 and 2.15.
MAP_TOL=${MAP_TOL:-4e-5}
GRADCAMPP_MAP_TOL=${GRADCAMPP_MAP_TOL:-1e-2}
PROB_TOL=${PROB_TOL:-2e-6}

# Both binaries, one thread each (the same reduction order within a build), three sample photos; the
# costly methods with fewer draws than their defaults: what is compared is the arithmetic, not the map.
inputs=("$SAMPLES/chelsea.jpg" "$SAMPLES/coffee.jpg" "$SAMPLES/astronaut.jpg")
status=0
for method in tve occlusion gradcam gradcam++ saliency smoothgrad ig rise kernelshap; do
  extra=()
  case $method in
    smoothgrad) extra=(--samples 4) ;;
    ig) extra=(--steps 8) ;;
    rise | kernelshap) extra=(--samples 64) ;;
  esac
  for side in reference cuda-flavour; do
    binary=$TVE
    [[ $side == reference ]] && binary=$TVE_REFERENCE
    TVE=$binary run explain "${inputs[@]}" --model "$model" --method "$method" "${extra[@]}" --threads 1 \
      --device cpu --format npy,json -o "$WORK/$method/$side"
    expect_rc 0
  done
  "$PY" "$TVE_SOURCE_DIR/scripts/maintainer/compare_runs.py" "$WORK/$method/reference" "$WORK/$method/cuda-flavour" \
    --map-tol "$([[ $method == gradcam++ ]] && echo "$GRADCAMPP_MAP_TOL" || echo "$MAP_TOL")" --prob-tol "$PROB_TOL" \
    --label "$model $method" || status=1
done
[[ $status -eq 0 ]] || fail "the cuda flavour's results differ from the Debian build's beyond the tolerances"
