#!/usr/bin/env python3
"""Opens a report.html of tve eval or tve explain in headless Chromium (Debian's `chromium`) and checks
what a reader would see: the page loads without a console message, every <img> decodes, nothing
comes from the network, the page is no wider than a phone's screen, the gallery names every input
(escaping included), failed images appear with their error, and (eval) the summary table shows
summary.json's numbers.

Chromium shows the page as it is on disk in a phone-wide frame of a page written beside it (same
folder, so relative image URLs resolve the same), whose script writes what it measured into the
DOM, which --dump-dom prints.

Usage: check_report.py REPORT [--summary summary.json] [--records FILE] [--min-images N]
                              [--failed N] [--screenshot PNG] [--width PX]
Exit 0 when every check holds; 1 with one line per failed check otherwise.
"""

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

# The report, unchanged, in a frame as wide as a phone's screen (Chromium's headless window is at
# least 500 px wide), and a script beside it that measures what the frame shows and writes it into
# the DOM, which --dump-dom prints. The report itself holds no script.
WRAPPER = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>body{margin:0}iframe{border:0;display:block;width:WIDTHpx;height:HEIGHTpx}</style></head>
<body><iframe id="report" src="REPORT"></iframe>
<script>
const frame = document.getElementById('report');
frame.addEventListener('load', () => {
  // Synchronous, at the frame's load: --dump-dom prints the page right after the wrapper's load
  // event, which waits for the frame's. The frame is tall enough that the gallery's lazily
  // loaded images are all in view, so they load before it (an image still loading is a failure).
  const doc = frame.contentDocument, win = frame.contentWindow, out = {};
  const images = [...doc.images];
  out.decode_errors = images.filter(image => !image.complete).map(image => image.getAttribute('src') + ': not loaded');
  out.images = images.map(image => ({src: image.getAttribute('src'), width: image.naturalWidth, height: image.naturalHeight}));
  out.rows = [...doc.querySelectorAll('#summary-table tbody tr')].map(row => row.dataset.method);
  out.cells = [...doc.querySelectorAll('#summary-table tbody td')].map(cell => ({
      method: cell.parentElement.dataset.method, metric: cell.dataset.metric, statistic: cell.dataset.statistic || null,
      text: cell.textContent}));
  out.curves = [...doc.querySelectorAll('svg[data-curves] polyline')].map(line => line.dataset.method);
  out.entries = [...doc.querySelectorAll('section.entry')].map(entry => ({
      input: entry.querySelector('h3').textContent,
      error: entry.classList.contains('failed') ? entry.querySelector('.error').textContent : null,
      items: [...entry.querySelectorAll('figure.item')].map(item => item.querySelector('b').textContent)}));
  out.resources = win.performance.getEntriesByType('resource').map(entry => entry.name);
  out.scroll_width = doc.documentElement.scrollWidth;
  out.viewport_width = win.innerWidth;
  const result = document.createElement('pre');
  result.id = 'tve-check';
  result.textContent = JSON.stringify(out);
  document.body.appendChild(result);
});
</script></body></html>
"""


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("check_report: chromium not found (scripts/setup.sh installs Debian's chromium package)")


def run_chromium(args, profile, timeout=120):
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. Any network is
    # refused outright (a report must not need it); the profile is a scratch folder.
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
               "--allow-file-access-from-files",  # the wrapper reads the frame's document
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"] + args
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, errors="replace")


def shown_numbers(text):
    """'0.123 [0.100, 0.150]' -> [(0.123, 3), (0.1, 3), (0.15, 3)]: each value and its decimals."""
    return [(float(m.group(0)), len(m.group(1) or "")) for m in re.finditer(r"-?\d+(?:\.(\d+))?", text)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--summary", type=Path, help="eval: summary.json, whose numbers the table must show")
    parser.add_argument("--records", type=Path, help="JSON lines with an 'input' each (results.jsonl, explain's stdout): "
                                                     "every input must have its gallery entry, errors as errors")
    parser.add_argument("--min-images", type=int, default=1)
    parser.add_argument("--failed", type=int, help="how many gallery entries are failures")
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page (PNG)")
    parser.add_argument("--width", type=int, default=390, help="the report's width in CSS pixels (390: a phone)")
    parser.add_argument("--screenshot-height", type=int, default=1600)
    args = parser.parse_args()

    problems = []
    page = args.report.read_text(encoding="utf-8")
    for scheme in ("http:", "https:", "//cdn", "<script"):
        if scheme in page:
            problems.append(f"the report holds {scheme!r}: it must need no network and no script")
    wrapper = args.report.parent / f".tve-report-check-{os.getpid()}.html"
    make_wrapper = lambda height: wrapper.write_text(
        WRAPPER.replace("WIDTH", str(args.width)).replace("HEIGHT", str(height)).replace("REPORT", quote(args.report.name)),
        encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            make_wrapper(50000)
            done = run_chromium(["--window-size=800,900", "--dump-dom", wrapper.resolve().as_uri()], profile)
            if args.screenshot:
                make_wrapper(args.screenshot_height)
                full = Path(profile) / "screenshot.png"
                shot = run_chromium([f"--window-size=800,{args.screenshot_height}", "--hide-scrollbars",
                                     f"--screenshot={full}", wrapper.resolve().as_uri()], profile)
                if shot.returncode != 0 or not full.is_file():
                    problems.append(f"no screenshot: {shot.stderr[-2000:]}")
                else:
                    from PIL import Image  # only for the docs' screenshots: the phone-wide frame, 256 colours
                    Image.open(full).convert("RGB").crop((0, 0, args.width, args.screenshot_height)).quantize(256).save(
                        args.screenshot, optimize=True)
    finally:
        wrapper.unlink(missing_ok=True)

    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    problems += [f"console: {line}" for line in console]
    found = re.search(r'<pre id="tve-check">(.*?)</pre>', done.stdout, re.S)
    if done.returncode != 0 or not found:
        sys.exit(f"check_report: the page did not finish loading in chromium (exit {done.returncode}): {done.stderr[-3000:]}")
    result = json.loads(html.unescape(found.group(1)))

    images = result["images"]
    if len(images) < args.min_images:
        problems.append(f"{len(images)} image(s), expected at least {args.min_images}")
    problems += [f"image does not decode: {image['src']}" for image in images if image["width"] <= 0 or image["height"] <= 0]
    problems += [f"decode failed: {error}" for error in result["decode_errors"]]
    problems += [f"fetched from outside the report's folder: {url}" for url in result["resources"]
                 if not url.startswith(args.report.parent.resolve().as_uri() + "/")]
    if result["scroll_width"] > result["viewport_width"]:
        problems.append(f"the page is {result['scroll_width']} px wide on a {result['viewport_width']} px screen")

    entries = result["entries"]
    failed = [entry for entry in entries if entry["error"] is not None]
    if args.failed is not None and len(failed) != args.failed:
        problems.append(f"{len(failed)} failed entries, expected {args.failed}: {failed}")
    if args.records:
        by_input = {entry["input"]: entry for entry in entries}
        records = [json.loads(line) for line in args.records.read_text(encoding="utf-8").splitlines() if line.strip()]
        for record in records:
            entry = by_input.get(record["input"])
            if entry is None:
                problems.append(f"no gallery entry for {record['input']!r} (gallery: {sorted(by_input)})")
            elif "error" in record and "method" not in record and record["error"] not in (entry["error"] or ""):
                problems.append(f"{record['input']!r} failed with {record['error']!r}; the report says {entry['error']!r}")
        if len(by_input) != len({record["input"] for record in records}):
            problems.append(f"{len(by_input)} gallery entries for {len({r['input'] for r in records})} inputs")

    if args.summary:
        summary = json.loads(args.summary.read_text(encoding="utf-8"))
        methods = summary["methods"]
        if sorted(result["rows"]) != sorted(methods):
            problems.append(f"table rows {result['rows']}, summary.json methods {sorted(methods)}")
        if sorted(set(result["curves"])) != sorted(methods):
            problems.append(f"curves of {result['curves']}, methods {sorted(methods)}")
        shown = set()
        for cell in result["cells"]:
            if cell["statistic"] is None:  # '-': the method has no value for this metric
                if cell["metric"] in methods.get(cell["method"], {}):
                    problems.append(f"{cell['method']} {cell['metric']}: '-' but summary.json has a value")
                continue
            shown.add((cell["method"], cell["metric"]))
            expected = methods[cell["method"]][cell["metric"]]
            numbers = shown_numbers(cell["text"])
            wanted = [expected[cell["statistic"]], expected["low"], expected["high"]]
            if len(numbers) != 3:
                problems.append(f"{cell['method']} {cell['metric']}: {cell['text']!r} is not 'value [low, high]'")
                continue
            for (value, decimals), exact in zip(numbers, wanted):
                if abs(value - exact) > 0.5 * 10 ** -decimals + 1e-9:
                    problems.append(f"{cell['method']} {cell['metric']}: shows {cell['text']!r}, summary.json {wanted}")
                    break
        missing = {(m, k) for m, metrics in methods.items() for k in metrics} - shown
        problems += [f"{m} {k}: in summary.json, not in the table" for m, k in sorted(missing)]

    for problem in problems:
        print(f"check_report: {args.report}: {problem}", file=sys.stderr)
    print(json.dumps({"report": str(args.report), "images": len(images), "entries": len(entries), "failed": len(failed),
                      "cells": len(result["cells"]), "problems": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
