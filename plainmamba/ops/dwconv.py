"""Depthwise 2-D convolution + SiLU of PlainMamba's mixer on token-major tensors, one switch.

Every implementation has the signature of :func:`dwconv2d_silu_ref`:

    y = impl(x, weight, bias, hw)

- ``x``: (B, L, E) with channel stride 1, raster order over the (H, W) grid; it may be a
  strided view (the ``xs`` half of ``in_proj``'s output, row stride 2E);
- ``weight``: (E, 1, k, k) with k odd (an ``nn.Conv2d(E, E, k, groups=E)``'s weight);
- ``bias``: (E,) or None; ``hw``: (H, W) with ``H * W == L``.

It returns ``silu(conv2d(x, weight, bias, padding=k // 2, groups=E))`` as (B, L, E), in x's dtype.

Implementations, chosen by ``impl=`` (``PlainMamba(dwconv_impl=...)`` in a config), else the
``PLAINMAMBA_DWCONV`` environment variable (an override read once, at import), else ``auto``:

- ``ref``: PyTorch's depthwise convolution on a channels-last view, as the mixer did before;
- ``triton``: fused Triton kernels reading the strided view directly, forward and backward
  (CUDA; on CPU only under ``TRITON_INTERPRET=1``, for tests);
- ``numba``: one fused Numba kernel for CPU inference (float32, k = 7, no autograd, not traced,
  compiled or counted); other calls on this path run ``ref``;
- ``auto`` (default): ``triton`` for CUDA tensors when Triton imports (and k <= 9), ``numba``
  for CPU tensors when Numba imports, else ``ref``.

The choice is resolved once per (requested name, device type) by :data:`DWCONV_SWITCH` and
treated as a constant by ``torch.compile``. :func:`dwconv2d_silu` checks the arguments once for
every path.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .checks import DWCONV_NUMBA_K as NUMBA_K
from .checks import DWCONV_TRITON_MAX_K as TRITON_MAX_K
from .checks import check_dwconv_args
from .switch import PathSwitch, backend_available, keeps_plain_ops, triton_interpreted
from .tuning import TritonSettings

__all__ = [
    "dwconv2d_silu",
    "dwconv2d_silu_ref",
    "resolve_dwconv_impl",
    "check_dwconv_args",
    "DWCONV_IMPLS",
    "DWCONV_ENV_VAR",
    "DWCONV_SWITCH",
    "TRITON_MAX_K",
]

DWCONV_ENV_VAR = "PLAINMAMBA_DWCONV"
DWCONV_IMPLS = ("auto", "ref", "triton", "numba")

_INSTALL_HINT = (
    "install Triton (`pip install triton`; PyTorch's Linux CUDA wheels bring a matching one) and "
    "use a CUDA build of PyTorch"
)
_NUMBA_HINT = "install it with `pip install numba` (a dependency of this package)"
_TRITON_MODULE = __name__.rsplit(".", 1)[0] + ".dwconv_triton"


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


def _check_path(path: str, hint: str, device: torch.device, runs_on: str, note: str = "") -> None:
    """Raise unless ``path``'s package imports (``RuntimeError`` with ``hint``) and ``device``
    is the type it runs on (``ValueError``)."""
    if not backend_available(path):
        raise RuntimeError(f"depthwise-conv path {path!r} is not available: " + hint)
    if device.type != runs_on:
        raise ValueError(
            f"depthwise-conv path {path!r} runs on {runs_on} tensors, got tensors on {device}"
            f"{note}; use impl='auto' or 'ref'"
        )


def _pick(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type == "cuda" and backend_available("triton"):
            return "triton"
        if device.type == "cpu" and backend_available("numba"):
            return "numba"
        return "ref"
    if requested == "numba":
        _check_path("numba", _NUMBA_HINT, device, "cpu")
    if requested == "triton":
        if device.type == "cpu" and triton_interpreted(_TRITON_MODULE):
            return requested  # CPU tensors through the Triton interpreter (tests)
        note = " (set TRITON_INTERPRET=1 before importing Triton to run it on CPU)"
        _check_path("triton", _INSTALL_HINT, device, "cuda", note)
    return requested


#: The depthwise conv's path switch: ``impl`` argument, else ``$PLAINMAMBA_DWCONV`` (read at
#: import), else ``auto``.
DWCONV_SWITCH = PathSwitch("depthwise-conv", DWCONV_IMPLS, DWCONV_ENV_VAR, _pick)


def resolve_dwconv_impl(impl: Optional[str], device: torch.device) -> str:
    """Turn ``impl`` (or ``$PLAINMAMBA_DWCONV``, or ``auto``) into a concrete name for ``device``.

    Raises ``ValueError`` for an unknown name or a device the path cannot run on, and
    ``RuntimeError`` with an install hint when Triton is requested but not installed.
    """
    return DWCONV_SWITCH.resolve(impl, device)


def _load(name: str) -> Callable[..., torch.Tensor]:
    if name == "ref":
        return dwconv2d_silu_ref
    if name == "numba":
        from .dwconv_numba import dwconv2d_silu_numba

        return dwconv2d_silu_numba
    if name == "triton":
        from .dwconv_triton import dwconv2d_silu_triton

        return dwconv2d_silu_triton
    raise ValueError(name)


_IMPLS: Dict[str, Callable[..., torch.Tensor]] = {}


def _numba_runs(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], k: int
) -> bool:
    """Whether the numba kernel takes this call: inference on float32 with k = 7, outside
    traces, ``torch.compile`` and FLOP counting (which keep the plain operators)."""
    if keeps_plain_ops():
        return False
    grads = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    return k == NUMBA_K and x.dtype == torch.float32 and not grads


def dwconv2d_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hw: Tuple[int, int],
    impl: Optional[str] = None,
    triton_settings: Optional[TritonSettings] = None,
) -> torch.Tensor:
    """``silu(depthwise_conv2d(x) + bias)`` on (B, L, E) tokens; see the module docstring.

    ``triton_settings`` tunes the Triton path (default:
    :func:`plainmamba.ops.tuning.triton_settings`).
    """
    k = check_dwconv_args(x, weight, hw)
    name, requested = DWCONV_SWITCH.resolved(impl, x.device.type)
    if name == "triton" and k > TRITON_MAX_K:
        if requested != "auto":
            raise ValueError(
                f"depthwise-conv path 'triton' takes kernel sizes up to {TRITON_MAX_K}, got {k}; "
                "use impl='auto' or 'ref'"
            )
        name = "ref"
    if name == "numba" and not _numba_runs(x, weight, bias, k):
        if requested != "auto" and not torch.jit.is_tracing() and k != NUMBA_K:
            raise ValueError(
                f"depthwise-conv path 'numba' takes kernel size {NUMBA_K}, got {k}; "
                "use impl='auto' or 'ref'"
            )
        name = "ref"
    fn = _IMPLS.get(name)
    if fn is None:
        fn = _IMPLS[name] = _load(name)
    if name == "triton":
        return fn(x, weight, bias, hw, settings=triton_settings)
    return fn(x, weight, bias, hw)
