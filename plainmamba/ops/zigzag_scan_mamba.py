"""CUDA path through mamba-ssm's ``selective_scan_fn``: four launches per layer, as released."""

from __future__ import annotations

from typing import Tuple

import torch

from .scan_orders import scan_orders

__all__ = ["zigzag_scan_mamba"]


def zigzag_scan_mamba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    direction_Bs: torch.Tensor,
    delta_bias: torch.Tensor,
    hw: Tuple[int, int],
) -> torch.Tensor:
    """mamba-ssm path with the signature of :func:`plainmamba.ops.zigzag_scan_ref`; the grid is
    checked by the dispatcher, :func:`plainmamba.ops.zigzag_scan`."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    orders, inverse, dirs = scan_orders(hw[0], hw[1], u.device)
    # mamba-ssm wants channels first: (batch, E, L) and (batch, N, L).
    dt = delta.transpose(1, 2).contiguous()
    Bt = B.transpose(1, 2)
    Ct = C.transpose(1, 2).contiguous()
    out = None
    for k in range(4):
        uk = u[:, orders[k]].transpose(1, 2).contiguous()
        Bk = (Bt + direction_Bs[dirs[k]].t().to(B.dtype)).contiguous()
        yk = selective_scan_fn(
            uk, dt, A.float(), Bk, Ct, D.float(), z=None,
            delta_bias=delta_bias.float(), delta_softplus=True,
        )  # fmt: skip
        yk = yk.transpose(1, 2)[:, inverse[k]]
        out = yk if out is None else out + yk
    return out.to(u.dtype)
