"""The mixer's depthwise convolution on token-major tensors, with one switch over implementations.

    y = depthwise_conv(x, weight, bias, hw, silu=False, impl=None)

- ``x``: (batch, L, E) tokens in raster order, last dimension contiguous (a view such as one half
  of the input projection's output is fine); ``hw``: the (H, W) grid, ``H * W == L``;
- ``weight``: (E, 1, k, k) with odd k ('same' zero padding k // 2); ``bias``: (E,) or ``None``;
- returns (batch, L, E), contiguous, in ``x``'s dtype (float32 accumulation), with SiLU applied
  when ``silu``.

Implementations, chosen by ``impl=`` or ``$PLAINMAMBA_DWCONV``:

- ``ref``: ``F.conv2d`` on a channels-last view (cuDNN or oneDNN), the model's original code;
- ``triton``: one Triton kernel reading the strided tokens directly (CUDA; on CPU only under
  ``TRITON_INTERPRET=1``, for tests);
- ``auto`` (default): ``triton`` on CUDA when Triton imports, else ``ref``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv", "depthwise_conv_ref", "DWCONV_IMPLS", "DWCONV_ENV_VAR"]

DWCONV_ENV_VAR = "PLAINMAMBA_DWCONV"
DWCONV_IMPLS = ("auto", "ref", "triton")
_TRITON_MODULE = __name__.rsplit(".", 1)[0] + ".depthwise_conv_triton"
_HINT = (
    "install Triton (`pip install triton`; PyTorch's Linux CUDA wheels bring a matching one) and "
    "use a CUDA build of PyTorch"
)


def _check(x: torch.Tensor, weight: torch.Tensor, hw: Tuple[int, int]) -> None:
    if x.dim() != 3:
        raise ValueError(f"depthwise_conv: expected tokens (batch, L, E), got {tuple(x.shape)}")
    if int(hw[0]) * int(hw[1]) != x.shape[1]:
        raise ValueError(
            f"depthwise_conv: grid {hw[0]}x{hw[1]} holds {int(hw[0]) * int(hw[1])} tokens, "
            f"sequence has {x.shape[1]}"
        )
    channels = x.shape[2]
    k = weight.shape[-1]
    if weight.dim() != 4 or tuple(weight.shape) != (channels, 1, k, k) or k % 2 != 1:
        raise ValueError(
            f"depthwise_conv: expected a weight of shape ({channels}, 1, k, k) with odd k, got "
            f"{tuple(weight.shape)}"
        )


def depthwise_conv_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hw: Tuple[int, int],
    silu: bool = False,
) -> torch.Tensor:
    """Reference: ``F.conv2d`` with groups = E on the tokens viewed as a channels-last image."""
    _check(x, weight, hw)
    batch, length, channels = x.shape
    img = x.reshape(batch, hw[0], hw[1], channels).permute(0, 3, 1, 2)
    k = weight.shape[-1]
    img = img.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(img, weight, bias, padding=k // 2, groups=channels)
    if silu:
        y = F.silu(y)
    return y.permute(0, 2, 3, 1).reshape(batch, length, channels)


def _triton_importable() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def _interpreted() -> bool:
    module = sys.modules.get(_TRITON_MODULE)
    if module is not None:
        return bool(module.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and _triton_importable()


def _resolve(impl: Optional[str], device_type: str) -> str:
    requested = (impl or os.environ.get(DWCONV_ENV_VAR) or "auto").strip().lower()
    if requested not in DWCONV_IMPLS:
        source = "impl argument" if impl else f"${DWCONV_ENV_VAR}"
        raise ValueError(
            f"unknown depthwise-conv implementation {requested!r} (from the {source}); choose "
            f"one of {', '.join(DWCONV_IMPLS)}"
        )
    if requested == "auto":
        if device_type == "cuda" and _triton_importable():
            return "triton"
        return "ref"
    if requested == "triton":
        if not _triton_importable():
            raise RuntimeError("depthwise-conv path 'triton' is not available: " + _HINT)
        if device_type != "cuda" and not (device_type == "cpu" and _interpreted()):
            raise ValueError(
                f"depthwise-conv path 'triton' runs on cuda tensors, got tensors on "
                f"{device_type}; use impl='auto' or 'ref'"
            )
    return requested


_RESOLVED: Dict[str, str] = {}


def _resolve_cached(impl: Optional[str], device_type: str) -> str:
    # Once per (name, $PLAINMAMBA_DWCONV, device type), and a constant for torch.compile.
    key = f"{impl}|{os.environ.get(DWCONV_ENV_VAR)}|{device_type}"
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _resolve(impl, device_type)
    return name


_resolve_cached._dynamo_marked_constant = True  # type: ignore[attr-defined]


def depthwise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hw: Tuple[int, int],
    silu: bool = False,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Depthwise 'same' convolution (+ SiLU) of token-major ``x``; see the module docstring."""
    name = _resolve_cached(impl, x.device.type)
    if name == "ref":
        return depthwise_conv_ref(x, weight, bias, hw, silu)
    _check(x, weight, hw)
    from .depthwise_conv_triton import depthwise_conv_triton

    if x.stride(-1) != 1:
        x = x.contiguous()
    grads = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if silu and grads:
        # SiLU in the kernel's epilogue serves inference; with gradients it stays outside, where
        # autograd (and torch.compile's fusion) handles its backward.
        return F.silu(depthwise_conv_triton(x, weight, bias, hw, silu=False))
    return depthwise_conv_triton(x, weight, bias, hw, silu=silu)
