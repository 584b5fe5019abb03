#!/usr/bin/env bash
# Hostile inputs for tve eval, the command line's edges and bundle manifests (issue 28): the real
# binary on real files and shipped models, each case generated here. Usage:
#   TVE=path/to/tve TVE_SOURCE_DIR=path/to/source hostile_eval_cli.sh CASE
# Each case checks exit code, stderr and what is (and is not) left on disk; docs/ci.md lists them.
RUN_TIMEOUT=60
source "$(dirname "$0")/harness.sh"

no_internals() { ! grep -q "stack\|0x[0-9a-f]\{8\}\|terminate called" "$WORK/err" || fail "C++ internals on stderr: $(cat "$WORK/err")"; }
# no_leftovers DIR: no temporary or hidden file under DIR.
no_leftovers() {
  local left; left=$(find "$1" -name '.*' -o -name '*.tmp' 2>/dev/null)
  [[ -z "$left" ]] || fail "left under $1: $left"
}


# ---- eval -------------------------------------------------------------------------------------

case_eval_masks_folder_must_exist() {
  images 2 "$WORK/in"
  : >"$WORK/a-file"
  for masks in "$WORK/no-such-folder" "$WORK/a-file" ""; do
    run eval "$WORK/in" --model tiny-vit --methods gradcam --no-fidelity --masks "$masks" --out "$WORK/o"
    expect_rc 2; expect_in err "--masks"; no_internals
    [[ -z "$masks" ]] || expect_in err "$masks"
    [[ ! -e "$WORK/o" ]] || fail "--masks '$masks' refused, but --out was made"
  done
}

case_eval_mask_errors_are_reported() {
  images 5 "$WORK/in"
  "$PY" - "$WORK/in" <<'PY' || fail "could not make masks"
import sys
from PIL import Image
d = sys.argv[1]
right = Image.new("L", (48, 40), 0); right.paste(255, (24, 0, 48, 40)); right.save(f"{d}/img-000.mask.png")  # good
Image.new("L", (7, 7), 255).save(f"{d}/img-001.mask.png")                                                   # wrong size
open(f"{d}/img-002.mask.png", "wb").write(b"\x89PNG\r\n\x1a\n not a png at all")                            # corrupt
PY
  mkdir "$WORK/in/img-003.mask.png"  # a folder where the mask should be
  # img-004 has no mask: not an error without --masks.
  run eval "$WORK/in" --model tiny-vit --methods tve,gradcam --no-fidelity --out "$WORK/o" --threads 1
  expect_rc 1; no_internals
  for bad in img-001.mask.png img-002.mask.png img-003.mask.png; do expect_in err "$bad"; done
  expect_in err "3 mask(s) could not be used"
  py '
import json, sys
out = sys.argv[1]
summary = json.load(open(out + "/summary.json"))
assert summary["images"] == 5 and summary["failed"] == 0, summary
bad = sorted(f["mask"].rsplit("/", 1)[1] for f in summary["mask_failures"])
assert bad == ["img-001.mask.png", "img-002.mask.png", "img-003.mask.png"], bad
assert summary["images_without_mask"] == 1, summary
records = [json.loads(l) for l in open(out + "/results.jsonl")]
assert len(records) == 10
for r in records:
    name = r["input"].rsplit("/", 1)[1]
    if name == "img-000.png":
        assert isinstance(r["mask"]["pointing_hit"], bool) and 0 <= r["mask"]["above_median_share_on_object"] <= 1, r["mask"]
    elif name == "img-004.png":
        assert r["mask"] is None
    else:
        assert "error" in r["mask"] and "pointing_hit" not in r["mask"], r["mask"]
assert summary["methods"]["tve"]["pointing_game"]["count"] == 1
' "$WORK/o"
  no_leftovers "$WORK/o"
  # With --masks, an image without a mask there is counted and said.
  mkdir -p "$WORK/masks"; cp "$WORK/in/img-000.mask.png" "$WORK/masks/"
  run eval "$WORK/in/img-000.png" "$WORK/in/img-004.png" --model tiny-vit --methods gradcam --no-fidelity \
      --masks "$WORK/masks" --out "$WORK/o2" --threads 1
  expect_rc 0; expect_in err "1 of 2 image(s) have no mask under $WORK/masks"
}

case_eval_cost_per_batch_after_warm_up() {
  images 6 "$WORK/in"
  run eval "$WORK/in" --model tiny-vit --methods tve,occlusion --batch-size 2 --out "$WORK/o" --threads 1
  expect_rc 0
  expect_in out "3 batch(es), the interval over batches"
  py '
import json, sys
out = sys.argv[1]
records = [json.loads(l) for l in open(out + "/results.jsonl")]
summary = json.load(open(out + "/summary.json"))
for method in ("tve", "occlusion"):
    m = summary["methods"][method]
    # One time per batch (3 batches of 2), one quality value per image.
    assert m["ms"]["count"] == 3 and m["forward_equivalents"]["count"] == 3, m
    assert m["deletion_auc"]["count"] == 6, m
    rs = [r for r in records if r["method"] == method]
    assert sorted({r["cost"]["batch"]["index"] for r in rs}) == [0, 1, 2]
    assert all(r["cost"]["batch"]["images"] == 2 for r in rs)
    runs = {r["cost"]["batch"]["run"] for r in rs}
    assert len(runs) == 1, runs
occlusion = [r for r in records if r["method"] == "occlusion"]
assert all(r["cost"]["forward_passes"] == 33 for r in occlusion)  # tiny-vit: G = 4, both lambdas, and the pass that picks the class
# After the warm-up, the first batch costs about what the others do: a pass of occlusion is a
# forward pass of one image (batched, usually less). Before the fix it read many times that.
first = [r["cost"]["forward_equivalents"] for r in occlusion if r["cost"]["batch"]["index"] == 0][0]
assert first <= 4 * 32, first
' "$WORK/o"
}

case_eval_share_ignores_offset() {
  # resnet's TVE maps lie below 0 by one constant per image (forward_with_embedding): the share
  # measured from 0 was 0 for them all; measured from the median it says where the mass is.
  images 3 "$WORK/in"
  "$PY" - "$WORK/in" <<'PY' || fail "could not make masks"
import sys
from PIL import Image
for i in range(3):
    mask = Image.new("L", (48, 40), 0); mask.paste(255, (0, 0, 32, 40)); mask.save(f"{sys.argv[1]}/img-{i:03d}.mask.png")
PY
  run eval "$WORK/in" --model resnet --methods tve,gradcam --no-fidelity --out "$WORK/o" --threads 2
  expect_rc 0; expect_in out "share above median on object"; not_in out "positive share"
  py '
import json, sys
records = [json.loads(l) for l in open(sys.argv[1] + "/results.jsonl")]
shares = [r["mask"]["above_median_share_on_object"] for r in records if r["method"] == "tve"]
assert len(shares) == 3 and all(0 <= s <= 1 for s in shares) and max(shares) > 0, shares
assert all("positive_share_in_mask" not in r["mask"] for r in records)
' "$WORK/o"
}

case_eval_resume_after_kill() {
  images 80 "$WORK/in"  # enough that the run is still going when a few images are done
  local args=(eval "$WORK/in" --model tiny-resnet --methods tve,gradcam,occlusion --batch-size 1 --threads 1 --progress never)
  "$TVE" "${args[@]}" --out "$WORK/o" >/dev/null 2>"$WORK/err-killed" </dev/null &
  local pid=$! lines=0 temp=""
  for _ in $(seq 1 600); do
    temp=$(find "$WORK/o" -maxdepth 1 -name '.results.jsonl.*.tve.tmp' 2>/dev/null | head -1)
    [[ -n "$temp" ]] && lines=$(wc -l <"$temp")
    ((lines >= 12)) && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  ((lines >= 12)) || fail "the run ended before it could be killed (saw $lines lines); stderr: $(cat "$WORK/err-killed")"
  # Killed outright: no result appears as an output; what it wrote is under its temporary name.
  [[ ! -e "$WORK/o/results.jsonl" && ! -e "$WORK/o/summary.json" ]] || fail "a killed run left outputs"
  cp "$temp" "$WORK/killed.jsonl"
  run "${args[@]}" --out "$WORK/o" --resume
  expect_rc 0; expect_in err "by an earlier run)"
  no_leftovers "$WORK/o"
  # Every image once per method; the killed run's whole records kept as they were; the numbers
  # equal a fresh run's.
  run "${args[@]}" --out "$WORK/fresh"
  expect_rc 0
  py '
import json, sys
o, killed, fresh = sys.argv[1:4]
done = [json.loads(l) for l in open(o + "/results.jsonl")]
assert sorted((r["input"], r["method"]) for r in done) == sorted(
    (f"{sys.argv[4]}/img-{i:03d}.png", m) for i in range(80) for m in ("tve", "gradcam", "occlusion"))
kept = {}
for line in open(killed):
    try:
        r = json.loads(line)
    except ValueError:
        continue  # the line kill -9 cut
    kept[(r["input"], r["method"])] = r
complete = {i for (i, m) in kept if all((i, n) in kept for n in ("tve", "gradcam", "occlusion"))}
summary = json.load(open(o + "/summary.json"))
assert summary["resumed"] == len(complete) >= 4, (summary["resumed"], len(complete))
by_key = {(r["input"], r["method"]): r for r in done}
for key, r in kept.items():
    if key[0] in complete:
        assert by_key[key] == r, key
fresh_records = {(r["input"], r["method"]): r for r in map(json.loads, open(fresh + "/results.jsonl"))}
for key, r in by_key.items():
    f = fresh_records[key]
    assert abs(r["deletion_auc"] - f["deletion_auc"]) < 1e-5 and abs(r["insertion_auc"] - f["insertion_auc"]) < 1e-5, key
    assert r["class"]["index"] == f["class"]["index"]
s_fresh = json.load(open(fresh + "/summary.json"))
for m in ("tve", "gradcam", "occlusion"):
    assert abs(summary["methods"][m]["deletion_auc"]["median"] - s_fresh["methods"][m]["deletion_auc"]["median"]) < 1e-5
' "$WORK/o" "$WORK/killed.jsonl" "$WORK/fresh" "$WORK/in"
  # Other settings: nothing is reused.
  run "${args[@]}" --out "$WORK/o" --resume --insertion-start blur
  expect_rc 0; not_in err "by an earlier run"
  py 'import json, sys; s = json.load(open(sys.argv[1])); assert s["resumed"] == 0 and s["images"] == 80, s' "$WORK/o/summary.json"
}

case_eval_kill_then_plain_run_cleans_up() {
  images 30 "$WORK/in"
  local args=(eval "$WORK/in" --model tiny-resnet --methods tve,occlusion --batch-size 1 --threads 1 --out "$WORK/o")
  "$TVE" "${args[@]}" >/dev/null 2>&1 </dev/null &
  local pid=$! seen=""
  for _ in $(seq 1 600); do
    seen=$(find "$WORK/o" -maxdepth 1 -name '.results.jsonl.*.tve.tmp' -size +0 2>/dev/null | head -1)
    [[ -n "$seen" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  [[ -n "$seen" ]] || fail "the run ended before it could be killed"
  # Without --resume the next run starts over, and the killed run's temporary goes.
  run "${args[@]}"
  expect_rc 0; no_leftovers "$WORK/o"
  [[ $(wc -l <"$WORK/o/results.jsonl") -eq 60 ]] || fail "results.jsonl is not complete"
}

# ---- bundle manifests --------------------------------------------------------------------------

# manifest_refused PY_EDIT FIELD: a copy of tiny-vit whose manifest `m` PY_EDIT changed must be
# refused at load (exit 3) with a message naming manifest.json and FIELD, quickly, without internals.
manifest_refused() {
  rm -rf "$WORK/b"; cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/b"
  "$PY" - "$WORK/b/manifest.json" "$1" <<'PY' || fail "could not edit the manifest: $1"
import json, sys
m = json.load(open(sys.argv[1]))
exec(sys.argv[2])
open(sys.argv[1], "w").write(json.dumps(m))
PY
  run predict "$SAMPLES/chelsea.jpg" --model "$WORK/b"
  expect_rc 3; expect_in err "manifest.json"; expect_in err "$2"; no_internals
  [[ ! -s "$WORK/out" ]] || fail "stdout not empty for a refused bundle"
}

case_bundle_numbers_are_bounded() {
  # Every real number of the manifest, below and above its range, and not a number at all.
  local std mean
  for std in 1e-45 0 1e30 '"0.2"'; do
    manifest_refused "m['input']['std'][1] = $std" "'input.std'"
  done
  for mean in -1e-300 1.5; do
    manifest_refused "m['input']['mean'][0] = $mean" "'input.mean'"
  done
  local crop
  for crop in 1e-6 1.0001 '"0.9"'; do
    manifest_refused "m['input']['resize'] = 'center_crop'; m['input']['crop_fraction'] = $crop" "'input.crop_fraction'"
  done
  local lambda
  for lambda in -1 1e9 'True'; do
    manifest_refused "m['explainer']['lambda_pos'] = $lambda" "'explainer.lambda_pos'"
    manifest_refused "m['explainer']['lambda_neg'] = $lambda" "'explainer.lambda_neg'"
  done
  manifest_refused "m['explainer']['lambda_pos'] = 0; m['explainer']['lambda_neg'] = 0" "both 0"
  # The integers too, at both ends.
  manifest_refused "m['grid'] = 129" "'grid'"
  manifest_refused "m['radius'] = -1" "'radius'"
  manifest_refused "m['input']['width'] = 4097" "'input.width'"
  # In range, a value at a bound loads: std 1/255 (models on 0..255 inputs), a crop of 0.1.
  rm -rf "$WORK/b"; cp -r "$TVE_SOURCE_DIR/models/tiny-vit" "$WORK/b"
  py 'import json, sys; p = sys.argv[1]; m = json.load(open(p)); m["input"].update(std=[1/255] * 3, mean=[0, 0, 1], resize="center_crop", crop_fraction=0.1); m["explainer"]["lambda_neg"] = 0; open(p, "w").write(json.dumps(m))' "$WORK/b/manifest.json"
  run predict "$SAMPLES/chelsea.jpg" --model "$WORK/b"; expect_rc 0
}

# ---- command-line edges ------------------------------------------------------------------------

case_cli_format_edges() {
  local image="$FIXTURES/images/rgb8.png"
  for format in "" "npy," "overlay,,npy"; do
    run explain "$image" --model tiny-vit --format "$format" --out "$WORK/o"
    expect_rc 2; expect_in err "--format"; no_internals
  done
  [[ -z "$(find "$WORK" -name '*.npy' -o -name '*.overlay.png')" ]] || fail "a refused --format wrote outputs"
  # Files asked for without a folder to put them in.
  for format in overlay npy,json; do
    run explain "$image" --model tiny-vit --format "$format"
    expect_rc 2; expect_in err "--format $format writes files under --out"
    [[ ! -s "$WORK/out" ]] || fail "--format $format without --out ran anyway"
  done
  # "none" asks for no file: fine without --out, and stdout has the record.
  run explain "$image" --model tiny-vit --format none; expect_rc 0
  [[ $(wc -l <"$WORK/out") -eq 1 ]] || fail "--format none lost the stdout record"
  run explain "$image" --model tiny-vit; expect_rc 0  # the default formats without --out: stdout only
}

case_cli_models_dir_must_exist() {
  : >"$WORK/a-file"
  # Every command that looks bundles up, with a folder that is not there...
  for command in "predict $SAMPLES/chelsea.jpg --model tiny-vit" "explain $SAMPLES/chelsea.jpg --model tiny-vit" \
                 "eval $SAMPLES/chelsea.jpg --model tiny-vit --methods gradcam --out $WORK/e" "models"; do
    # shellcheck disable=SC2086
    run $command --models-dir "$WORK/no-such-models"
    expect_rc 2; expect_in err "--models-dir $WORK/no-such-models: folder does not exist"; no_internals
  done
  # ...and with a file, or nothing, in its place.
  for dir in "$WORK/a-file" ""; do
    run predict "$SAMPLES/chelsea.jpg" --model tiny-vit --models-dir "$dir"
    expect_rc 2; expect_in err "--models-dir"; no_internals
  done
  [[ ! -e "$WORK/e/results.jsonl" ]] || fail "eval ran with a missing --models-dir"
  # A missing folder in the environment is said, and the search goes on.
  TVE_MODELS_DIR="$WORK/gone" timeout 60 "$TVE" predict "$SAMPLES/chelsea.jpg" --model tiny-vit >"$WORK/out" 2>"$WORK/err" </dev/null
  rc=$?; expect_rc 0; expect_in err "TVE_MODELS_DIR=$WORK/gone is not a folder"
}

case_cli_threads_clamped() {
  local cores; cores=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
  local started=$SECONDS
  run predict "$SAMPLES/chelsea.jpg" --model tiny-vit --threads 1000
  expect_rc 0; expect_in err "--threads 1000 is more than the $cores usable core(s); using $cores"
  expect_in err "threads: LibTorch $cores, BLAS $cores"
  ((SECONDS - started < 30)) || fail "--threads 1000 took $((SECONDS - started)) s"
  run predict "$SAMPLES/chelsea.jpg" --model tiny-vit --threads 1; expect_rc 0; not_in err "usable core"
  run predict "$SAMPLES/chelsea.jpg" --model tiny-vit --threads 0; expect_rc 2
}

case_cli_stdin_blank_lines() {
  printf '   \n\t\n\n%s\n \r\n  \t \n' "$FIXTURES/images/rgb8.png" >"$WORK/list"
  timeout 60 "$TVE" predict - --model tiny-vit <"$WORK/list" >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 0
  [[ $(wc -l <"$WORK/out") -eq 1 ]] || fail "whitespace lines were taken as paths: $(cat "$WORK/out")"
  not_in out '"error"'
  # Only whitespace: nothing to do, said as such.
  printf ' \n\t\n' | timeout 60 "$TVE" predict - --model tiny-vit >"$WORK/out" 2>"$WORK/err"; rc=$?
  expect_rc 4; expect_in err "no images found"
}

case_cli_long_file_names() {
  mkdir -p "$WORK/in"
  # 249 + 4 = 253 bytes: the longest names a file system takes; two that share their first 200
  # bytes; one of 2-byte UTF-8 characters, cut where a character starts.
  local long; long=$(printf 'a%.0s' $(seq 1 249))
  local other; other=$(printf 'a%.0s' $(seq 1 248))b
  local accents; accents=$(printf 'é%.0s' $(seq 1 124))
  for name in "$long" "$other" "$accents"; do cp "$FIXTURES/images/rgb8.png" "$WORK/in/$name.png"; done
  cp "$FIXTURES/images/rgb8.png" "$WORK/in/short.png"
  run explain "$WORK/in" --model tiny-vit --top-k 3 --out "$WORK/o" --threads 1
  expect_rc 0; no_internals
  py '
import json, os, sys
out = sys.argv[1]
records = [json.loads(l) for l in open(sys.argv[2])]
assert len(records) == 4 and not any("error" in r for r in records), records
names = set()
for r in records:
    files = r["outputs"]["overlay"] + [r["outputs"]["npy"], r["outputs"]["json"]]
    for f in files:
        assert os.path.isfile(f), f
        base = os.path.basename(f)
        assert len(base.encode()) <= 255, base
        base.encode("utf-8").decode("utf-8")  # a whole character at the cut
    stem = os.path.basename(r["outputs"]["npy"])[: -len(".map.npy")]
    names.add(stem)
    if r["input"].endswith("short.png"):
        assert stem == "short.png", stem
    else:
        assert len(stem.encode()) <= 200 and "~" in stem, stem
assert len(names) == 4, names  # distinct inputs, distinct outputs
' "$WORK/o" "$WORK/out"
  no_leftovers "$WORK/o"
  # The same names in every run: a resumed run finds them.
  run explain "$WORK/in" --model tiny-vit --top-k 3 --out "$WORK/o" --threads 1 --resume
  expect_rc 0
  py 'import json, sys; rs = [json.loads(l) for l in open(sys.argv[1])]; assert len(rs) == 4 and all(r.get("resumed") for r in rs), rs' "$WORK/out"
}

case_cli_animated_webp() {
  "$PY" - "$WORK" <<'PY' || fail "could not make an animated WebP"
import sys
from PIL import Image
d = sys.argv[1]
red = Image.new("RGB", (40, 32), (220, 30, 30))
red.paste((20, 20, 200), (8, 8, 24, 24))
blue = Image.new("RGB", (40, 32), (20, 20, 200))
red.save(f"{d}/first.png")
red.save(f"{d}/anim.webp", save_all=True, append_images=[blue, red], lossless=True, duration=100, loop=0)
assert Image.open(f"{d}/anim.webp").n_frames == 3
PY
  run explain "$WORK/anim.webp" "$WORK/first.png" --model tiny-vit --format npy --out "$WORK/o"
  expect_rc 0; expect_in err "anim.webp: animated WebP of 3 frames; only its first frame is used"
  not_in err "corrupt"
  # Lossless: the first frame is the PNG's pixels, so the maps are the same.
  py '
import json, sys
import numpy as np
a, b = [json.loads(l) for l in open(sys.argv[1])]
assert a["explained"][0]["label"] == b["explained"][0]["label"], (a["explained"], b["explained"])
assert np.allclose(np.load(a["outputs"]["npy"]), np.load(b["outputs"]["npy"]), rtol=0, atol=1e-6)
' "$WORK/out"
  # A cut animation is named as such, not as a crash.
  head -c $(($(stat -c %s "$WORK/anim.webp") - 20)) "$WORK/anim.webp" >"$WORK/cut.webp"
  run predict "$WORK/cut.webp" --model tiny-vit
  expect_rc 4; expect_in err "cut.webp"; expect_in err "animated WebP is truncated"; no_internals
}

"case_$1"
echo "PASS: $1"
