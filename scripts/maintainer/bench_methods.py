"""Speed and agreement of tve's attribution methods against the reference libraries (issue #19,
docs/methods.md "Against the reference libraries"): for each model and method, in one run on the
same images and thread count, the time per image of `tve explain --method M` and of the same
method in Captum / pytorch-grad-cam on the eager target (RISE: the PyTorch implementation of
tvelib.references, no library has it), and how closely the two maps agree.

    /usr/bin/python3 scripts/reference_env.py exec scripts/maintainer/bench_methods.py [--models resnet vit swin]
        [--images 3] [--threads 1] [--methods saliency ig ...] [--rise-samples N]
        [--kernelshap-samples N] [--out table.md]

Needs the build (build/tve or $TVE) and the reference venv (scripts/setup.sh makes it). Images:
data/samples resized to the input size (PNG, so neither side resamples), one more first as a
warm-up that is timed by neither side. tve runs one process per model and method with --batch-size
1 (the forward-pass time of the record is then one image's); its "ms/img" is the record's
cost.ms, the method's own time, and "wall" the whole process (start-up and model loading included)
over every image it explained. The reference's time is the library call, per image, after the
warm-up. Forward-pass equivalents: cost.ms over the record's timings_ms.forward.

Agreement: saliency, ig, occlusion: the largest difference relative to the reference's largest
magnitude (occlusion with one-cell windows, tve's map + y_c(x)); gradcam, gradcam++: the largest
residual of an affine fit (pytorch-grad-cam normalises its maps) relative to the reference's range,
and Pearson's r; smoothgrad, kernelshap, rise (random draws differ): Pearson's and Spearman's r.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from tvelib import bundle, threads  # noqa: E402

try:
    from tvelib import references as R  # noqa: E402
except ImportError as e:
    sys.exit(f"bench_methods: {e}; run it with the reference venv's python: "
             f"/usr/bin/python3 scripts/reference_env.py exec {' '.join(sys.argv)}")

SAMPLES = ROOT / "data" / "samples"
WARMUP = "emoji-1-information-desk-person.png"
IMAGES = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "emoji-0-tokyo-tower.png", "fashion-0-coat.png",
          "mnist-0-7.png", "novel-0-speak-no-evil-monkey.png"]
METHODS = ["tve", "occlusion", "saliency", "smoothgrad", "ig", "gradcam", "gradcam++", "kernelshap", "rise"]
DEFAULT_SAMPLES = {"smoothgrad": 25, "ig": 32, "rise": 4000, "kernelshap": 2000}  # docs/methods.md


class Method:
    """One row: tve's options, the reference's call (model, x, class) -> [G,G], how they compare."""

    def __init__(self, name: str, options: List[str], reference: str, settings: str,
                 call: Callable | None, compare: str):
        self.name, self.options, self.reference, self.settings = name, options, reference, settings
        self.call, self.compare = call, compare


def methods_for(b: bundle.Bundle, args) -> Dict[str, Method]:
    g = b.manifest["grid"]
    n_rise, n_shap = args.rise_samples, args.kernelshap_samples
    return {
        "tve": Method("tve", [], "-", "bundle defaults", None, "none"),
        "occlusion": Method("occlusion", ["--radius", "0", "--lambda-pos", "0", "--lambda-neg", "1"],
                            "Captum Occlusion", f"radius 0, lambdas 0 / 1; Captum: {g * g} one-cell windows, 64 per batch",
                            lambda m, x, c: R.occlusion(m, x, c, g, batch=64), "occlusion"),
        "saliency": Method("saliency", [], "Captum Saliency", "", lambda m, x, c: R.saliency(m, x, c, g), "exact"),
        "smoothgrad": Method("smoothgrad", [], "Captum NoiseTunnel(Saliency)", "n = 25",
                             lambda m, x, c: R.smoothgrad(m, x, c, g, 25), "correlation"),
        "ig": Method("ig", [], "Captum IntegratedGradients", "m = 32 Gauss-Legendre",
                     lambda m, x, c: R.integrated_gradients(m, x, c, g, 32), "exact"),
        "gradcam": Method("gradcam", [], "pytorch-grad-cam GradCAM", "",
                          lambda m, x, c: R.gradcam(b, m, x, c), "affine"),
        "gradcam++": Method("gradcam++", [], "pytorch-grad-cam GradCAMPlusPlus", "",
                            lambda m, x, c: R.gradcam(b, m, x, c, plusplus=True), "affine"),
        "kernelshap": Method("kernelshap", ["--samples", str(n_shap)], "Captum KernelShap",
                             f"n = {n_shap}; Captum: 64 per batch",
                             lambda m, x, c: R.kernel_shap(m, x, c, g, n_shap, batch=64), "correlation"),
        "rise": Method("rise", ["--samples", str(n_rise)], "tvelib.references.rise (PyTorch)",
                       f"n = {n_rise}; reference: 100 per batch", lambda m, x, c: R.rise(m, x, c, g, n_rise, batch=100),
                       "correlation"),
    }


def agreement(kind: str, ours: np.ndarray, ref: np.ndarray, record: dict) -> Dict[str, float]:
    if kind == "exact":
        return {"rel_diff": float(np.abs(ours - ref).max() / np.abs(ref).max())}
    if kind == "occlusion":
        c = record["explained"][0]["index"]
        y = next(e["logit"] for e in record["top_k"] if e["index"] == c)
        return {"rel_diff": float(np.abs(ours + y - ref).max() / np.abs(ref).max())}
    if kind == "affine":
        if np.ptp(ref) == 0:  # pytorch-grad-cam maps a constant CAM (0 after the ReLU, or h = w = 1) to 0
            return {"constant": float(np.ptp(ours) / max(np.abs(ours).max(), 1e-30))}
        a, _, residual = R.affine_fit(ours, ref)
        return {"residual": residual, "pearson": R.pearson(ours, ref), "slope_positive": float(a > 0)}
    return {"pearson": R.pearson(ours, ref), "spearman": R.spearman(ours, ref)}


def run_tve(args, model: str, method: Method, images: List[Path]):
    """One `tve explain` process over the images: (records by input path, wall seconds)."""
    cmd = [args.tve, "explain", *map(str, images), "--model", model, "--method", method.name,
           "--threads", str(args.threads), "--batch-size", "1", "--format", "none", "--quiet", *method.options]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
    records = {json.loads(line)["input"]: json.loads(line) for line in out.stdout.splitlines() if line.strip()}
    return records, wall


def bench_model(args, model: str, folder: Path) -> List[dict]:
    b = bundle.Bundle(ROOT / "models" / model)
    m = R.reference_model(b, "target")
    size = b.input_size
    warmup = R.input_image(SAMPLES / WARMUP, size, folder / f"{model}-warmup.png")
    images = [R.input_image(SAMPLES / name, size, folder / f"{model}-{Path(name).stem}.png")
              for name in IMAGES[:args.images]]
    xs = {p: R.load_input(b, p) for p in [warmup, *images]}
    with torch.no_grad():  # the eager forward pass, for scale
        m(xs[warmup])
        eager = []
        for p in images:
            start = time.perf_counter()
            m(xs[p])
            eager.append(1e3 * (time.perf_counter() - start))
    rows = []
    table = methods_for(b, args)
    for name in args.methods:
        method = table[name]
        records, wall = run_tve(args, model, method, [warmup, *images])
        timed = [records[str(p)] for p in images]
        row = {"model": model, "method": name, "settings": method.settings, "reference": method.reference,
               "images": len(images), "tve_ms": statistics.mean(r["cost"]["ms"] for r in timed),
               "tve_wall_ms": 1e3 * wall / (len(images) + 1),
               "forward_ms": statistics.median(r["timings_ms"]["forward"] for r in timed),
               "forward_equivalents": statistics.mean(r["cost"]["ms"] / r["timings_ms"]["forward"] for r in timed),
               "passes": {k: timed[0]["cost"][k] for k in ("forward_passes", "backward_passes", "explainer_passes")},
               "eager_forward_ms": statistics.median(eager)}
        if method.call is not None:
            c = records[str(warmup)]["explained"][0]["index"]
            method.call(m, xs[warmup], c)  # warm-up, untimed
            times, agree = [], []
            for p, r in zip(images, timed):
                c = r["explained"][0]["index"]
                start = time.perf_counter()
                ref = method.call(m, xs[p], c)
                times.append(1e3 * (time.perf_counter() - start))
                agree.append(agreement(method.compare, R.record_map(r), ref, r))
            row["reference_ms"] = statistics.mean(times)
            row["agreement"] = agree  # per image
        rows.append(row)
        print(f"bench_methods: {model} {name}: tve {row['tve_ms']:.1f} ms/img, reference "
              f"{row.get('reference_ms', float('nan')):.1f} ms/img {row.get('agreement', '')}", file=sys.stderr)
    return rows


def fmt_ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fmt_agreement(row: dict) -> str:
    """The worst image's numbers, per kind of agreement."""
    per_image = row.get("agreement")
    if not per_image:
        return "-"
    values = lambda key: [a[key] for a in per_image if key in a]
    text = []
    if values("rel_diff"):
        text.append(f"max rel. diff {max(values('rel_diff')):.1e}")
    if values("residual"):
        text.append(f"affine residual {max(values('residual')):.1e}, r >= {min(values('pearson')):.6f}")
    elif values("pearson"):
        text.append(f"Pearson {min(values('pearson')):.3f}-{max(values('pearson')):.3f}, "
                    f"Spearman {min(values('spearman')):.3f}-{max(values('spearman')):.3f}")
    if values("constant"):
        text.append(f"{len(values('constant'))} image(s) with a constant reference "
                    f"(tve's range / max {max(values('constant')):.1e})")
    return "; ".join(text)


def passes(row: dict) -> str:
    p = row["passes"]
    parts = [f"{p['forward_passes']} F" if p["forward_passes"] else "", f"{p['backward_passes']} B" if p["backward_passes"] else "",
             f"{p['explainer_passes']} E" if p["explainer_passes"] else ""]
    return " + ".join(x for x in parts if x)


def markdown(rows: List[dict], args) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        first = mrows[0]
        out.append(f"**{model}** ({first['images']} images after a warm-up one, --threads {args.threads}; one "
                   f"forward pass: tve {first['forward_ms']:.1f} ms, eager PyTorch {first['eager_forward_ms']:.1f} ms)\n")
        out.append("| method | settings | tve passes | tve ms/img | tve wall ms/img | reference | reference ms/img "
                   "| reference / tve | tve forward-pass equivalents | agreement |")
        out.append("| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |")
        for r in mrows:
            ref = r.get("reference_ms")
            ref_ms, ratio = (fmt_ms(ref), f"{ref / r['tve_ms']:.1f}") if ref else ("-", "-")
            out.append(f"| {r['method']} | {r['settings']} | {passes(r)} | {fmt_ms(r['tve_ms'])} | {fmt_ms(r['tve_wall_ms'])} | "
                       f"{r['reference']} | {ref_ms} | {ratio} | {r['forward_equivalents']:.1f} | {fmt_agreement(r)} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet", "vit", "swin"])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--images", type=int, default=3, help=f"timed images per model (at most {len(IMAGES)})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rise-samples", type=int, default=DEFAULT_SAMPLES["rise"])
    ap.add_argument("--kernelshap-samples", type=int, default=DEFAULT_SAMPLES["kernelshap"])
    ap.add_argument("--tve", default=os.environ.get("TVE", str(ROOT / os.environ.get("TVE_BUILD_DIR", "build") / "tve")))
    ap.add_argument("--out", type=Path, help="also write the Markdown tables here")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    args.images = max(1, min(args.images, len(IMAGES)))
    threads.configure_script(args.threads)  # OpenBLAS kernels; LibTorch and OpenBLAS threads
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows += bench_model(args, model, Path(tmp))
    text = markdown(rows, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
