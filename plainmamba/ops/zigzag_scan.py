"""Selective scan over PlainMamba's four zig-zag orders, with one switch over implementations.

Every implementation has the signature of :func:`zigzag_scan_ref`:

    y = impl(u, delta, A, B, C, D, direction_Bs, delta_bias, hw)

- ``u``: (batch, L, E) the conv-activated inputs, raster order;
- ``delta``: (batch, L, E) ``dt_proj(dt_low)`` *including* its bias, raster order;
- ``A``: (E, N) negative; ``D``: (E,); ``direction_Bs``: (5, N); ``delta_bias``: (E,);
- ``B``, ``C``: (batch, L, N) raster order;
- ``hw``: the (H, W) token grid, ``H * W == L``.

It returns (batch, L, E) in ``u``'s dtype: the sum of the four directional scans, each written
back to the tokens it visited (docs/model.md#the-selective-scan). Internally everything runs in
float32.

Implementations, chosen by ``impl=`` or the ``PLAINMAMBA_SCAN`` environment variable:

- ``ref``: plain PyTorch recurrence, the oracle (slow, any device, autograd);
- ``numba``: compiled CPU kernels, forward and backward (CPU default);
- ``mamba``: mamba-ssm's ``selective_scan_fn``, four launches per layer (CUDA);
- ``triton``: one fused Triton kernel for the four scans, forward and backward (CUDA; on CPU
  only under ``TRITON_INTERPRET=1``, for tests);
- ``chunked``: standard tensor ops over chunks of steps (any device, autograd); the path that
  exports to TorchScript and ONNX (docs/deploy.md);
- ``auto`` (default): ``numba`` on CPU; on CUDA ``triton`` when it imports, else ``mamba`` when
  installed, else ``ref``.

The choice is resolved once per (requested name, device type) and treated as a constant by
``torch.compile``; change ``$PLAINMAMBA_SCAN`` before the first forward.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ._switch import requested_path, triton_importable, triton_interpreted
from .scan_orders import scan_orders

__all__ = [
    "zigzag_scan",
    "zigzag_scan_ref",
    "available_impls",
    "resolve_impl",
    "SCAN_IMPLS",
    "ENV_VAR",
    "check_grid",
]

ENV_VAR = "PLAINMAMBA_SCAN"
SCAN_IMPLS = ("auto", "ref", "numba", "mamba", "triton", "chunked")

_INSTALL_HINTS = {
    "numba": "install it with `pip install numba` (a dependency of this package; reinstall with "
    "`pip install -e .`)",
    "mamba": "install mamba-ssm on a CUDA machine: `pip install mamba-ssm causal-conv1d "
    "--no-build-isolation` (needs a CUDA toolchain matching your PyTorch)",
    "triton": "install Triton (`pip install triton`; PyTorch's Linux CUDA wheels bring a matching "
    "one) and use a CUDA build of PyTorch",
}

_DEVICE_OF = {"numba": "cpu", "mamba": "cuda", "triton": "cuda"}
_TRITON_MODULE = __name__.rsplit(".", 1)[0] + ".zigzag_scan_triton"


def check_grid(hw: Tuple[int, int], length: int) -> None:
    """Raise if the (H, W) grid does not hold ``length`` tokens."""
    if int(hw[0]) * int(hw[1]) != length:
        raise ValueError(
            f"zigzag_scan: grid {hw[0]}x{hw[1]} holds {hw[0] * hw[1]} tokens, sequence has {length}"
        )


def zigzag_scan_ref(
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
    """Reference: the recurrence of docs/model.md stepped in Python, float32, four scans at once."""
    out_dtype = u.dtype
    batch, length, channels = u.shape
    check_grid(hw, length)
    orders, _, dirs = scan_orders(hw[0], hw[1], u.device)
    uf, Bf, Cf, Af = u.float(), B.float(), C.float(), A.float()
    delta = F.softplus(delta.float() + delta_bias.float())  # (batch, L, E), raster position t
    uk = uf[:, orders]  # (batch, 4, L, E): the token visited by scan k at step t
    Bk = Bf.unsqueeze(1) + direction_Bs.float()[dirs]  # (batch, 4, L, N)
    h = uf.new_zeros(batch, 4, channels, A.shape[1])
    steps = []
    for t in range(length):
        decay = torch.exp(delta[:, None, t, :, None] * Af)  # (batch, 1, E, N)
        drive = (delta[:, None, t, :] * uk[:, :, t, :]).unsqueeze(-1) * Bk[:, :, t, None, :]
        h = decay * h + drive
        steps.append((h * Cf[:, None, t, None, :]).sum(-1))
    ys = torch.stack(steps, dim=2)  # (batch, 4, L, E) in scan order
    out = uf.new_zeros(batch, length, channels)
    for k in range(4):
        out = out.index_add(1, orders[k], ys[:, k])
    out = out + 4.0 * D.float() * uf  # each scan adds D * u at the token it visits
    return out.to(out_dtype)


def _numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _mamba_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return importlib.util.find_spec("mamba_ssm") is not None
    except (ImportError, ValueError):
        return False


_triton_importable = triton_importable


def _triton_available() -> bool:
    return torch.cuda.is_available() and _triton_importable()


def _triton_interpreted() -> bool:
    return triton_interpreted(_TRITON_MODULE)


def available_impls() -> Tuple[str, ...]:
    """Names of the implementations usable on this machine (``ref`` and ``chunked`` always)."""
    names = ["ref", "chunked"]
    if _numba_available():
        names.append("numba")
    if _mamba_available():
        names.append("mamba")
    if _triton_available():
        names.append("triton")
    return tuple(names)


_warned_fallback = False


def resolve_impl(impl: Optional[str], device: torch.device) -> str:
    """Turn ``impl`` (or ``$PLAINMAMBA_SCAN``, or ``auto``) into a concrete name for ``device``.

    Raises ``ValueError`` for an unknown name or a device the path cannot run on, and
    ``RuntimeError`` with an install hint when a requested path is not installed.
    """
    global _warned_fallback
    requested = requested_path(impl, ENV_VAR, SCAN_IMPLS, "selective-scan")
    if requested == "auto":
        if device.type == "cuda" and _triton_available():
            return "triton"
        if device.type == "cuda" and _mamba_available():
            return "mamba"
        if device.type == "cpu" and _numba_available():
            return "numba"
        if device.type == "cpu" and not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                "numba is not installed: PlainMamba's scan falls back to the slow reference; "
                + _INSTALL_HINTS["numba"]
            )
        return "ref"
    if requested == "numba" and not _numba_available():
        raise RuntimeError(
            "selective-scan path 'numba' is not available: " + _INSTALL_HINTS["numba"]
        )
    if requested == "mamba" and not _mamba_available():
        raise RuntimeError(
            "selective-scan path 'mamba' is not available (needs CUDA and mamba-ssm): "
            + _INSTALL_HINTS["mamba"]
        )
    if requested == "triton":
        if device.type == "cpu" and _triton_interpreted():
            return requested  # CPU tensors through the Triton interpreter (tests)
        if not _triton_importable():
            raise RuntimeError(
                "selective-scan path 'triton' is not available: " + _INSTALL_HINTS["triton"]
            )
    needed = _DEVICE_OF.get(requested)
    if needed is not None and device.type != needed:
        raise ValueError(
            f"selective-scan path {requested!r} runs on {needed} tensors, got tensors on {device}; "
            f"use impl='auto' or 'ref'"
        )
    return requested


def _get_impl(name: str) -> Callable[..., torch.Tensor]:
    if name == "ref":
        return zigzag_scan_ref
    if name == "numba":
        from .zigzag_scan_numba import zigzag_scan_numba

        return zigzag_scan_numba
    if name == "mamba":
        from .zigzag_scan_mamba import zigzag_scan_mamba

        return zigzag_scan_mamba
    if name == "triton":
        from .zigzag_scan_triton import zigzag_scan_triton

        return zigzag_scan_triton
    if name == "chunked":
        from .zigzag_scan_chunked import zigzag_scan_chunked

        return zigzag_scan_chunked
    raise ValueError(name)


_IMPL_CACHE: Dict[str, Callable[..., torch.Tensor]] = {}


def _resolve_cached(impl: Optional[str], device_type: str) -> str:
    # Once per (name, $PLAINMAMBA_SCAN, device type): no environment or import look-ups per
    # forward, and a constant for torch.compile, so the dispatch never breaks the graph.
    key = f"{impl}|{os.environ.get(ENV_VAR)}|{device_type}"
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = resolve_impl(impl, torch.device(device_type))
    return name


_RESOLVED: Dict[str, str] = {}
# What torch.compiler.assume_constant_result does, without importing torch._dynamo (and Triton)
# with the package: torch.compile calls the function while tracing and keeps its result.
_resolve_cached._dynamo_marked_constant = True  # type: ignore[attr-defined]


def zigzag_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    direction_Bs: torch.Tensor,
    delta_bias: torch.Tensor,
    hw: Tuple[int, int],
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Four-direction zig-zag selective scan; see the module docstring for shapes and ``impl``."""
    name = _resolve_cached(impl, u.device.type)
    fn = _IMPL_CACHE.get(name)
    if fn is None:
        fn = _IMPL_CACHE[name] = _get_impl(name)
    return fn(u, delta, A, B, C, D, direction_Bs, delta_bias, hw)
