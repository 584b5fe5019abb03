"""Masks, the transfer rule and windowed occlusion: the quantities of docs/design.md, sections 2-4.

Conventions (identical to src/attribution.cpp and src/methods/):
    cell k = row * G + col, row 0 at the top of the image;
    pixel row p lies in cell row floor(p*G/H) (columns likewise), i.e. cell i spans the real
    interval [i*H/G, (i+1)*H/G); 112 px over 14 cells: 8 px each;
    S_k = the cells within Chebyshev distance r of k, clipped at the border;
    removed pixels take the value 0 in normalised space (the dataset mean colour);
    smoothing = avg_pool2d(kernel 2r+1, stride 1, padding r, count_include_pad=False).
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F


def pixel_cells(size: int, grid: int) -> torch.Tensor:
    """[size] int64: the grid row (or column) each pixel row (column) belongs to, floor(p*G/size).

    As src/attribution.cpp: cell i spans the pixels p with i*size/G <= p < (i+1)*size/G (real
    boundaries), i.e. [ceil(i*size/G), ceil((i+1)*size/G)); the same as floor boundaries whenever
    G divides the size (112 px over 14 cells: 8 px each).
    """
    return torch.div(torch.arange(size) * grid, size, rounding_mode="floor")


def window_masks(grid: int, radius: int, height: int, width: int) -> torch.Tensor:
    """[N,1,H,W] float32, N = G*G: mask k is 1 on the pixels of S_k (row-major k), 0 elsewhere."""
    rows, cols = pixel_cells(height, grid), pixel_cells(width, grid)  # [H], [W]
    k = torch.arange(grid * grid)
    cell_row, cell_col = k // grid, k % grid  # [N]
    in_rows = (rows.unsqueeze(0) - cell_row.unsqueeze(1)).abs() <= radius  # [N,H]
    in_cols = (cols.unsqueeze(0) - cell_col.unsqueeze(1)).abs() <= radius  # [N,W]
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1).float()


def smooth_maps(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """[...,G,G] -> same shape, (2r+1) average filter with border cells averaged over valid cells."""
    if radius == 0:
        return maps
    shape = maps.shape
    flat = maps.reshape(-1, 1, shape[-2], shape[-1])
    out = F.avg_pool2d(flat, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    return out.reshape(shape)


def rule(pos_logits: torch.Tensor, neg_logits: torch.Tensor, classes: torch.Tensor, grid: int,
         lambda_pos: float, lambda_neg: float, smooth: bool, radius: int) -> torch.Tensor:
    """The TVE transfer rule on per-cell logits [B,N,C] (N = G*G) for classes [B] -> maps [B,G,G].

    The same rule turns exact occlusion logits (h(E(x_{S_k})), h(E(x_{-S_k}))) into e_exact.
    """
    idx = classes.view(-1, 1, 1).expand(-1, pos_logits.shape[1], 1)  # [B,N,1]
    e = lambda_pos * pos_logits.gather(2, idx) - lambda_neg * neg_logits.gather(2, idx)  # [B,N,1]
    maps = e.view(-1, grid, grid)  # row-major: [B,row,col]
    return smooth_maps(maps, radius) if smooth else maps


@torch.no_grad()
def occlusion_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: int,
                         radius: int, chunk: int = 196) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact windowed-occlusion embeddings: x [B,3,H,W] normalised -> (E(x_{S_k}), E(x_{-S_k})),
    each [B,N,D]. 2*N encoder passes per image; the heavy part of evaluation, so it is cached."""
    masks = window_masks(grid, radius, x.shape[2], x.shape[3])  # [N,1,H,W]
    pos, neg = [], []
    for image in x:
        kept, removed = [], []
        for lo in range(0, masks.shape[0], chunk):
            m = masks[lo:lo + chunk]
            kept.append(embed(image.unsqueeze(0) * m))  # baseline 0 outside S_k
            removed.append(embed(image.unsqueeze(0) * (1 - m)))  # baseline 0 inside S_k
        pos.append(torch.cat(kept))
        neg.append(torch.cat(removed))
    return torch.stack(pos), torch.stack(neg)
