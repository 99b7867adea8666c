"""Float32 elementwise functions for the Numba CPU kernels, written so that they vectorise.

A call to libm's ``exp`` inside a loop keeps LLVM from vectorising that loop; these functions
use only arithmetic, comparisons and bit casts, and are inlined into the kernels' loops.
Numba caches a kernel's machine code keyed on the kernel's own source file: after editing this
file, delete ``plainmamba/ops/__pycache__/*.nbi`` / ``*.nbc`` (or run ``make setup`` again) so
that the kernels that inline it are compiled afresh.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["LOG2E", "exp2_neg", "softplus", "silu"]

LOG2E = np.float32(1.4426950408889634)


@njit(fastmath=True, cache=True, nogil=True, error_model="numpy", inline="always")
def exp2_neg(v):  # pragma: no cover - compiled
    """2^v for v <= 0, within 2.4e-7 relative.

    2^v = 2^k * 2^r with k = round(v), |r| <= 1/2, 2^r by a degree-5 polynomial fitted for relative
    error, and 2^k added to the exponent bits.
    """
    v = max(v, np.float32(-126.0))  # below that, float32 2^v is denormal
    k = np.floor(v + np.float32(0.5))
    r = v - k
    p = np.float32(1.3276733225211501e-3)
    p = p * r + np.float32(9.675543755292892e-3)
    p = p * r + np.float32(5.5507123470306396e-2)
    p = p * r + np.float32(2.4022120237350464e-1)
    p = p * r + np.float32(6.931469440460205e-1)
    p = p * r + np.float32(1.0000001192092896)
    bits = np.int32(np.float32(p).view(np.int32) + np.int32(np.int32(k) << 23))
    return bits.view(np.float32)


@njit(fastmath=True, cache=True, nogil=True, error_model="numpy", inline="always")
def softplus(x):  # pragma: no cover - compiled
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), the log1p as 2 atanh(w / (2 + w)) in series."""
    w = exp2_neg(-abs(x) * LOG2E)
    s = w / (np.float32(2.0) + w)  # <= 1/3, so eight terms of the series reach float32 precision
    s2 = s * s
    p = np.float32(1.0 / 15.0)
    p = p * s2 + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + np.float32(1.0)
    return max(x, np.float32(0.0)) + np.float32(2.0) * s * p


@njit(fastmath=True, cache=True, nogil=True, error_model="numpy", inline="always")
def silu(x):  # pragma: no cover - compiled
    """x * sigmoid(x), with e^-|x| so that nothing overflows."""
    q = exp2_neg(-abs(x) * LOG2E)
    r = np.float32(1.0) / (np.float32(1.0) + q)
    return x * (r if x >= np.float32(0.0) else q * r)
