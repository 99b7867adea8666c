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

Implementations, chosen by ``impl=`` (``PlainMamba(scan_impl=...)`` in a config), else the
``PLAINMAMBA_SCAN`` environment variable (an override read once, at import), else ``auto``:

- ``ref``: plain PyTorch recurrence, the oracle (slow, any device, autograd);
- ``numba``: compiled CPU kernels, forward and backward (CPU default);
- ``mamba``: mamba-ssm's ``selective_scan_fn``, four launches per layer (CUDA);
- ``triton``: one fused Triton kernel for the four scans, forward and backward (CUDA; on CPU
  only under ``TRITON_INTERPRET=1``, for tests);
- ``chunked``: standard tensor ops over chunks of steps (any device, autograd); the path that
  exports to TorchScript and ONNX (docs/deploy.md);
- ``auto`` (default): ``numba`` on CPU; on CUDA ``triton`` when it imports, else ``mamba`` when
  installed, else ``ref``.

The choice is resolved once per (requested name, device type) by :data:`SCAN_SWITCH` and treated
as a constant by ``torch.compile``. :func:`zigzag_scan` checks the grid once for every path;
the backends do not check it again (the reference does, being called directly as the oracle).
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .checks import check_grid
from .scan_orders import scan_orders
from .switch import (
    PathSwitch,
    backend_available,
    counting_active,
    keeps_plain_ops,
    triton_interpreted,
    untraced,
)
from .tuning import TritonSettings

__all__ = [
    "zigzag_scan",
    "zigzag_scan_ref",
    "available_impls",
    "resolve_impl",
    "SCAN_IMPLS",
    "SCAN_SWITCH",
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
    return backend_available("numba")


def _mamba_available() -> bool:
    return torch.cuda.is_available() and backend_available("mamba_ssm")


def _triton_available() -> bool:
    return torch.cuda.is_available() and backend_available("triton")


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


def _pick(requested: str, device: torch.device) -> str:
    global _warned_fallback
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
        if device.type == "cpu" and triton_interpreted(_TRITON_MODULE):
            return requested  # CPU tensors through the Triton interpreter (tests)
        if not backend_available("triton"):
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


#: The scan's path switch: ``impl`` argument, else ``$PLAINMAMBA_SCAN`` (read at import), else
#: ``auto``.
SCAN_SWITCH = PathSwitch("selective-scan", SCAN_IMPLS, ENV_VAR, _pick)


def resolve_impl(impl: Optional[str], device: torch.device) -> str:
    """Turn ``impl`` (or ``$PLAINMAMBA_SCAN``, or ``auto``) into a concrete name for ``device``.

    Raises ``ValueError`` for an unknown name or a device the path cannot run on, and
    ``RuntimeError`` with an install hint when a requested path is not installed.
    """
    return SCAN_SWITCH.resolve(impl, device)


def _load(name: str) -> Callable[..., torch.Tensor]:
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


_IMPLS: Dict[str, Callable[..., torch.Tensor]] = {}


def _run(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    direction_Bs: torch.Tensor,
    delta_bias: torch.Tensor,
    hw: Tuple[int, int],
    impl: Optional[str],
    triton_settings: Optional[TritonSettings],
) -> torch.Tensor:
    name = SCAN_SWITCH.resolved(impl, u.device.type)[0]
    fn = _IMPLS.get(name)
    if fn is None:
        fn = _IMPLS[name] = _load(name)
    if name == "triton":
        return fn(u, delta, A, B, C, D, direction_Bs, delta_bias, hw, settings=triton_settings)
    return fn(u, delta, A, B, C, D, direction_Bs, delta_bias, hw)


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
    triton_settings: Optional[TritonSettings] = None,
    gate: Optional[torch.Tensor] = None,
    fuse_gate: bool = True,
) -> torch.Tensor:
    """Four-direction zig-zag selective scan; see the module docstring for shapes and ``impl``.

    The grid is checked here, once, for every path. ``triton_settings`` tunes the Triton path
    (default: :func:`plainmamba.ops.tuning.triton_settings`). With ``gate`` (batch, L, E) the
    result is ``y * silu(gate)``; where :func:`fuses_gate` says so (CPU inference on the
    ``numba`` path, unless ``fuse_gate`` is False) one kernel computes both.
    """
    check_grid(hw, u.shape[1])
    if gate is not None and fuse_gate and fuses_gate(u, A, impl):
        from .zigzag_scan_numba import zigzag_scan_gated_numba

        return zigzag_scan_gated_numba(u, delta, A, B, C, D, direction_Bs, delta_bias, hw, gate)
    if counting_active():
        h, w = int(hw[0]), int(hw[1])
        y = torch.ops.plainmamba.zigzag_scan(u, delta, A, B, C, D, direction_Bs, delta_bias,
                                             h, w, impl)  # fmt: skip
    else:
        y = _run(u, delta, A, B, C, D, direction_Bs, delta_bias, hw, impl, triton_settings)
    return y if gate is None else y * F.silu(gate)


def fuses_gate(u: torch.Tensor, A: torch.Tensor, impl: Optional[str]) -> bool:
    """Whether :func:`zigzag_scan` with a ``gate`` runs scan and gate as one kernel for these
    inputs: the ``numba`` path, no autograd, state size 16, and not traced, compiled or counted
    (exported graphs and FLOP counts keep the plain operators)."""
    if (
        torch.is_grad_enabled()
        or keeps_plain_ops()
        or SCAN_SWITCH.resolved(impl, u.device.type)[0] != "numba"
    ):
        return False
    # Imported only now: the numba path resolved, so Numba is there.
    from .zigzag_scan_numba import FUSED_D_STATE

    return A.shape[-1] == FUSED_D_STATE


# One node per scan in a torch.jit trace while counting_ops() is active (FLOP analysis):
# forward only, the body runs outside the trace.
if not hasattr(torch.ops.plainmamba, "zigzag_scan"):  # once per process

    @torch.library.custom_op("plainmamba::zigzag_scan", mutates_args=())
    def _counted_scan(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: torch.Tensor, direction_Bs: torch.Tensor, delta_bias: torch.Tensor, h: int, w: int,
        impl: Optional[str],
    ) -> torch.Tensor:  # fmt: skip
        with untraced():
            return _run(u, delta, A, B, C, D, direction_Bs, delta_bias, (h, w), impl, None).clone()

    @_counted_scan.register_fake
    def _(u, delta, A, B, C, D, direction_Bs, delta_bias, h, w, impl):
        return u.new_empty(u.shape)
