#!/usr/bin/env bash
# Hostile inputs for golden files and JUnit (explain --record/--expect/--junit), resume, shards and
# stdout (issue 28): the real binary on real files and the shipped models, each case generated
# here. Usage:
#   TVE=path/to/tve TVE_SOURCE_DIR=path/to/source hostile_golden_resume.sh CASE
# Each case checks the exit code, stderr and what is (and is not) left on disk; docs/ci.md and
# docs/cluster.md state the guarantees these cases hold.
RUN_TIMEOUT=60
source "$(dirname "$0")/harness.sh"
cd "$WORK" || exit 1

# before_compute: the run ended before loading a model (its thread choice is the first model log).
before_compute() { not_in err "threads:"; not_in err "explaining "; }
no_temporaries() {
  local left; left=$(find "$1" -name '*.tve.tmp' 2>/dev/null)
  [[ -z "$left" ]] || fail "temporaries left under $1: $left"
}


# with_file_limit KB CMD...: CMD with writes to regular files limited to KB kibibytes (RLIMIT_FSIZE),
# SIGXFSZ ignored so that a write past it fails with EFBIG as on a full disk. stdout and stderr as
# given by the caller (send them to a pipe or a device: the limit applies to regular files only).
with_file_limit() {
  local kb=$1; shift
  (trap '' XFSZ; ulimit -f "$kb"; exec "$@")
}


# samples: data/samples copied to $WORK/s (11 images), and a golden file of tiny-vit on it in g.json.
samples_and_golden() {
  mkdir -p s && cp "$SAMPLES"/*.jpg "$SAMPLES"/*.png s/ || fail "setup"
  run explain s --model tiny-vit --format none --record g.json; expect_rc 0
}

# ---------------------------------------------------------------------------------------------
# Golden files and JUnit

case_golden_destinations_refused() {
  # A destination that is not a regular file (or could not be one) is refused before any model
  # work, and left as it was: a device, a pipe, a folder, a link to either, a link loop, a name
  # ending in '/', a folder that is a file, an unwritable folder.
  samples_and_golden
  mkfifo fifo; mkdir folder; ln -s fifo link-to-fifo; ln -s /dev/full link-to-full; ln -s loop-b loop-a; ln -s loop-a loop-b
  printf 'x' >plain
  for dest in /dev/full fifo folder link-to-fifo link-to-full loop-a "new/" plain/sub.json; do
    for option in --record --junit; do
      local extra=(); [[ $option == --junit ]] && extra=(--expect g.json)
      run explain s --model tiny-vit --format none "${extra[@]}" "$option" "$dest"; expect_rc 7
      expect_in err "$dest"; before_compute
      [[ ! -s out ]] || fail "$option $dest: results printed before the refusal"
    done
  done
  [[ -p fifo && -d folder && -c /dev/full && -L link-to-fifo && -L loop-a && -f plain ]] || fail "a destination was replaced"
  run explain s --model tiny-vit --record loop-a; expect_in err "symbolic link loop"
  run explain s --model tiny-vit --record fifo; expect_in err "named pipe"
  run explain s --model tiny-vit --record /dev/full; expect_in err "character device"
  run explain s --model tiny-vit --record folder; expect_in err "is a folder"
  # An empty name is a usage error.
  for option in --record --junit --expect; do
    local extra=(); [[ $option == --junit ]] && extra=(--expect g.json)
    run explain s --model tiny-vit "${extra[@]}" "$option" ""; expect_rc 2; expect_in err "$option names no file"
  done
  # A folder where the run may not write: refused before any model work, not after it.
  mkdir -p locked; chmod 755 "$WORK"; chmod 555 locked; chmod -R a+rX s g.json
  as_unprivileged "$TVE" explain s --model tiny-vit --format none --record locked/g.json >out 2>err </dev/null; rc=$?
  if [[ $rc -ne 99 ]]; then
    expect_rc 7; expect_in err "locked/g.json"; before_compute
  fi
  no_temporaries "$WORK"
}

case_golden_symlink_writes_through() {
  # A symbolic link as destination: the file it leads to is replaced, the link kept.
  samples_and_golden
  mkdir -p versions
  printf 'old\n' >versions/golden-v1.json; ln -s versions/golden-v1.json current.json
  run explain s --model tiny-vit --format none --record current.json; expect_rc 0
  [[ -L current.json && $(readlink current.json) == versions/golden-v1.json ]] || fail "the link was replaced"
  cmp -s versions/golden-v1.json g.json || fail "the link's target does not hold the new golden file"
  # A dangling link: its target is created.
  ln -s versions/golden-v2.json next.json
  run explain s --model tiny-vit --format none --record next.json; expect_rc 0
  [[ -L next.json && -f versions/golden-v2.json ]] || fail "the dangling link's target was not written"
  # JUnit through a link, and --expect through one.
  ln -s versions/report.xml report.xml
  run explain s --model tiny-vit --format none --expect current.json --junit report.xml; expect_rc 0
  [[ -L report.xml ]] && py 'import sys, xml.etree.ElementTree as E; assert len(E.parse(sys.argv[1]).findall(".//testcase")) == 11' versions/report.xml
  no_temporaries "$WORK"
}

case_golden_final_write_fails() {
  # The golden file or the report cannot be written when the run ends (a full disk, here a file
  # size limit): exit 7 naming it, no temporary left, an earlier golden file kept as it was.
  samples_and_golden
  cp g.json before.json
  with_file_limit 2 "$TVE" explain s --model tiny-vit --format none --record g.json 2>&1 >/dev/null </dev/null | cat >err
  rc=${PIPESTATUS[0]}
  expect_rc 7; expect_in err "g.json"; expect_in err "write failed"
  cmp -s g.json before.json || fail "the earlier golden file was changed"
  # A new file: not created at all.
  with_file_limit 2 "$TVE" explain s --model tiny-vit --format none --record new.json 2>&1 >/dev/null </dev/null | cat >err
  rc=${PIPESTATUS[0]}
  expect_rc 7; [[ ! -e new.json ]] || fail "a cut golden file was left"
  # JUnit: exit 7 beats the verdict (the report CI reads is missing), never 0.
  with_file_limit 1 "$TVE" explain s --model tiny-vit --format none --expect g.json --junit big.xml --top-k 3 \
    2>&1 >/dev/null </dev/null | cat >err
  rc=${PIPESTATUS[0]}
  expect_rc 7; expect_in err "big.xml"; [[ ! -e big.xml ]] || fail "a cut report was left"
  no_temporaries "$WORK"
}

case_golden_expect_unusable() {
  # --expect of anything but a golden file: exit 2 naming the file (and the entry), before any
  # model work, never a hang on a pipe or a device.
  samples_and_golden
  mkfifo fifo; mkdir folder
  for golden in folder fifo /dev/zero /dev/null missing.json; do
    run explain s --model tiny-vit --expect "$golden"; expect_rc 2; expect_in err "$golden"; before_compute
  done
  expect_in err "does not exist"
  run explain s --model tiny-vit --expect fifo; expect_in err "named pipe"
  run explain s --model tiny-vit --expect folder; expect_in err "is a folder"
  # Broken golden files, each generated from the real one: the message names the file and entry.
  "$PY" - <<'PY' || fail "could not make broken golden files"
import json
g = json.load(open("g.json"))
first = "s/chelsea.jpg"
assert first in g["images"], list(g["images"])
def broken(name, change):
    b = json.loads(json.dumps(g)); change(b); json.dump(b, open(name, "w"))
broken("b-empty-explained.json", lambda b: b["images"][first].update(explained=[]))
broken("b-no-explained.json", lambda b: b["images"][first].pop("explained"))
broken("b-empty-top.json", lambda b: b["images"][first].update(top_k=[]))
broken("b-probability.json", lambda b: b["images"][first]["top_k"][0].update(probability=2.5))
broken("b-index.json", lambda b: b["images"][first]["explained"][0].update(index=-1))
broken("b-label.json", lambda b: b["images"][first]["explained"][0].pop("label"))
broken("b-ragged.json", lambda b: b["images"][first]["explained"][0]["values"][1].pop())
broken("b-not-number.json", lambda b: b["images"][first]["explained"][0]["values"][0].__setitem__(0, None))
broken("b-no-images.json", lambda b: b.update(images={}))
broken("b-format.json", lambda b: b.update(format="tve-golden/99"))
broken("b-entry-list.json", lambda b: b["images"].__setitem__(first, []))
open("b-truncated.json", "w").write(open("g.json").read()[:500])
open("b-empty.json", "w").write("")
open("b-array.json", "w").write("[]")
PY
  for golden in b-*.json; do
    run explain s --model tiny-vit --expect "$golden"; expect_rc 2; expect_in err "$golden"; before_compute
    case $golden in
      b-empty-explained.json | b-no-explained.json) expect_in err "s/chelsea.jpg' explains no class" ;;
      b-empty-top.json) expect_in err "s/chelsea.jpg' has no top_k" ;;
      b-probability.json) expect_in err "top_k[0] has no probability between 0 and 1" ;;
      b-index.json) expect_in err "explained[0] has no class index" ;;
      b-label.json) expect_in err "explained[0] has no label" ;;
      b-ragged.json) expect_in err "not square" ;;
      b-not-number.json) expect_in err "not a number" ;;
      b-no-images.json) expect_in err "records no image" ;;
    esac
  done
}

case_golden_unknown_class() {
  # Classes the head lacks, by label or by index: refused (exit 2) naming entry and class, before
  # any image is explained. A valid class in another's place is a difference (exit 8), never skipped.
  samples_and_golden
  "$PY" - <<'PY' || fail "could not make the golden files"
import json
g = json.load(open("g.json"))
first = "s/chelsea.jpg"
def variant(name, change):
    b = json.loads(json.dumps(g)); change(b); json.dump(b, open(name, "w"))
variant("u-label.json", lambda b: b["images"][first]["explained"][0].update(label="no-such-class"))
variant("u-index.json", lambda b: b["images"][first]["explained"][0].update(index=99))
variant("u-top.json", lambda b: b["images"][first]["top_k"][1].update(label="cat"))
e = g["images"][first]["explained"][0]
other = next(t for t in g["images"][first]["top_k"] if t["index"] != e["index"])
def swap(b):  # the map recorded under another (real) class
    b["images"][first]["explained"][0].update(index=other["index"], label=other["label"])
variant("u-swapped.json", swap)
PY
  for golden in u-label.json u-index.json u-top.json; do
    run explain s --model tiny-vit --expect "$golden"; expect_rc 2
    expect_in err "$golden"; expect_in err "s/chelsea.jpg"; expect_in err "not a class of head 'target'"; not_in err "explaining "
  done
  expect_in err "'cat'"
  run explain s --model tiny-vit --expect u-swapped.json; expect_rc 8
  expect_in err "s/chelsea.jpg: explained class 1 is"
  # Another number of explained classes than recorded: every recorded map is accounted for.
  run explain s --model tiny-vit --format none --top-k 2 --record top2.json; expect_rc 0
  run explain s --model tiny-vit --expect top2.json; expect_rc 8; expect_in err "explains 1 class(es), recorded 2"
  run explain s --model tiny-vit --expect g.json --top-k 2; expect_rc 8; expect_in err "explains 2 class(es), recorded 1"
}

case_golden_failed_image_reported_once() {
  # An image of the golden file that no longer decodes is one failed test case, not two; an
  # extra image that fails is one test case naming both problems.
  samples_and_golden
  head -c 300 "$SAMPLES/chelsea.jpg" >s/chelsea.jpg
  cp "$FIXTURES/images/truncated.png" s/zz-extra.png
  run explain s --model tiny-vit --format none --expect g.json --junit j.xml; expect_rc 8
  [[ $(grep -c "expect: s/chelsea.jpg: " err) -eq 1 ]] || fail "s/chelsea.jpg reported $(grep -c "expect: s/chelsea.jpg: " err) times: $(cat err)"
  expect_in err "expect: s/chelsea.jpg: failed:"
  expect_in err "10 of 12 image(s) as recorded"
  "$PY" - j.xml <<'PY' || fail "JUnit XML"
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot().find("testsuite")
cases = suite.findall("testcase")
names = [c.get("name") for c in cases]
assert len(cases) == len(set(names)) == 12 == int(suite.get("tests")), names
failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
assert set(failed) == {"s/chelsea.jpg", "s/zz-extra.png"} and int(suite.get("failures")) == 2, failed
assert "failed:" in failed["s/chelsea.jpg"].get("message")
assert "extra" in failed["s/zz-extra.png"].text and "failed:" in failed["s/zz-extra.png"].text
PY
}

case_golden_same_file_refused() {
  # --record, --expect and --junit naming one file, however spelt (./, absolute, a link, a hard
  # link): a usage error before any model work, the golden file unchanged.
  samples_and_golden
  cp g.json keep.json
  ln -s g.json link.json; ln g.json hard.json
  for spelling in g.json ./g.json "$WORK/g.json" link.json hard.json sub/../g.json; do
    mkdir -p sub
    run explain s --model tiny-vit --record "$spelling" --expect g.json; expect_rc 2; expect_in err "are the same file"
    before_compute
    run explain s --model tiny-vit --expect g.json --junit "$spelling"; expect_rc 2; expect_in err "are the same file"
  done
  run explain s --model tiny-vit --record new.json --expect g.json --junit ./new.json; expect_rc 2; expect_in err "are the same file"
  cmp -s g.json keep.json || fail "the golden file was changed"
  [[ ! -e new.json ]] || fail "new.json written"
}

# ---------------------------------------------------------------------------------------------
# Resume

case_resume_any_spelling_of_out() {
  # k1, ./k1, k1/, k1//, the absolute path and a link to it are one output folder: nothing is
  # explained again, and the records name the outputs as this run spells them.
  images 12 in
  run explain in --model tiny-vit --out k1; expect_rc 0
  find k1 -name '*.png.json' -printf '%p %i %T@\n' | sort >before
  ln -s k1 k1-link
  for out in ./k1 k1/ k1// "$WORK/k1" k1-link; do
    run explain in --model tiny-vit --out "$out" --resume; expect_rc 0
    py 'import json, sys, os
lines = [json.loads(l) for l in open("out")]
assert len(lines) == 12 and all(l.get("resumed") for l in lines), [l.get("resumed") for l in lines]
assert all(p.startswith(sys.argv[1].rstrip("/")) and os.path.isfile(p) for l in lines for p in l["outputs"]["overlay"] + [l["outputs"]["npy"], l["outputs"]["json"]]), lines[0]["outputs"]' "$out"
  done
  # The inputs spelt otherwise (./in, in/): the same outputs, the records name the inputs as given.
  run explain ./in/ --model tiny-vit --out k1 --resume; expect_rc 0
  py 'import json; lines = [json.loads(l) for l in open("out")]; assert len(lines) == 12 and all(l.get("resumed") and l["input"].startswith("./in/") for l in lines)'
  find k1 -name '*.png.json' -printf '%p %i %T@\n' | sort >after
  cmp -s before after || fail "a finished image was explained again"
}

case_resume_verifies_what_it_skips() {
  # Outputs cut, zeroed, changed or holding an error are explained again, the others resumed; in
  # the end every output is whole and agrees with its record.
  images 14 in
  run explain in --model tiny-resnet --top-k 2 --out res; expect_rc 0
  "$PY" - <<'PY' || fail "could not damage the outputs"
import json, os
from pathlib import Path
r = Path("res") / "in"
def cut(p, n): data = p.read_bytes(); p.write_bytes(data[:len(data) - n])
cut(r / "img-000.png.map.npy", 8)                                     # raw maps cut
cut(r / "img-001.png.top1.overlay.png", 20)                           # overlay cut (its IEND gone)
p = r / "img-002.png.top2.overlay.png"; p.write_bytes(bytes(p.stat().st_size))  # zeroed, same size
p = r / "img-003.png.map.npy"; b = bytearray(p.read_bytes()); b[-1] ^= 0x40; p.write_bytes(bytes(b))  # one value changed
def edit(i, change):
    p = r / f"img-{i:03d}.png.json"; rec = json.loads(p.read_text()); change(rec); p.write_text(json.dumps(rec))
edit(4, lambda rec: rec.update(error="img-004.png: something failed"))  # a record holding an error
edit(5, lambda rec: rec.update(explained=rec["explained"][:1]))        # a map missing
edit(6, lambda rec: rec["explained"][0]["values"][0].__setitem__(0, None))  # a NaN written as null
edit(7, lambda rec: rec.pop("top_k"))
p = r / "img-008.png.json"; p.write_text(p.read_text()[:100])         # record cut
os.remove(r / "img-009.png.top1.overlay.png")                          # an output missing
PY
  run explain in --model tiny-resnet --top-k 2 --out res --resume; expect_rc 0
  py 'import json
lines = [json.loads(l) for l in open("out")]
again = sorted(l["input"] for l in lines if not l.get("resumed"))
assert len(lines) == 14 and again == [f"in/img-{i:03d}.png" for i in range(10)], again
assert not any("error" in l for l in lines)'
  expect_in err "--resume: 10 input(s) with outputs of an earlier run explained again"
  run explain in --model tiny-resnet --top-k 2 --out res --resume -v; expect_rc 0
  py 'import json; assert all(json.loads(l).get("resumed") for l in open("out"))'
  "$PY" - <<'PY' || fail "outputs not whole after the resume"
import json
import numpy as np
from pathlib import Path
from PIL import Image
for rec_path in sorted(Path("res/in").glob("*.png.json")):
    rec = json.loads(rec_path.read_text())
    maps = np.load(rec["outputs"]["npy"])
    assert maps.shape == (2, 4, 4) and np.array_equal(maps, np.array([e["values"] for e in rec["explained"]], np.float32)), rec_path
    for overlay in rec["outputs"]["overlay"]:
        Image.open(overlay).load()
PY
  no_temporaries res
}

case_resume_is_deterministic() {
  # A run cut short and resumed gives the same maps and probabilities, bit for bit, as one
  # uninterrupted run with the same --threads (docs/cluster.md, "Are runs deterministic?"), even
  # where the resumed run explains an image alone in its batch.
  images 41 in
  local args=(explain in --model resnet --batch-size 4 --threads 2 --format npy,json)
  run "${args[@]}" --out whole; expect_rc 0
  cp out whole.jsonl
  "$TVE" "${args[@]}" --out cut >/dev/null 2>err </dev/null &
  local pid=$!
  for ((i = 0; i < 3000; i++)); do
    [[ $(find cut -name '*.json' 2>/dev/null | wc -l) -ge 9 ]] && break
    sleep 0.01
  done
  kill -9 $pid; wait $pid 2>/dev/null
  local done_before; done_before=$(find cut -name '*.png.json' | wc -l)
  [[ $done_before -ge 1 && $done_before -lt 41 ]] || fail "kill did not land mid-run: $done_before done"
  run "${args[@]}" --out cut --resume; expect_rc 0
  # One image redone alone: its batch of one is padded to the others' size.
  cp -r whole lone && rm lone/in/img-007.png.json
  run "${args[@]}" --out lone --resume; expect_rc 0
  py 'import json; lines = [json.loads(l) for l in open("out")]; assert [l["input"] for l in lines if not l.get("resumed")] == ["in/img-007.png"]'
  "$PY" - <<'PY' || fail "resumed results differ from an uninterrupted run's"
import json
from pathlib import Path
whole = sorted(Path("whole").rglob("*.map.npy"))
assert len(whole) == 41
for other in ("cut", "lone"):
    for a in whole:
        b = Path(other) / a.relative_to("whole")
        assert a.read_bytes() == b.read_bytes(), (other, a)
    for a in sorted(Path("whole").rglob("*.png.json")):
        ra, rb = json.loads(a.read_text()), json.loads((Path(other) / a.relative_to("whole")).read_text())
        assert ra["top_k"] == rb["top_k"] and ra["explained"] == rb["explained"], (other, a)
PY
}

# ---------------------------------------------------------------------------------------------
# Shards

# shard_inputs FILE: the sorted inputs of a JSONL file, one per line.
shard_inputs() { "$PY" -c 'import json, sys; sys.stdout.write("".join(i + "\n" for i in sorted(json.loads(l)["input"] for l in open(sys.argv[1]))))' "$1"; }

case_shards_slurm_step() {
  # --array=A-B:S: task T is shard (T-A)/S of (B-A)/S+1; every task of the array together cover
  # the inputs exactly once, and each equals the explicit K/N shard.
  images 24 in
  local args=(explain in --model tiny-vit --format none --threads 1)
  for array in "0 20 2" "3 15 4"; do
    read -r min max step <<<"$array"
    local count=$(((max - min) / step + 1))
    : >all.txt
    for ((task = min; task <= max; task += step)); do
      SLURM_ARRAY_TASK_ID=$task SLURM_ARRAY_TASK_MIN=$min SLURM_ARRAY_TASK_MAX=$max SLURM_ARRAY_TASK_STEP=$step \
        SLURM_ARRAY_TASK_COUNT=$count timeout 60 "$TVE" "${args[@]}" --shard auto >out 2>err </dev/null; rc=$?
      [[ $rc -le 1 ]] || fail "task $task of $min-$max:$step: exit $rc: $(cat err)"
      expect_in err "shard $(((task - min) / step))/$count"
      shard_inputs out >>all.txt
    done
    [[ $(sort all.txt | uniq | wc -l) -eq 24 && $(wc -l <all.txt) -eq 24 ]] || fail "array $min-$max:$step: not each input once"
  done
  # The same split as the explicit shard.
  SLURM_ARRAY_TASK_ID=7 SLURM_ARRAY_TASK_MIN=3 SLURM_ARRAY_TASK_MAX=15 SLURM_ARRAY_TASK_STEP=4 SLURM_ARRAY_TASK_COUNT=4 \
    "$TVE" "${args[@]}" --shard auto/4 >auto.jsonl 2>err </dev/null || true
  run "${args[@]}" --shard 1/4
  [[ "$(shard_inputs auto.jsonl)" == "$(shard_inputs out)" ]] || fail "task 7 of 3-15:4 is not shard 1/4"
}

case_shards_inconsistent_array_refused() {
  # An array whose variables disagree, or whose tasks cannot be numbered 0..N-1: exit 2 naming
  # the variables, before any model work, never a silent skip of shards.
  images 3 in
  local args=(explain in --model tiny-vit --format none --shard auto)
  check() {
    env "$@" timeout 60 "$TVE" "${args[@]}" >out 2>err </dev/null; rc=$?
    expect_rc 2; expect_in err "--shard"; before_compute
  }
  check SLURM_ARRAY_TASK_ID=4 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_MAX=9 SLURM_ARRAY_TASK_COUNT=3   # --array=1,4,9
  expect_in err "not an evenly spaced range"
  check SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=9 SLURM_ARRAY_TASK_COUNT=5
  check SLURM_ARRAY_TASK_ID=4 SLURM_ARRAY_TASK_MIN=3 SLURM_ARRAY_TASK_MAX=15 SLURM_ARRAY_TASK_STEP=4 SLURM_ARRAY_TASK_COUNT=4
  expect_in err "not MIN plus a multiple of STEP"
  check SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=4 SLURM_ARRAY_TASK_STEP=0
  check SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=4 SLURM_ARRAY_TASK_STEP=two
  check SLURM_ARRAY_TASK_ID=6 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=4
  expect_in err "above SLURM_ARRAY_TASK_MAX"
  check SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_MIN=2 SLURM_ARRAY_TASK_MAX=4
  # auto/N against an array of another size (0-8:2 has 5 tasks).
  args=(explain in --model tiny-vit --format none --shard auto/4)
  check SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_MAX=8 SLURM_ARRAY_TASK_STEP=2 SLURM_ARRAY_TASK_COUNT=5
  expect_in err "has 5 tasks"
}

# ---------------------------------------------------------------------------------------------
# Output folder and stdout

case_out_is_the_input_folder() {
  # --out naming the input folder (or a folder holding it): its images are explained, its outputs
  # never taken as inputs, run after run, however the folder is spelt or the paths are listed.
  images 5 in
  for round in 1 2; do
    run explain in --model tiny-vit --out in; expect_rc 0
    py 'import json; lines = [json.loads(l) for l in open("out")]; assert len(lines) == 5 and all("error" not in l for l in lines), len(lines)'
  done
  expect_in err "in the output folder are not taken as inputs"
  run explain "$WORK/in" --model tiny-vit --out in --resume; expect_rc 0
  py 'import json; lines = [json.loads(l) for l in open("out")]; assert len(lines) == 5, [l["input"] for l in lines]'
  find in -type f >list
  "$TVE" explain - --model tiny-vit --out in <list >out 2>err; rc=$?
  expect_rc 0; py 'import json; lines = [json.loads(l) for l in open("out")]; assert len(lines) == 5, [l["input"] for l in lines]'
  # An input folder inside the output folder: outputs land beside the inputs.
  mkdir -p w && images 4 w/in && cd w || fail "cd"
  for round in 1 2; do
    run explain in --model tiny-vit --out .; expect_rc 0
    py 'import json; lines = [json.loads(l) for l in open("../out")]; assert len(lines) == 4, [l["input"] for l in lines]'
  done
  [[ $(find in -name '*.overlay.png' | wc -l) -eq 4 ]] || fail "outputs not beside the inputs"
}

case_stdout_lines_stay_whole() {
  # stdout on a disk that fills up (a file size limit): exit 7, and every line in the file is a
  # complete JSON record ending in a newline, appended or not, for explain and predict.
  images 30 in
  printf '{"earlier": "line"}\n' >kept.jsonl
  for target in new.jsonl kept.jsonl; do
    for command in explain predict; do
      local redirect=">"; [[ $target == kept.jsonl ]] && redirect=">>"
      if [[ $redirect == ">" ]]; then
        with_file_limit 8 "$TVE" "$command" in --model tiny-vit --top-k 3 2>&1 >"$target" </dev/null | cat >err
        rc=${PIPESTATUS[0]}
      else
        with_file_limit 8 "$TVE" "$command" in --model tiny-vit --top-k 3 2>&1 >>"$target" </dev/null | cat >err
        rc=${PIPESTATUS[0]}
      fi
      expect_rc 7; expect_in err "stdout: cannot write results"
      py 'import json, sys
data = open(sys.argv[1], "rb").read()
assert data.endswith(b"\n"), data[-80:]
lines = [json.loads(l) for l in data.decode().splitlines()]
assert 1 <= len(lines) < 31, len(lines)' "$target"
      [[ $target == new.jsonl ]] && rm -f new.jsonl
    done
  done
  head -1 kept.jsonl | grep -qF '"earlier"' || fail "the earlier content of an appended file was lost"
}

"case_$1"
echo "PASS: $1"
