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

Paths, chosen by ``impl=`` (``PlainMambaAdapter(msda_impl=...)`` in a config), else
``$PLAINMAMBA_MSDA`` (an override read once, at import), else ``auto``:

- ``ref``: bilinear sampling with ``grid_sample`` per level; any device, autograd;
- ``auto`` (default): ``ref``. It is the only path today: the adapter spends little of its time
  here, so a fused kernel is left to the GPU work. The switch is the same as the other
  operators' (:class:`plainmamba.ops.switch.PathSwitch`), so a new path is one more name.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .checks import check_msda_inputs
from .switch import PathSwitch, counting_active, untraced

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_ref",
    "resolve_msda_impl",
    "MSDA_IMPLS",
    "MSDA_ENV_VAR",
    "MSDA_SWITCH",
    "check_inputs",
]

MSDA_ENV_VAR = "PLAINMAMBA_MSDA"
MSDA_IMPLS = ("auto", "ref")

check_inputs = check_msda_inputs  # the name this module has always exported


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


def _pick(requested: str, device: torch.device) -> str:
    return "ref" if requested == "auto" else requested


#: The deformable attention's path switch: ``impl`` argument, else ``$PLAINMAMBA_MSDA`` (read at
#: import), else ``auto``.
MSDA_SWITCH = PathSwitch("deformable-attention", MSDA_IMPLS, MSDA_ENV_VAR, _pick)
_IMPLS = {"ref": ms_deform_attn_ref}


def resolve_msda_impl(impl: Optional[str], device: torch.device = torch.device("cpu")) -> str:
    """Turn ``impl`` (or ``$PLAINMAMBA_MSDA``, or ``auto``) into a concrete path name."""
    return MSDA_SWITCH.resolve(impl, device)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention through the chosen path (see the module docstring)."""
    check_msda_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    if counting_active():
        flat = [int(v) for hw in spatial_shapes for v in hw]
        return torch.ops.plainmamba.ms_deform_attn(
            value, sampling_locations, attention_weights, flat, impl
        )
    name = MSDA_SWITCH.resolved(impl, value.device.type)[0]
    return _IMPLS[name](value, spatial_shapes, sampling_locations, attention_weights)


# One node per call in a torch.jit trace while counting_ops() is active (FLOP analysis): forward
# only, the body runs outside the trace. Inputs: value, locations, weights, then the levels'
# (H, W) flattened.
if not hasattr(torch.ops.plainmamba, "ms_deform_attn"):  # once per process

    @torch.library.custom_op("plainmamba::ms_deform_attn", mutates_args=())
    def _counted_msda(
        value: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        spatial_shapes: List[int],
        impl: Optional[str],
    ) -> torch.Tensor:
        shapes = list(zip(spatial_shapes[0::2], spatial_shapes[1::2]))
        name = MSDA_SWITCH.resolved(impl, value.device.type)[0]
        with untraced():
            return _IMPLS[name](value, shapes, sampling_locations, attention_weights).clone()

    @_counted_msda.register_fake
    def _(value, sampling_locations, attention_weights, spatial_shapes, impl):
        batch, _, heads, dim = value.shape
        return value.new_empty((batch, sampling_locations.shape[1], heads * dim))
