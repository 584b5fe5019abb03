"""How close one attribution map is to another, per image: rank and linear correlation, top-cell
overlap, and the pointing game against object masks."""
from __future__ import annotations

import math

import torch


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """[B,N] -> [B,N] float64 ranks 0..N-1, ties given their average rank (as scipy's rankdata)."""
    v = v.double()
    order = v.argsort(dim=1)
    ranks = torch.empty_like(v)
    ranks.scatter_(1, order, torch.arange(v.shape[1], dtype=torch.float64).expand_as(v).contiguous())
    # Average tied ranks (smoothed maps and flat occlusion maps do produce exact ties).
    for b in range(v.shape[0]):
        vals, inverse, counts = torch.unique(v[b], return_inverse=True, return_counts=True)
        if len(vals) < v.shape[1]:
            sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inverse, ranks[b])
            ranks[b] = (sums / counts)[inverse]
    return ranks


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of [B,N] x [B,N] -> [B]; 0 where a row is constant."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp(min=1e-300), torch.zeros_like(den))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman rank correlation (Pearson of average ranks) [B,N] x [B,N] -> [B]."""
    return pearson(_ranks(a), _ranks(b))


def topk_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Per-row IoU of the top ceil(fraction*N) cells of a and of b: [B,N] x [B,N] -> [B]."""
    k = max(1, math.ceil(fraction * a.shape[1]))
    ta = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    tb = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
    return (ta & tb).sum(1).double() / (ta | tb).sum(1).double()


def pointing_hits(maps: torch.Tensor, cell_cover: torch.Tensor) -> torch.Tensor:
    """[B,G,G] maps, [B,G,G] fraction of each cell covered by the object -> [B] bool.

    A hit when the map's maximum cell contains object pixels. With 8 px cells this is the usual
    pointing game with a tolerance of under one cell (Zhang et al. use 15 px).
    """
    flat = maps.flatten(1)
    return cell_cover.flatten(1).gather(1, flat.argmax(1, keepdim=True)).squeeze(1) > 0
