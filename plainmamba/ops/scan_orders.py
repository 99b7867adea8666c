"""The four continuous zig-zag scan orders of PlainMamba (docs/model.md#scan-orders-and-directions).

Orders and direction ids depend only on the token grid (H, W). They are built with tensor
operations (no Python loop over tokens) and cached per (H, W, device).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch

__all__ = ["scan_orders", "DIR_START", "DIR_RIGHT", "DIR_LEFT", "DIR_UP", "DIR_DOWN"]

DIR_START, DIR_RIGHT, DIR_LEFT, DIR_UP, DIR_DOWN = 0, 1, 2, 3, 4


def _build(h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    # Order 1 snakes along rows: odd rows are walked right to left.
    snake_cols = torch.where(rows % 2 == 0, cols, w - 1 - cols)
    o1 = (rows * w + snake_cols).reshape(-1)
    # Order 3 snakes along columns: odd columns are walked bottom to top.
    snake_rows = torch.where(cols % 2 == 0, rows, h - 1 - rows)
    o3 = (snake_rows * w + cols).t().reshape(-1)
    orders = torch.stack([o1, o1.flip(0), o3, o3.flip(0)])

    # Direction of the move that arrived at each step, judged on the grid.
    r, c = orders // w, orders % w
    dr, dc = r[:, 1:] - r[:, :-1], c[:, 1:] - c[:, :-1]
    moves = torch.full_like(dr, -1)
    moves[dc == 1] = DIR_RIGHT
    moves[dc == -1] = DIR_LEFT
    moves[dr == -1] = DIR_UP
    moves[dr == 1] = DIR_DOWN
    assert bool((moves >= 0).all()), "scan orders must move between grid neighbours"
    dirs = torch.cat([torch.full((4, 1), DIR_START, dtype=moves.dtype), moves], dim=1)
    return orders.contiguous(), dirs.contiguous()


@lru_cache(maxsize=64)
def scan_orders(
    h: int, w: int, device: torch.device | str = "cpu"
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(orders, inverse, dirs)`` for an ``h x w`` token grid, int64 of shape ``(4, h * w)``.

    ``orders[k, t]`` is the raster index of the token visited at step ``t`` of scan ``k``;
    ``inverse[k, orders[k, t]] == t``; ``dirs[k, t]`` is the move that arrived at step ``t``
    (0 start, 1 right, 2 left, 3 up, 4 down). The tensors are cached and shared: do not modify
    them in place.
    """
    if h < 1 or w < 1:
        raise ValueError(f"scan_orders needs a grid of at least 1x1 tokens, got {h}x{w}")
    # Cached and shared: tensors made under inference_mode could never be saved for backward.
    with torch.inference_mode(False):
        orders, dirs = _build(int(h), int(w))
        inverse = torch.argsort(orders, dim=1)
        device = torch.device(device)
        return orders.to(device), inverse.to(device), dirs.to(device)
