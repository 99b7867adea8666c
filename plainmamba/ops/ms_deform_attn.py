"""Multi-scale deformable attention (Deformable DETR / ViT-Adapter), with one switch over paths.

Every implementation has the signature of :func:`ms_deform_attn_ref`:

    out = impl(value, spatial_shapes, sampling_locations, attention_weights)

- ``value``: (batch, S, heads, head_dim), the levels' tokens concatenated in raster order;
- ``spatial_shapes``: the (H, W) of each level as Python ints, ``sum(H * W) == S``;
- ``sampling_locations``: (batch, Lq, heads, levels, points, 2), (x, y) in [0, 1] of each level's
  width and height (pixel centres at (i + 0.5) / W); points outside read zeros;
- ``attention_weights``: (batch, Lq, heads, levels, points), already normalised.

It returns (batch, Lq, heads * head_dim) in ``value``'s dtype; sampling and the weighted sum run
in float32 whatever the input dtype (docs/model.md#deformable-attention).

Paths, chosen by ``impl=`` or ``$PLAINMAMBA_MSDA``:

- ``ref``: bilinear sampling with ``grid_sample`` per level; any device, autograd;
- ``auto`` (default): ``ref``. It is the only path today: the adapter spends little of its time
  here, so a fused kernel is left to the GPU work.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._switch import requested_path

__all__ = ["ms_deform_attn", "ms_deform_attn_ref", "MSDA_IMPLS", "MSDA_ENV_VAR", "check_inputs"]

MSDA_ENV_VAR = "PLAINMAMBA_MSDA"
MSDA_IMPLS = ("auto", "ref")


def check_inputs(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    """Raise ``ValueError`` naming the first inconsistent shape."""
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


def ms_deform_attn_ref(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference: one ``grid_sample`` (bilinear, zeros outside, align_corners=False) per level."""
    out_dtype = value.dtype
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value = value.float()
    # grid_sample takes [-1, 1] coordinates; with align_corners=False, -1 is the left edge of
    # pixel 0, which is what location 0 means here.
    grids = sampling_locations.float() * 2 - 1
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    sampled = []
    for level, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes)):
        # (B, h*w, M, D) -> (B*M, D, h, w)
        value_l = value_l.permute(0, 2, 3, 1).reshape(batch * heads, dim, int(h), int(w))
        # (B, Lq, M, P, 2) -> (B*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(
            F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # (B*M, D, Lq, P)
    sampled = torch.stack(sampled, dim=3)  # (B*M, D, Lq, levels, P)
    weights = (
        attention_weights.float().transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    )
    out = (sampled * weights).sum(dim=(3, 4))  # (B*M, D, Lq)
    out = out.view(batch, heads * dim, queries).transpose(1, 2)
    return out.to(out_dtype).contiguous()


_IMPLS: Dict[str, Callable[..., torch.Tensor]] = {"ref": ms_deform_attn_ref}


def resolve_msda_impl(impl: Optional[str]) -> str:
    """Turn ``impl`` (or ``$PLAINMAMBA_MSDA``, or ``auto``) into a concrete path name."""
    requested = requested_path(impl, MSDA_ENV_VAR, MSDA_IMPLS, "deformable-attention")
    return "ref" if requested == "auto" else requested


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention through the chosen path (see the module docstring)."""
    check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    return _IMPLS[resolve_msda_impl(impl)](
        value, spatial_shapes, sampling_locations, attention_weights
    )
