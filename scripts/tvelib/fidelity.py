"""Explainer fidelity against exact windowed occlusion on the fixed held-out sets
(docs/design.md, section 8)."""
from __future__ import annotations

import time
import hashlib
import pickle
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import data
from .explainer import pretrain_classes_of, scene_version_of, use_scene_version
from .files import atomic_save, cache_dir
from .metrics import pearson, pointing_hits, spearman, topk_iou
from .occlusion import occlusion_embeddings, rule, smooth_maps


def occlusion_cache(b, task: str, n: int, seed: int = data.HELDOUT_SEED,
                    log: Callable[[str], None] = print) -> Dict[str, torch.Tensor]:
    """Exact windowed-occlusion embeddings of the fixed held-out set (task, 'test', seed, n).

    Keyed by the target's SHA-256, task, seed, n, grid and radius; stored under
    $TVE_CACHE/occlusion/ (default ~/.cache/tve). Returns {"pos","neg": [n,N,D], "clean": [n,D],
    "cover": [n,G,G] object coverage per cell, "images": [n,3,H,W] normalised}.
    """
    m = b.manifest
    grid, radius, size = m["grid"], m["radius"], b.input_size
    version = scene_version_of(m)
    use_scene_version(version)
    data.use_pretrain_classes(pretrain_classes_of(m))  # the target's SHA-256 in the key fixes it
    key = f"{m['target']['sha256'][:16]}-{task}-s{seed}-n{n}-g{grid}-r{radius}"
    if version != 1:
        key += f"-v{version}"
    path = cache_dir() / "occlusion" / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)  # tensors only: no code from the cache runs
    path.parent.mkdir(parents=True, exist_ok=True)
    out: Dict[str, List[torch.Tensor]] = {"pos": [], "neg": [], "clean": [], "cover": [], "images": []}
    t = time.time()
    # data.fixed_set's default batching, so that the first n images are the same set the encoder
    # and probe metrics (tvelib.training) are measured on.
    for s in data.fixed_set(task, "test", n, seed=seed):
        x_all = b.normalise(s.images)  # [b,3,112,112] f32 normalised RGB
        masks_all = s.masks  # [b,112,112] bool
        if x_all.shape[-1] != size:
            x_all = F.interpolate(x_all, size=(size, size), mode="bilinear", align_corners=False)
            masks_all = F.interpolate(masks_all.float().unsqueeze(1), size=(size, size),
                                      mode="nearest").squeeze(1) > 0.5
        for lo in range(0, len(x_all), 25):
            x, masks = x_all[lo:lo + 25], masks_all[lo:lo + 25]
            pos, neg = occlusion_embeddings(b.target.embed, x, grid, radius)
            out["pos"].append(pos)
            out["neg"].append(neg)
            with torch.no_grad():
                out["clean"].append(b.target.embed(x))
            out["cover"].append(data.grid_mask(masks, grid))
            out["images"].append(x)
            log(f"occlusion {task}: {sum(len(p) for p in out['pos'])}/{n} images, {time.time() - t:.0f} s")
    result = {k: torch.cat(v) for k, v in out.items()}
    atomic_save(result, path)
    return result


SETTINGS = [(0.0, False), (0.0, True), (1.0, False), (1.0, True)]  # (lambda_neg, smooth)


@torch.no_grad()
def fidelity(explainer: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]], head: Callable,
             occ: Dict[str, torch.Tensor], grid: int, radius: int, batch: int = 50) -> Dict[str, dict]:
    """TVE against exact windowed occlusion on one cached held-out set, for each (lambda_neg, smooth).

    The class explained is the head's top-1 on the clean image. Per setting: medians over images of
    Spearman / Pearson / top-10% IoU between TVE's map and occlusion's map under the same rule
    (both smoothed or both raw), Spearman against the raw occlusion map, and (when occ has object
    masks, "cover") the pointing game of TVE and of occlusion.
    """
    n = occ["pos"].shape[0]
    classes = head(occ["clean"]).argmax(1)  # [n]
    psi_pos, psi_neg = [], []
    for i in range(0, n, batch):
        p, q = explainer(occ["images"][i:i + batch])
        psi_pos.append(p)
        psi_neg.append(q)
    psi_pos, psi_neg = torch.cat(psi_pos), torch.cat(psi_neg)  # [n,N,D]
    cells = grid * grid

    def logits(z: torch.Tensor) -> torch.Tensor:  # [n,N,D] -> [n,N,C]
        return head(z.reshape(n * cells, -1)).view(n, cells, -1)

    tve_pos, tve_neg = logits(psi_pos), logits(psi_neg)
    occ_pos, occ_neg = logits(occ["pos"]), logits(occ["neg"])
    results = {}
    for lambda_neg, smooth in SETTINGS:
        t = rule(tve_pos, tve_neg, classes, grid, 1.0, lambda_neg, smooth, radius)
        o = rule(occ_pos, occ_neg, classes, grid, 1.0, lambda_neg, smooth, radius)
        o_raw = rule(occ_pos, occ_neg, classes, grid, 1.0, lambda_neg, False, radius)
        tf, of = t.flatten(1), o.flatten(1)
        setting = {
            "spearman": float(spearman(tf, of).median()),
            "pearson": float(pearson(tf, of).median()),
            "iou_top10": float(topk_iou(tf, of).median()),
            "spearman_vs_raw_occlusion": float(spearman(tf, o_raw.flatten(1)).median()),
        }
        if "cover" in occ:  # object masks: the held-out scenes have them, a user's folder does not
            setting["pointing_tve"] = float(pointing_hits(t, occ["cover"]).double().mean())
            setting["pointing_occlusion"] = float(pointing_hits(o, occ["cover"]).double().mean())
        results[f"lneg{lambda_neg:g}_{'smooth' if smooth else 'raw'}"] = setting
    # Embedding-space fit, independent of any head: R^2 of psi against the exact embeddings.
    for name, p, z in (("pos", psi_pos, occ["pos"]), ("neg", psi_neg, occ["neg"])):
        var = (z - z.mean((0, 1))).pow(2).sum()
        results[f"r2_{name}"] = float(1 - (p - z).pow(2).sum() / var)
    results["n"] = n
    return results


def held_out_occlusion(target, images: torch.Tensor, names: List[str], grid: int, radius: int,
                       cache: Optional[Path], log: Callable[[str], None] = print,
                       stop: Callable[[int, float], bool] = lambda n, s: False,
                       precision: str = "fp32", chunk: int = 196) -> Dict[str, torch.Tensor]:
    """Exact windowed occlusion of held-out images (2 G^2 passes each) for the report, one cached
    file per image under `cache` (keyed by its name), so that an interrupted or repeated report
    computes only what it lacks. Stops early when stop(images measured, seconds spent on them)
    says so: the result then covers the first images only. precision "bf16": the passes under bfloat16 autocast, as the training's."""
    t = time.time()
    pos, neg, clean = [], [], []
    computed, spent = 0, 0.0
    for i, name in enumerate(names):
        path = None if cache is None else cache / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".pt")
        if path is not None and path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                entry = None  # a damaged cache file is computed again
        else:
            entry = None
        if entry is None:
            if stop(computed, spent):
                break
            started = time.time()
            x = images[i:i + 1]
            with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                p, q = occlusion_embeddings(target.embed, x, grid, radius, chunk)
                entry = {"pos": p.float().cpu(), "neg": q.float().cpu(), "clean": target.embed(x).float().cpu()}
            if path is not None:
                atomic_save(entry, path)
            computed, spent = computed + 1, spent + time.time() - started
            log(f"fidelity report: exact occlusion {i + 1}/{len(names)} held-out images, {time.time() - t:.0f} s")
        pos.append(entry["pos"])
        neg.append(entry["neg"])
        clean.append(entry["clean"])
    n = len(pos)
    if n == 0:
        return {"pos": torch.zeros(0), "neg": torch.zeros(0), "clean": torch.zeros(0), "images": images[:0]}
    return {"pos": torch.cat(pos), "neg": torch.cat(neg), "clean": torch.cat(clean), "images": images[:n].cpu()}


@torch.no_grad()
def held_out_report(explainer: Callable, target, images: torch.Tensor, grid: int, radius: int,
                    log: Callable[[str], None] = print, names: Optional[List[str]] = None,
                    cache: Optional[Path] = None, stop: Callable[[int, float], bool] = lambda n, s: False,
                    training_map: Optional[Dict[str, torch.Tensor]] = None, precision: str = "fp32",
                    chunk: int = 196) -> Dict[str, dict]:
    """fidelity() on held-out images without masks (a user's folder): exact windowed occlusion
    of `target` (eager or TorchScript, with embed and head) computed here (held_out_occlusion),
    and the same measure for the trivial baselines (baseline_maps) next to it."""
    names = names if names is not None else [str(i) for i in range(len(images))]
    occ = held_out_occlusion(target, images, names, grid, radius, cache, log, stop, precision, chunk)
    if len(occ["pos"]) == 0:
        return {"n": 0}
    results = fidelity(explainer, target.head, occ, grid, radius)
    results["baselines"] = baselines(target, occ, grid, radius, training_map)
    return results


def centre_map(grid: int) -> torch.Tensor:
    """[G,G]: a fixed centre-weighted map (Gaussian, sigma G/4): what a photographer's framing
    alone predicts. An explainer that does not beat it has learned nothing about the image."""
    c = (torch.arange(grid, dtype=torch.float64) - (grid - 1) / 2) / (grid / 4)
    return torch.exp(-0.5 * (c.view(-1, 1) ** 2 + c.view(1, -1) ** 2)).float()


def gradcam_maps(target, images: torch.Tensor, classes: torch.Tensor, grid: int) -> Optional[torch.Tensor]:
    """[n,G,G] Grad-CAM on the target's features() (ReLU of the gradient-weighted channel sum),
    resized to the grid by area (or bilinear when the features are coarser); None when the
    target has no features()/embed_features() (no CAM for that family)."""
    if not (hasattr(target, "features") and hasattr(target, "embed_features")):
        return None
    maps = []
    for i in range(len(images)):
        with torch.enable_grad():
            f = target.features(images[i:i + 1]).detach().requires_grad_(True)
            logit = target.head(target.embed_features(f))[0, int(classes[i])]
            (g,) = torch.autograd.grad(logit, f)
        if f.dim() == 3:  # tokens [1,1+N,D]: the patch tokens as a map
            side = int(round((f.shape[1] - 1) ** 0.5))
            f = f[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
            g = g[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * f).sum(1, keepdim=True)).detach()
        cam = F.adaptive_avg_pool2d(cam, grid) if cam.shape[-1] >= grid else \
            F.interpolate(cam, size=(grid, grid), mode="bilinear", align_corners=False)
        maps.append(cam[0, 0])
    return torch.stack(maps)


class TrainingMeanMap:
    """The mean occlusion map of the training images, from the masked embeddings the training
    computed anyway: per cell, the mean over images of (the target class's logit with the window
    alone, and with it removed), each centred on its image's mean over the cells drawn. A
    baseline that knows where objects tend to be in this folder, but nothing about one image."""

    def __init__(self, cells: int):
        self.pos, self.neg, self.count = torch.zeros(cells), torch.zeros(cells), torch.zeros(cells)

    def add(self, head, clean: torch.Tensor, centres: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor) -> None:
        """clean [B,D], centres [B,K], z_pos/z_neg [B,K,D] (any device)."""
        with torch.no_grad():
            c = head(clean.float()).argmax(1)  # [B]
            b, k = centres.shape
            idx = c.view(-1, 1, 1).expand(-1, k, 1)
            lp = head(z_pos.float().reshape(b * k, -1)).view(b, k, -1).gather(2, idx)[..., 0]
            ln = head(z_neg.float().reshape(b * k, -1)).view(b, k, -1).gather(2, idx)[..., 0]
            lp, ln = (lp - lp.mean(1, keepdim=True)).cpu(), (ln - ln.mean(1, keepdim=True)).cpu()
            cells = centres.cpu().flatten()
            self.pos.index_add_(0, cells, lp.flatten())
            self.neg.index_add_(0, cells, ln.flatten())
            self.count.index_add_(0, cells, torch.ones(len(cells)))

    def state(self) -> Dict[str, torch.Tensor]:
        return {"pos": self.pos, "neg": self.neg, "count": self.count}

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor]) -> "TrainingMeanMap":
        m = cls(len(state["pos"]))
        m.pos, m.neg, m.count = state["pos"], state["neg"], state["count"]
        return m


def baselines(target, occ: Dict[str, torch.Tensor], grid: int, radius: int,
              training_map: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, dict]:
    """Median Spearman against exact occlusion (per transfer setting, as fidelity() measures TVE)
    of maps that know nothing about the explained image's content: centre-weighted, the training
    images' mean occlusion map (when given), and Grad-CAM (one gradient, when the family has it)."""
    n = occ["pos"].shape[0]
    head = target.head
    classes = head(occ["clean"]).argmax(1)
    cells = grid * grid

    def logits(z: torch.Tensor) -> torch.Tensor:
        return head(z.reshape(n * cells, -1)).view(n, cells, -1)

    occ_pos, occ_neg = logits(occ["pos"]), logits(occ["neg"])
    cam = gradcam_maps(target, occ["images"], classes, grid)
    mean = None
    if training_map is not None and float(training_map["count"].sum()) > 0:
        count = training_map["count"].clamp(min=1)
        mean = {"pos": training_map["pos"] / count, "neg": training_map["neg"] / count}
    out: Dict[str, dict] = {}
    for lambda_neg, smooth in SETTINGS:
        key = f"lneg{lambda_neg:g}_{'smooth' if smooth else 'raw'}"
        o = rule(occ_pos, occ_neg, classes, grid, 1.0, lambda_neg, smooth, radius).flatten(1)
        maps = {"centre": centre_map(grid).expand(n, grid, grid)}
        if mean is not None:
            maps["training_mean"] = (mean["pos"] - lambda_neg * mean["neg"]).view(1, grid, grid).expand(n, grid, grid)
        if cam is not None:
            maps["gradcam"] = cam
        out[key] = {}
        for name, m in maps.items():
            m = smooth_maps(m, radius) if smooth else m
            out[key][name] = float(spearman(m.flatten(1), o).median())
    return out


def gain_over_baselines(report: Dict[str, dict], setting: str) -> Optional[dict]:
    """TVE's median Spearman minus the best baseline's, under one transfer setting."""
    base = report.get("baselines", {}).get(setting)
    if not base:
        return None
    best = max(base, key=base.get)
    return {"tve": report[setting]["spearman"], "best_baseline": best, "best_baseline_spearman": base[best],
            "gain": round(report[setting]["spearman"] - base[best], 4)}
