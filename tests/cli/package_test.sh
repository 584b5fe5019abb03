#!/usr/bin/env bash
# The installed tve: the Debian package CPack builds, unpacked into a scratch root (dpkg -x, no
# container, no root needed), and the bash completion and man page it installs, which tve writes from
# its own option tables (apps/tve/command_generate.cpp). Usage: TVE=build/tve package_test.sh CASE
source "$(dirname "$0")/harness.sh"

BUILD_DIR=$(dirname "$TVE")
GENERATED="$BUILD_DIR/generated/share"
COMMANDS=(predict explain eval fit-head bench models)

# The long options a command's --help lists (its option lines, "  -m,--model TEXT ..." and
# "  --smooth,--no-smooth{false} ..."): what the completion and the man page must offer.
help_options() {
  "$TVE" "$@" --help | grep -oE -- '^  (-[a-zA-Z0-9],)?--[a-z][a-z0-9-]*(\{[a-z]*\})?(,--[a-z][a-z0-9-]*)?' |
    grep -oE -- '--[a-z][a-z0-9-]*' | sort -u
}

case_deb_installed_explains() {
  command -v cpack >/dev/null && command -v dpkg-shlibdeps >/dev/null || fail "needs cpack and dpkg-shlibdeps (dpkg-dev)"
  (cd "$BUILD_DIR" && cpack -G DEB -B "$WORK/package" >"$WORK/cpack.log" 2>&1) || fail "cpack: $(tail -20 "$WORK/cpack.log")"
  local deb; deb=$(ls "$WORK"/package/tve_*.deb 2>/dev/null | head -1)
  [[ -f $deb ]] || fail "cpack wrote no tve_*.deb: $(ls "$WORK/package")"

  # Depends computed from the libraries the binary links (dpkg-shlibdeps), not written by hand.
  local depends; depends=$(dpkg-deb -f "$deb" Depends)
  for library in libtorch1.13 libopencv-core406 libopencv-imgcodecs406 libspdlog1.10 libssl3 libc6 libstdc++6; do
    [[ $depends == *"$library"* ]] || fail "Depends lacks $library: $depends"
  done
  [[ $(dpkg-deb -f "$deb" Recommends) == *libopenblas0-pthread* ]] || fail "Recommends lacks OpenBLAS"
  dpkg-deb -c "$deb" >"$WORK/contents"
  for path in ./usr/bin/tve ./usr/share/tve/models/DEFAULT ./usr/share/tve/models/resnet/manifest.json \
    ./usr/share/tve/models/resnet/explainer.pt ./usr/share/tve/models/vit/target.pt ./usr/share/doc/tve/README.md \
    ./usr/share/doc/tve/docs/bundle-format.md ./usr/share/man/man1/tve.1 ./usr/share/bash-completion/completions/tve; do
    grep -q " $path\$" "$WORK/contents" || fail "the package lacks $path"
  done
  not_in contents "/tiny-"  # the random-weight test bundles stay in the source tree

  dpkg -x "$deb" "$WORK/root" || fail "dpkg -x failed"
  cmp -s "$WORK/root/usr/share/bash-completion/completions/tve" "$GENERATED/tve.bash" || fail "installed completion differs from the build's"
  cmp -s "$WORK/root/usr/share/man/man1/tve.1" "$GENERATED/tve.1" || fail "installed man page differs from the build's"

  # Moved after unpacking: the models are found from the binary's own location, not from a prefix
  # compiled in, and never from this source tree.
  mv "$WORK/root" "$WORK/moved"
  local installed="$WORK/moved/usr/bin/tve" models="$WORK/moved/usr/share/tve/models"
  cd "$WORK" || fail "cd"
  "$installed" --version >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0; expect_in out "tve 0."; expect_in out "LibTorch "; expect_in out "devices: cpu"
  "$installed" models --json >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0
  json_check "sorted(b['name'] for b in lines) == ['resnet', 'swin', 'vit'] and all(b['path'].startswith('$models/') for b in lines)"

  # The installed default model explains a sample: overlay, map and record, with that model's head.
  local model; model=$(cat "$models/DEFAULT")
  "$installed" explain "$SAMPLES/chelsea.jpg" --out "$WORK/explained" --threads 2 >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0
  json_check "len(lines) == 1 and lines[0]['model'] == '$model' and lines[0]['method'] == 'tve' and not lines[0].get('error')"
  local base="$WORK/explained${SAMPLES}/chelsea.jpg"
  [[ -s $base.overlay.png && -s $base.map.npy && -s $base.json ]] || fail "outputs missing under $WORK/explained: $(find "$WORK/explained" -type f)"
  py "
import json, sys, numpy as np
from PIL import Image
record = json.load(open(sys.argv[1] + '.json'))
grid = json.load(open(sys.argv[2] + '/$model/manifest.json'))['grid']
m = np.load(sys.argv[1] + '.map.npy')
assert m.shape == (1, grid, grid) and np.isfinite(m).all() and m.std() > 0, m.shape
assert Image.open(sys.argv[1] + '.overlay.png').size == Image.open(sys.argv[3]).size
assert record['explained'][0]['label'], record
" "$base" "$models" "$SAMPLES/chelsea.jpg"

  # With its models gone, the installed tve does not fall back to this source tree's.
  mv "$models" "$WORK/models-away"
  "$installed" models --json >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0; [[ ! -s $WORK/out ]] || fail "bundles listed without share/tve/models: $(cat "$WORK/out")"
  expect_in err "no bundles found"
  "$installed" predict "$SAMPLES/chelsea.jpg" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 3; not_in err "$TVE_SOURCE_DIR"
}

# complete WORD...: runs the completion function on a command line whose last word is being
# completed, leaving one candidate a line in $WORK/out.
complete_line() {
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _tve; printf "%s\n" "${COMPREPLY[@]}"' \
    complete "$GENERATED/tve.bash" "$TVE" "$@" >"$WORK/out" 2>"$WORK/err" || fail "completion failed: $(cat "$WORK/err")"
}
candidates() { sort "$WORK/out" | tr '\n' ' '; }

case_bash_completion() {
  [[ -s $GENERATED/tve.bash ]] || fail "the build wrote no $GENERATED/tve.bash"
  bash -n "$GENERATED/tve.bash" || fail "not valid bash"
  complete_line ""
  for command in "${COMMANDS[@]}"; do grep -qx "$command" "$WORK/out" || fail "commands lack $command: $(candidates)"; done
  not_in out generate  # hidden
  complete_line e
  [[ $(candidates) == "eval explain " ]] || fail "'e' completes to $(candidates)"
  # Every option --help lists for a command is offered after '--'.
  for command in "${COMMANDS[@]}"; do
    complete_line "$command" --
    while read -r option; do
      grep -qx -- "$option" "$WORK/out" || fail "$command: completion lacks $option"
    done < <(help_options "$command")
  done
  complete_line explain --no-s
  [[ $(candidates) == "--no-smooth " ]] || fail "--no-s completes to $(candidates)"
  complete_line explain --method grad
  [[ $(candidates) == "gradcam gradcam++ " ]] || fail "--method grad completes to $(candidates)"
  complete_line explain --progress a
  [[ $(candidates) == "always auto " ]] || fail "--progress a completes to $(candidates)"
  complete_line explain --colormap ""
  [[ $(candidates) == "inferno jet turbo viridis " ]] || fail "--colormap completes to $(candidates)"
  # Bundle names from the binary itself, in the folders it would search (--models-dir on the line first).
  complete_line explain --model ""
  for name in resnet vit swin; do grep -qx "$name" "$WORK/out" || fail "--model lacks $name: $(candidates)"; done
  mkdir -p "$WORK/bundles"
  cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/bundles/mine"
  complete_line models --models-dir "$WORK/bundles" -m mi
  [[ $(candidates) == "mine " ]] || fail "-m mi with --models-dir completes to $(candidates)"
  # Inputs complete as files.
  touch "$WORK/photo-one.png"
  complete_line explain "$WORK/photo-"
  [[ $(candidates) == "$WORK/photo-one.png " ]] || fail "inputs complete to $(candidates)"
}

case_man_page() {
  local page="$GENERATED/tve.1"
  [[ -s $page ]] || fail "the build wrote no $page"
  # groff's own warnings (all of them: -ww), rendered as man would.
  groff -man -Tutf8 -ww -z "$page" 2>"$WORK/err" || fail "groff failed: $(cat "$WORK/err")"
  [[ ! -s $WORK/err ]] || fail "groff warns: $(head -c 2000 "$WORK/err")"
  MANWIDTH=100 man -l "$page" 2>"$WORK/err" | col -b >"$WORK/man.txt" || fail "man -l failed: $(cat "$WORK/err")"
  for heading in NAME SYNOPSIS DESCRIPTION OPTIONS COMMANDS EXAMPLES "EXIT CODES" MODELS ENVIRONMENT FILES; do
    grep -q "^$heading" "$WORK/man.txt" || fail "the man page lacks the section $heading"
  done
  # Each command's section lists every option its --help lists.
  for command in "${COMMANDS[@]}"; do
    awk -v start="   tve $command" '$0 == start {on = 1; next} /^   tve / {on = 0} on' "$WORK/man.txt" >"$WORK/section"
    [[ -s $WORK/section ]] || fail "the man page has no section for tve $command"
    while read -r option; do
      grep -qF -- "$option" "$WORK/section" || fail "man page, tve $command: lacks $option"
    done < <(help_options "$command")
  done
  grep -q "share/tve/models" "$WORK/man.txt" || fail "the man page does not say where models are found"
}

"case_$1"
echo "PASS: $1"
