"""Fused CPU depthwise 7x7 convolution + SiLU for inference: one Numba kernel.

Same signature and result as :func:`plainmamba.ops.dwconv.dwconv2d_silu_ref`, for float32 CPU
tensors, kernel size 7 (every released model) and no autograd; the dispatcher
(:func:`plainmamba.ops.dwconv.dwconv2d_silu`) sends other calls to the PyTorch path.

Work is split into jobs of (image, 16 channels, up to 16 output rows, up to 26 output columns).
A job copies its input window, zero-padded, into a scratch tile whose row length is a
compile-time constant, so that all 49 taps of an output pixel sit at constant offsets from one
base and the channel loop vectorises with a few runtime alias checks. Two output pixels are
computed per step, sharing their input loads; each tap row is summed in its own chain (the
kernel is compiled without reassociation, so that LLVM keeps the seven chains apart instead of
making one 49-long dependent chain). Bias and SiLU are applied on the way out, and the input is
read in place from the strided half of ``in_proj``'s output.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from numba import njit, prange

from .checks import DWCONV_NUMBA_K
from .derived import derived
from .numba_glue import flat_view, sync_threads
from .numba_math import silu as _silu

__all__ = ["dwconv2d_silu_numba", "KERNEL_SIZE"]

KERNEL_SIZE = DWCONV_NUMBA_K  # the one kernel size this path computes
_K = KERNEL_SIZE
_CB = 16  # channels per job: two AVX2 vectors
_TW = 26  # output columns per job
_PW = _TW + _K - 1  # a padded tile row, in pixels
_RS = _PW * _CB  # a padded tile row, in elements
_TH = 16  # output rows per job
_TILE = (_TH + _K - 1) * _RS
# Fast math without reassociation: with it LLVM turns the 49-term sum into one dependent chain.
_FM = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
_U = np.uint64  # unsigned indices: Numba adds no negative-index wraparound, which blocks SIMD


@njit(fastmath=_FM, cache=True, nogil=True, error_model="numpy", inline="always")
def _tap_row(s, p, wl, q, c):  # pragma: no cover - compiled
    """One row of seven taps: input tile ``s`` from offset ``p``, weights ``wl`` from ``q``."""
    return (
        s[_U(p + c)] * wl[q + c]
        + s[_U(p + _CB + c)] * wl[q + _CB + c]
        + s[_U(p + 2 * _CB + c)] * wl[q + 2 * _CB + c]
        + s[_U(p + 3 * _CB + c)] * wl[q + 3 * _CB + c]
        + s[_U(p + 4 * _CB + c)] * wl[q + 4 * _CB + c]
        + s[_U(p + 5 * _CB + c)] * wl[q + 5 * _CB + c]
        + s[_U(p + 6 * _CB + c)] * wl[q + 6 * _CB + c]
    )


@njit(fastmath=_FM, cache=True, nogil=True, error_model="numpy", inline="always")
def _taps(s, p, wl, c):  # pragma: no cover - compiled
    """The 7 x 7 window whose top-left input pixel is at tile offset ``p``, channel ``c``."""
    return (
        (_tap_row(s, p, wl, 0, c) + _tap_row(s, p + _RS, wl, 7 * _CB, c))
        + (_tap_row(s, p + 2 * _RS, wl, 14 * _CB, c) + _tap_row(s, p + 3 * _RS, wl, 21 * _CB, c))
    ) + (
        (_tap_row(s, p + 4 * _RS, wl, 28 * _CB, c) + _tap_row(s, p + 5 * _RS, wl, 35 * _CB, c))
        + _tap_row(s, p + 6 * _RS, wl, 42 * _CB, c)
    )


@njit(parallel=True, fastmath=_FM, cache=True, nogil=True, error_model="numpy")
def _dwconv7_silu(xf, xs0, xs1, wt, bias, height, width, y):  # pragma: no cover - compiled
    """y = silu(conv7x7(x) + bias); ``xf``: x's storage from its first element, ``xs0``,
    ``xs1``: its batch and token strides in elements; ``wt``: the weights as (49 taps, E);
    y: (B, L, E)."""
    batch, length, channels = y.shape
    n_cb = (channels + _CB - 1) // _CB
    n_bands = (height + _TH - 1) // _TH
    n_tiles = (width + _TW - 1) // _TW
    per_image = n_cb * n_bands * n_tiles
    for job in prange(batch * per_image):
        b = job // per_image
        r = job % per_image
        c0 = (r // (n_bands * n_tiles)) * _CB
        nc = min(_CB, channels - c0)
        r = r % (n_bands * n_tiles)
        h0 = (r // n_tiles) * _TH
        w0 = (r % n_tiles) * _TW
        h1 = min(h0 + _TH, height)
        w1 = min(w0 + _TW, width)
        s = np.empty(_TILE, dtype=np.float32)
        wl = np.zeros(_K * _K * _CB, dtype=np.float32)
        cb = np.zeros(_CB, dtype=np.float32)
        ob = np.empty(2 * _CB, dtype=np.float32)
        for c in range(nc):
            cb[c] = bias[c0 + c]
        for t in range(_K * _K):
            w_row = wt[t, c0:]
            for c in range(nc):
                wl[t * _CB + c] = w_row[c]
        # The input window with its zero border (channels past the last one are zeros too).
        for hh in range(h0 - 3, h1 + 3):
            for ww in range(w0 - 3, w1 + 3):
                dst = s[((hh - h0 + 3) * _PW + ww - w0 + 3) * _CB :]
                if 0 <= hh < height and 0 <= ww < width and nc == _CB:
                    src = xf[b * xs0 + (hh * width + ww) * xs1 + c0 :]
                    for c in range(_CB):
                        dst[c] = src[c]
                else:
                    for c in range(_CB):
                        dst[c] = 0.0
                    if 0 <= hh < height and 0 <= ww < width:
                        src = xf[b * xs0 + (hh * width + ww) * xs1 + c0 :]
                        for c in range(nc):
                            dst[c] = src[c]
        for h in range(h0, h1):
            w = w0
            while w + 2 <= w1:
                p = ((h - h0) * _PW + w - w0) * _CB
                for c in range(_CB):
                    ob[c] = cb[c] + _taps(s, p, wl, c)
                    ob[_CB + c] = cb[c] + _taps(s, p + _CB, wl, c)
                for k in range(2):
                    y_row = y[b, h * width + w + k, c0:]
                    for c in range(nc):
                        y_row[c] = _silu(ob[k * _CB + c])
                w += 2
            if w < w1:
                p = ((h - h0) * _PW + w - w0) * _CB
                for c in range(_CB):
                    ob[c] = cb[c] + _taps(s, p, wl, c)
                y_row = y[b, h * width + w, c0:]
                for c in range(nc):
                    y_row[c] = _silu(ob[c])


def _taps_and_bias(weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """The kernel's constants as NumPy arrays: taps (k * k, E) and bias (E,)."""
    taps = weight.detach().float().reshape(weight.shape[0], -1).t().contiguous()
    if bias is None:
        return taps.numpy(), np.zeros(weight.shape[0], dtype=np.float32)
    return taps.numpy(), bias.detach().float().contiguous().numpy()


def dwconv2d_silu_numba(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hw: Tuple[int, int],
) -> torch.Tensor:
    """:func:`~plainmamba.ops.dwconv.dwconv2d_silu_ref` for float32 CPU tensors without
    autograd and kernel size 7; ``x`` may be a view with channel stride 1 (arguments are checked
    by the dispatcher)."""
    batch, length, channels = x.shape
    xf, xs0, xs1 = flat_view(x)
    others = () if bias is None else (bias,)
    taps, b = derived(weight, "dwconv_taps", lambda w: _taps_and_bias(w, bias), *others)
    y = torch.empty(batch, length, channels, dtype=torch.float32)
    sync_threads()
    _dwconv7_silu(xf, xs0, xs1, taps, b, hw[0], hw[1], y.numpy())
    return y
