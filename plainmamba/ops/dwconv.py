"""Depthwise 2-D convolution + SiLU of PlainMamba's mixer on token-major tensors, one switch.

Every implementation has the signature of :func:`dwconv2d_silu_ref`:

    y = impl(x, weight, bias, hw)

- ``x``: (B, L, E) with channel stride 1, raster order over the (H, W) grid; it may be a
  strided view (the ``xs`` half of ``in_proj``'s output, row stride 2E);
- ``weight``: (E, 1, k, k) with k odd (an ``nn.Conv2d(E, E, k, groups=E)``'s weight);
- ``bias``: (E,) or None; ``hw``: (H, W) with ``H * W == L``.

It returns ``silu(conv2d(x, weight, bias, padding=k // 2, groups=E))`` as (B, L, E), in x's dtype.

Implementations, chosen by ``impl=`` or the ``PLAINMAMBA_DWCONV`` environment variable:

- ``ref``: PyTorch's depthwise convolution on a channels-last view, as the mixer did before;
- ``triton``: fused Triton kernels reading the strided view directly, forward and backward
  (CUDA; on CPU only under ``TRITON_INTERPRET=1``, for tests);
- ``auto`` (default): ``triton`` for CUDA tensors when Triton imports (and k <= 9), else
  ``ref``.

The choice is resolved once per (requested name, ``$PLAINMAMBA_DWCONV``, device type) and treated
as a constant by ``torch.compile``; set the variable before the first forward.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ._switch import requested_path, triton_importable, triton_interpreted

__all__ = [
    "dwconv2d_silu",
    "dwconv2d_silu_ref",
    "resolve_dwconv_impl",
    "check_dwconv_args",
    "DWCONV_IMPLS",
    "DWCONV_ENV_VAR",
    "TRITON_MAX_K",
]

DWCONV_ENV_VAR = "PLAINMAMBA_DWCONV"
DWCONV_IMPLS = ("auto", "ref", "triton")
# Largest kernel size of the Triton path (a tap column's weights live in k named registers);
# ``auto`` falls back to ``ref`` above it.
TRITON_MAX_K = 9

_INSTALL_HINT = (
    "install Triton (`pip install triton`; PyTorch's Linux CUDA wheels bring a matching one) and "
    "use a CUDA build of PyTorch"
)
_TRITON_MODULE = __name__.rsplit(".", 1)[0] + ".dwconv_triton"


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


def dwconv2d_silu_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hw: Tuple[int, int],
) -> torch.Tensor:
    """PyTorch path: the mixer's channels-last depthwise convolution, then SiLU, token-major."""
    k = check_dwconv_args(x, weight, hw)
    batch, length, channels = x.shape
    img = x.reshape(batch, hw[0], hw[1], channels).permute(0, 3, 1, 2)
    img = img.contiguous(memory_format=torch.channels_last)
    # Autocast casts conv2d's operands itself; without it a half-precision x meets float32
    # parameters, so they follow x (a no-op in the model's own dtypes).
    weight = weight.to(x.dtype)
    bias = bias.to(x.dtype) if bias is not None else None
    out = F.silu(F.conv2d(img, weight, bias, padding=k // 2, groups=channels))
    return out.permute(0, 2, 3, 1).reshape(batch, length, channels)


_triton_importable = triton_importable


def _triton_interpreted() -> bool:
    return triton_interpreted(_TRITON_MODULE)


def resolve_dwconv_impl(impl: Optional[str], device: torch.device) -> str:
    """Turn ``impl`` (or ``$PLAINMAMBA_DWCONV``, or ``auto``) into a concrete name for ``device``.

    Raises ``ValueError`` for an unknown name or a device the path cannot run on, and
    ``RuntimeError`` with an install hint when Triton is requested but not installed.
    """
    requested = requested_path(impl, DWCONV_ENV_VAR, DWCONV_IMPLS, "depthwise-conv")
    if requested == "auto":
        if device.type == "cuda" and _triton_importable():
            return "triton"
        return "ref"
    if requested == "triton":
        if device.type == "cpu" and _triton_interpreted():
            return requested  # CPU tensors through the Triton interpreter (tests)
        if not _triton_importable():
            raise RuntimeError("depthwise-conv path 'triton' is not available: " + _INSTALL_HINT)
        if device.type != "cuda":
            raise ValueError(
                f"depthwise-conv path 'triton' runs on cuda tensors, got tensors on {device} "
                "(set TRITON_INTERPRET=1 before importing Triton to run it on CPU); "
                "use impl='auto' or 'ref'"
            )
    return requested


def _get_impl(name: str) -> Callable[..., torch.Tensor]:
    if name == "ref":
        return dwconv2d_silu_ref
    if name == "triton":
        from .dwconv_triton import dwconv2d_silu_triton

        return dwconv2d_silu_triton
    raise ValueError(name)


_IMPL_CACHE: Dict[str, Callable[..., torch.Tensor]] = {}
_RESOLVED: Dict[str, Tuple[str, bool]] = {}


def _resolve_cached(impl: Optional[str], device_type: str) -> Tuple[str, bool]:
    # Once per (name, $PLAINMAMBA_DWCONV, device type): no environment or import look-ups per
    # forward, and a constant for torch.compile, so the dispatch never breaks the graph.
    # Returns the path and whether it was asked for by name (not ``auto``).
    key = f"{impl}|{os.environ.get(DWCONV_ENV_VAR)}|{device_type}"
    found = _RESOLVED.get(key)
    if found is None:
        name = resolve_dwconv_impl(impl, torch.device(device_type))
        requested = requested_path(impl, DWCONV_ENV_VAR, DWCONV_IMPLS, "depthwise-conv")
        found = _RESOLVED[key] = (name, requested != "auto")
    return found


# What torch.compiler.assume_constant_result does, without importing torch._dynamo (and Triton)
# with the package: torch.compile calls the function while tracing and keeps its result.
_resolve_cached._dynamo_marked_constant = True  # type: ignore[attr-defined]


def dwconv2d_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hw: Tuple[int, int],
    impl: Optional[str] = None,
) -> torch.Tensor:
    """``silu(depthwise_conv2d(x) + bias)`` on (B, L, E) tokens; see the module docstring."""
    k = check_dwconv_args(x, weight, hw)
    name, explicit = _resolve_cached(impl, x.device.type)
    if name == "triton" and k > TRITON_MAX_K:
        if explicit:
            raise ValueError(
                f"depthwise-conv path 'triton' takes kernel sizes up to {TRITON_MAX_K}, got {k}; "
                "use impl='auto' or 'ref'"
            )
        name = "ref"
    fn = _IMPL_CACHE.get(name)
    if fn is None:
        fn = _IMPL_CACHE[name] = _get_impl(name)
    return fn(x, weight, bias, hw)
