#!/usr/bin/python3
"""Explainer training throughput at paper scale: torchvision vit_b_16, resnet50 and swin_t at 224 px
(grid 14, radius 2), random weights (throughput does not depend on them), medium explainer.

    /usr/bin/python3 scripts/maintainer/bench_explainer_training.py --threads 2 --steps 3 --out bench.json

Per model: seconds per training step (after one warm-up step), images/s, centres/s, and the share
of a step spent in the frozen encoder's masked forward passes (the targets), with the encoder run
under torch.no_grad and under torch.inference_mode. models/README.md turns centres/s into hours.

    /usr/bin/python3 scripts/maintainer/bench_explainer_training.py --bank --threads 1 --out bank.json

--bank measures what the bank scheme (tvelib.explainer_training.TargetBank) costs instead: seconds
per masked encoder pass in chunks of 64 (fp32, and bf16 autocast where this torch runs it), seconds
per fitting step on stored trunk features (batch 16, 32 centres), and the bank's bytes per image;
docs/own-model.md turns them into hours for a bank of N images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for tvelib
from tvelib import archs, explainer as ex, explainer_training as et, threads  # noqa: E402
from tvelib.occlusion import window_masks  # noqa: E402


def bench(name: str, steps: int, batch: int, centres: int, mode: str) -> dict:
    torch.manual_seed(0)
    target = archs.wrap_network(archs.torchvision_network(name, 1000)).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    grid, radius, size = 14, 2, 224
    cfg = ex.ExplainerConfig(batch=batch, centres=centres)
    masks = window_masks(grid, radius, size, size)
    model = ex.build(target, grid, radius, size, cfg).train()
    ex.freeze_norm_stats(model)
    opt = torch.optim.AdamW(et.param_groups(model, cfg), lr=cfg.lr)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    rows = []
    for i in range(steps + 1):
        x = torch.randn(batch, 3, size, size)
        c = et.draw_centres(0, i, batch, masks.shape[0], centres)
        t0 = time.perf_counter()
        with context():
            z_pos, z_neg = et.masked_targets(target, x, masks, c)
        t1 = time.perf_counter()
        # inference-mode tensors cannot enter autograd; the loss only reads them
        z_pos, z_neg = z_pos.clone(), z_neg.clone()
        psi_pos, psi_neg = model(x)
        idx = c.unsqueeze(-1).expand(-1, -1, psi_pos.shape[-1])
        loss = (psi_pos.gather(1, idx) - z_pos).pow(2).mean() + (psi_neg.gather(1, idx) - z_neg).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i > 0:  # the first step warms up (allocations, kernel selection)
            rows.append((t2 - t0, t1 - t0))
        print(f"{name} {mode} step {i}: {t2 - t0:.2f} s ({t1 - t0:.2f} s in encoder targets)", flush=True)
    step_s = sum(r[0] for r in rows) / len(rows)
    target_s = sum(r[1] for r in rows) / len(rows)
    return {"model": name, "mode": mode, "batch": batch, "centres": centres, "seconds_per_step": round(step_s, 3),
            "images_per_s": round(batch / step_s, 3), "centres_per_s": round(batch * centres / step_s, 2),
            "target_share": round(target_s / step_s, 3),
            "explainer_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def bench_bank(name: str, chunk: int = 64, repeats: int = 2) -> dict:
    torch.manual_seed(0)
    target = archs.wrap_network(archs.torchvision_network(name, 1000)).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    grid, radius, size = 14, 2, 224
    cfg = ex.ExplainerConfig(batch=16, centres=32, scheme="bank")
    masks = window_masks(grid, radius, size, size)
    x = torch.randn(16, 3, size, size)
    model = ex.build(target, grid, radius, size, cfg).train()
    ex.freeze_norm_stats(model)
    xs = x[:1] * masks[:chunk]
    out = {"model": name, "chunk": chunk}
    for precision in ("fp32", "bf16"):
        def call():
            with torch.no_grad():
                if precision == "bf16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return target.embed(xs)
                return target.embed(xs)
        try:
            call()
        except Exception as e:  # Debian's torch 1.13 has no bf16 autocast for some attention layers
            out[f"seconds_per_pass_{precision}"] = None
            out[f"error_{precision}"] = f"{type(e).__name__}: {str(e)[:120]}"
            continue
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) / chunk)
        out[f"seconds_per_pass_{precision}"] = round(min(times), 5)
        print(f"{name} {precision}: {min(times) * 1e3:.1f} ms per masked pass", flush=True)
    step = et.fit_step_timer(model, target, x, cfg)
    step()
    t = time.perf_counter()
    for _ in range(3):
        step()
    out["seconds_per_fit_step"] = round((time.perf_counter() - t) / 3, 4)
    bank = et.TargetBank(Path("/dev/null"), 1, 16, 32, 0, torch.float32)
    out["bank_bytes_per_image"] = bank.bytes_per_image(model, x)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,swin_t,vit_b_16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--centres", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="no_grad,inference_mode")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--bank", action="store_true", help="measure the bank scheme's costs instead")
    args = ap.parse_args()
    threads.configure_script(args.threads)
    if args.bank:
        results = [bench_bank(name) for name in args.models.split(",")]
        if args.out:
            args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                            "results": results}, indent=2) + "\n")
        return
    results = []
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            results.append(bench(name, args.steps, args.batch, args.centres, mode))
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": results},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
