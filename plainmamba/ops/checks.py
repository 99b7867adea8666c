"""Argument checks and limits shared by the operators' dispatchers and their backends.

Kept apart so that a backend never imports its dispatcher (no import circles): the dispatchers
validate once, before choosing a path; backends that are called directly say so in their
docstrings.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

__all__ = [
    "check_grid",
    "check_dwconv_args",
    "check_msda_inputs",
    "DWCONV_TRITON_MAX_K",
    "DWCONV_NUMBA_K",
]

# Largest kernel size of the Triton depthwise conv (a tap column's weights live in k named
# registers); its ``auto`` choice falls back to PyTorch's path above it.
DWCONV_TRITON_MAX_K = 9
# The one kernel size of the Numba depthwise conv (every released model's).
DWCONV_NUMBA_K = 7


def check_grid(hw: Tuple[int, int], length: int) -> None:
    """Raise ``ValueError`` if the (H, W) grid does not hold ``length`` tokens."""
    if int(hw[0]) * int(hw[1]) != length:
        raise ValueError(
            f"zigzag_scan: grid {hw[0]}x{hw[1]} holds {hw[0] * hw[1]} tokens, sequence has {length}"
        )


def check_dwconv_args(x: torch.Tensor, weight: torch.Tensor, hw: Tuple[int, int]) -> int:
    """Raise ``ValueError`` unless x is (B, H*W, E) and weight (E, 1, k, k), k odd; return k."""
    if x.dim() != 3:
        raise ValueError(
            f"dwconv2d_silu: x must be (batch, length, channels), got {tuple(x.shape)}"
        )
    batch, length, channels = x.shape
    h, w = int(hw[0]), int(hw[1])
    if h * w != length:
        raise ValueError(f"dwconv2d_silu: grid {h}x{w} holds {h * w} tokens, sequence has {length}")
    k = weight.shape[-1] if weight.dim() == 4 else -1
    if tuple(weight.shape) != (channels, 1, k, k):
        raise ValueError(
            f"dwconv2d_silu: weight must be ({channels}, 1, k, k) for {channels} channels, "
            f"got {tuple(weight.shape)}"
        )
    if k % 2 != 1:
        raise ValueError(f"dwconv2d_silu: kernel size must be odd ('same' padding), got {k}")
    return k


def check_msda_inputs(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    """Raise ``ValueError`` naming the first inconsistent shape of a deformable attention."""
    if value.dim() != 4:
        raise ValueError(
            f"ms_deform_attn: value must be (B, S, heads, dim), got {tuple(value.shape)}"
        )
    batch, length, heads, _ = value.shape
    total = sum(int(h) * int(w) for h, w in spatial_shapes)
    if total != length:
        raise ValueError(
            f"ms_deform_attn: levels {list(map(tuple, spatial_shapes))} hold {total} tokens, "
            f"value has {length}"
        )
    levels = len(spatial_shapes)
    loc = tuple(sampling_locations.shape)
    if len(loc) != 6 or loc[0] != batch or loc[2] != heads or loc[3] != levels or loc[5] != 2:
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be (B={batch}, Lq, heads={heads}, "
            f"levels={levels}, points, 2), got {loc}"
        )
    if tuple(attention_weights.shape) != loc[:5]:
        raise ValueError(
            f"ms_deform_attn: attention_weights must be {loc[:5]}, got "
            f"{tuple(attention_weights.shape)}"
        )
