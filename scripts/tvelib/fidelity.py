"""Explainer fidelity against exact windowed occlusion on the fixed held-out sets
(docs/design.md, section 8)."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from . import data
from .explainer import pretrain_classes_of, scene_version_of, use_scene_version
from .files import atomic_save, cache_dir
from .metrics import pearson, pointing_hits, spearman, topk_iou
from .occlusion import occlusion_embeddings, rule


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
        return torch.load(path)
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


@torch.no_grad()
def held_out_report(explainer: Callable, target, images: torch.Tensor, grid: int, radius: int,
                    log: Callable[[str], None] = print) -> Dict[str, dict]:
    """fidelity() on held-out images without masks (a user's folder): exact windowed occlusion
    of `target` (eager or TorchScript, with embed and head) computed here, 2 G^2 passes each."""
    t = time.time()
    pos, neg, clean = [], [], []
    for i in range(len(images)):
        x = images[i:i + 1]
        p, q = occlusion_embeddings(target.embed, x, grid, radius)
        pos.append(p)
        neg.append(q)
        clean.append(target.embed(x))
        log(f"fidelity report: exact occlusion {i + 1}/{len(images)} held-out images, {time.time() - t:.0f} s")
    occ = {"pos": torch.cat(pos), "neg": torch.cat(neg), "clean": torch.cat(clean), "images": images}
    return fidelity(explainer, target.head, occ, grid, radius)
