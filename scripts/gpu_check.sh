#!/usr/bin/env bash
# The one-shot check of tve on an NVIDIA GPU (docs/gpu.md): on a Linux machine with a GPU, its driver
# and the project set up (scripts/setup.sh and scripts/setup_cuda.sh), with no network, in under
# 8 minutes:
#   1. the cuda-flavour tve: --tve PATH, else build-cuda/tve, else built now (bash scripts/build.sh
#      --flavour cuda tve; about 15 min on 2 cores, 3 on 16: carry a build to stay within 8 minutes);
#   2. CUDA against CPU, every method on the three shipped models (resnet, vit, swin): top-1 equal,
#      probabilities and maps within tolerances (scripts/maintainer/compare_runs.py);
#   3. tve bench on both devices (resnet, tve and gradcam): latency and compute ratio;
#   4. scripts/train_explainer.py --device cuda for 60 seconds (--time-budget 60s, on data/samples);
#   5. a table of the results, on stdout and in OUT/results.md.
#
# Usage: scripts/gpu_check.sh [--tve PATH] [--out DIR] [--python PATH]
#   --python: a Python whose torch sees the GPU (default: the current-torch venv's, scripts/torch_env.py)
# Exit codes: 0 every check passed; 1 a check failed (the table says which); 2 bad arguments;
#   3 no NVIDIA GPU or driver (nvidia-smi missing or lists no GPU); 4 no cuda-flavour tve and none could be
#   built (what is missing is named); 5 the cuda-flavour tve cannot use the GPU (its error is shown);
#   6 no Python with a CUDA torch for the training check.
# Each missing piece is one line on stderr starting "gpu_check: missing:".
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$(date +%s)

tve=""
out=""
python=""
while (($#)); do
  case $1 in
    --tve) tve=${2:?--tve needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --python) python=${2:?--python needs a path}; shift 2 ;;
    -h | --help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
out=${out:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out" || { echo "gpu_check: cannot make the output folder $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
log=$out/log.txt
: >"$log"
missing() { echo "gpu_check: missing: $1" >&2; echo "missing: $1" >>"$log"; exit "$2"; }
say() { echo "gpu_check: $*" >&2; echo "$*" >>"$log"; }
elapsed() { echo $(($(date +%s) - started)); }

# 0. The machine: an NVIDIA driver that sees a GPU.
if ! command -v nvidia-smi >/dev/null 2>&1; then
  missing "nvidia-smi (the NVIDIA driver's tool) is not on PATH: no NVIDIA driver installed, so no GPU to check" 3
fi
if ! gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) || [[ -z $gpus ]]; then
  missing "nvidia-smi lists no GPU: $(echo "$gpus" | head -n 1)" 3
fi
say "GPU(s): $(echo "$gpus" | tr '\n' ';')"

# 1. The cuda-flavour binary: carried, built before, or built now.
if [[ -z $tve && -x build-cuda/tve ]]; then tve=$root/build-cuda/tve; fi
if [[ -z $tve ]]; then
  for tool in cmake ninja g++; do
    command -v "$tool" >/dev/null 2>&1 || missing "no build-cuda/tve and no $tool to build it (bash scripts/setup.sh installs it)" 4
  done
  cache=${TVE_CACHE:-$HOME/.cache/tve}
  [[ -x $cache/cuda-toolkit/nvidia/cu13/bin/nvcc ]] \
    || missing "no build-cuda/tve, and no nvcc in $cache/cuda-toolkit to build it (bash scripts/setup_cuda.sh, which needs PyPI)" 4
  say "building the cuda flavour (bash scripts/build.sh --flavour cuda tve)"
  if ! TVE_WARNINGS_AS_ERRORS=OFF bash scripts/build.sh --flavour cuda tve >>"$log" 2>&1; then
    missing "the cuda flavour did not build; the compiler's output is in $log" 4
  fi
  tve=$root/build-cuda/tve
fi
[[ -x $tve ]] || missing "$tve is not an executable" 4
say "tve: $tve ($("$tve" --version 2>&1 | tr '\n' ' '))"

# The binary must reach the GPU: tve's own line says why not (exit 5: device unavailable).
if ! "$tve" predict data/samples/chelsea.jpg --model tiny-vit --device cuda >/dev/null 2>"$out/device.err"; then
  missing "$tve cannot use the GPU: $(grep -m1 -v ': info: ' "$out/device.err")" 5
fi

if [[ -z $python ]]; then
  python=$(/usr/bin/python3 scripts/torch_env.py python 2>/dev/null) || python=""
fi
cuda_python_ok=0
if [[ -n $python ]] && "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  cuda_python_ok=1
fi

rows=()
failed=0
row() { rows+=("| $1 | $2 | $3 | $4 |"); [[ $3 == ok || $3 == SKIPPED* ]] || failed=1; }

# 2. CUDA against CPU, every method, the three shipped models. Random methods with fewer draws than
# their defaults; what is compared is the arithmetic on each device.
inputs=(data/samples/chelsea.jpg data/samples/coffee.jpg)
for model in resnet vit swin; do
  for method in tve occlusion gradcam gradcam++ saliency smoothgrad ig rise kernelshap; do
    extra=()
    case $method in
      smoothgrad) extra=(--samples 8) ;;
      rise | kernelshap) extra=(--samples 256) ;;
    esac
    dir=$out/parity/$model/$method
    ok=1
    for device in cpu cuda; do
      if ! "$tve" explain "${inputs[@]}" --model "$model" --method "$method" "${extra[@]}" --device "$device" \
          --format npy,json -o "$dir/$device" >>"$log" 2>&1; then
        ok=0
      fi
    done
    if ((ok)); then
      result=$(/usr/bin/python3 scripts/maintainer/compare_runs.py "$dir/cpu" "$dir/cuda" --map-tol 2e-2 --prob-tol 2e-3 \
        --label "$model $method" 2>&1)
      status=$?
      echo "$result" >>"$log"
      numbers=$(echo "$result" | head -n 1 | sed -n 's/.*largest map difference \([^ ]*\) of range, largest probability difference \([^:]*\):.*/map \1, prob \2/p')
      row "parity $model" "$method" "$([[ $status -eq 0 ]] && echo ok || echo FAILED)" "${numbers:-$(echo "$result" | head -n 1)}"
    else
      row "parity $model" "$method" "FAILED" "a run failed; see $log"
    fi
  done
  say "parity $model done at $(elapsed) s"
done

# 3. tve bench on both devices.
for device in cpu cuda; do
  for method in tve gradcam; do
    if line=$("$tve" bench data/samples --model resnet --method "$method" --device "$device" --repeats 10 2>>"$log"); then
      echo "$line" >>"$log"
      summary=$(echo "$line" | /usr/bin/python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
lat, thr = r.get("latency", {}), r.get("throughput", {})
nan = float("nan")
print("explain %.1f ms, forward %.1f ms, compute %.1f img/s, pipeline %.1f img/s" % (
    lat.get("explain_ms", nan), lat.get("forward_ms", nan),
    thr.get("compute_images_per_s", nan), thr.get("pipeline_images_per_s", nan)))' 2>&1)
      row "bench resnet" "$method on $device" ok "$summary"
    else
      row "bench resnet" "$method on $device" FAILED "see $log"
    fi
  done
done
say "bench done at $(elapsed) s"

# 4. Sixty seconds of explainer training on the GPU (into $out, the shipped bundle untouched).
if ((cuda_python_ok)); then
  mkdir -p "$out/train"
  if "$python" scripts/train_explainer.py --model resnet --images data/samples --time-budget 60s --holdout 2 \
      --device cuda --run "$out/train/run" --export-to "$out/train/bundle" --tve "$tve" --no-progress \
      >"$out/train/log.txt" 2>&1; then
    speed=$(grep -o '[0-9.]* img/s' "$out/train/log.txt" | tail -n 1)
    row "train_explainer" "60 s on cuda" ok "${speed:-done}; log $out/train/log.txt"
  else
    row "train_explainer" "60 s on cuda" FAILED "log $out/train/log.txt"
  fi
else
  row "train_explainer" "60 s on cuda" "SKIPPED (exit 6 at the end)" "no Python whose torch sees the GPU (${python:-none found}; --python PATH)"
fi
say "training done at $(elapsed) s"

# 5. The table.
{
  echo "# tve GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $(elapsed) s"
  echo
  echo "GPU: $gpus  "
  echo "tve: $tve"
  echo
  echo "| check | case | result | numbers |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} | tee "$out/results.md"
echo "gpu_check: table in $out/results.md, log in $log" >&2
((failed)) && exit 1
((cuda_python_ok)) || exit 6
exit 0
