"""Fused CPU zig-zag selective scan: Numba kernels for forward and backward.

The four scans of a layer run in one pass over the steps; work is split over (batch, channel
block) and the innermost loop runs over contiguous channels so that it vectorises. The
elementwise pieces around the recurrence (softplus, exp(delta * A), direction offsets, the D
skip) stay in PyTorch, so autograd carries their gradients and only the recurrence is custom.

The backward recomputes the states chunk by chunk from checkpointed chunk-boundary states, so
its scratch memory per worker is O((L / chunk + chunk) * N * block), never O(L * N * E).
"""

from __future__ import annotations

from typing import Tuple

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from .scan_orders import scan_orders
from .zigzag_scan import check_grid

__all__ = ["zigzag_scan_numba", "scan_core_numba"]

_BLOCK = 32  # channels per work item: two AVX-512 or four AVX2 vectors
_CHUNK = 64  # steps between checkpointed states in the backward


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _scan_fwd(u, delta, dA, Bk, C, orders, y, block):  # pragma: no cover - compiled
    batch, length, channels = u.shape
    n_state = C.shape[2]
    n_blocks = (channels + block - 1) // block
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        e0 = (job % n_blocks) * block
        ne = min(block, channels - e0)
        h = np.zeros((4, n_state, block), dtype=np.float32)
        du = np.empty(block, dtype=np.float32)
        acc = np.empty(block, dtype=np.float32)
        for t in range(length):
            for k in range(4):
                i = orders[k, t]
                for e in range(ne):
                    du[e] = delta[b, t, e0 + e] * u[b, i, e0 + e]
                    acc[e] = 0.0
                for n in range(n_state):
                    bk = Bk[b, k, t, n]
                    c = C[b, t, n]
                    for e in range(ne):
                        hv = dA[b, t, n, e0 + e] * h[k, n, e] + bk * du[e]
                        h[k, n, e] = hv
                        acc[e] += hv * c
                for e in range(ne):
                    y[b, i, e0 + e] += acc[e]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _scan_bwd(
    u, delta, dA, Bk, C, orders, gy, gu, gdelta, gdA, gBk_part, gC_part, block, chunk
):  # pragma: no cover - compiled
    batch, length, channels = u.shape
    n_state = C.shape[2]
    n_blocks = (channels + block - 1) // block
    n_chunks = (length + chunk - 1) // chunk
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        blk = job % n_blocks
        e0 = blk * block
        ne = min(block, channels - e0)
        # State before each chunk (zeros before the first), then states inside one chunk.
        bounds = np.zeros((n_chunks, 4, n_state, block), dtype=np.float32)
        states = np.empty((chunk, 4, n_state, block), dtype=np.float32)
        h = np.zeros((4, n_state, block), dtype=np.float32)
        du = np.empty(block, dtype=np.float32)
        g_out = np.empty(block, dtype=np.float32)
        gdu = np.empty(block, dtype=np.float32)
        for t in range(length):
            if t % chunk == 0:
                bounds[t // chunk] = h
            for k in range(4):
                i = orders[k, t]
                for e in range(ne):
                    du[e] = delta[b, t, e0 + e] * u[b, i, e0 + e]
                for n in range(n_state):
                    bk = Bk[b, k, t, n]
                    for e in range(ne):
                        h[k, n, e] = dA[b, t, n, e0 + e] * h[k, n, e] + bk * du[e]
        gh = np.zeros((4, n_state, block), dtype=np.float32)
        for ci in range(n_chunks - 1, -1, -1):
            t0 = ci * chunk
            t1 = min(t0 + chunk, length)
            h[:] = bounds[ci]
            for t in range(t0, t1):
                for k in range(4):
                    i = orders[k, t]
                    for e in range(ne):
                        du[e] = delta[b, t, e0 + e] * u[b, i, e0 + e]
                    for n in range(n_state):
                        bk = Bk[b, k, t, n]
                        for e in range(ne):
                            h[k, n, e] = dA[b, t, n, e0 + e] * h[k, n, e] + bk * du[e]
                states[t - t0] = h
            for t in range(t1 - 1, t0 - 1, -1):
                s = t - t0
                for k in range(4):
                    i = orders[k, t]
                    for e in range(ne):
                        du[e] = delta[b, t, e0 + e] * u[b, i, e0 + e]
                        g_out[e] = gy[b, i, e0 + e]
                        gdu[e] = 0.0
                    for n in range(n_state):
                        bk = Bk[b, k, t, n]
                        c = C[b, t, n]
                        gc = np.float32(0.0)
                        gb = np.float32(0.0)
                        for e in range(ne):
                            if s > 0:
                                h_prev = states[s - 1, k, n, e]
                            else:
                                h_prev = bounds[ci, k, n, e]
                            g = gh[k, n, e] + g_out[e] * c
                            gc += g_out[e] * states[s, k, n, e]
                            gdA[b, t, n, e0 + e] += g * h_prev
                            gb += g * du[e]
                            gdu[e] += g * bk
                            gh[k, n, e] = g * dA[b, t, n, e0 + e]
                        gC_part[blk, b, t, n] += gc
                        gBk_part[blk, b, k, t, n] = gb
                    for e in range(ne):
                        gdelta[b, t, e0 + e] += gdu[e] * u[b, i, e0 + e]
                        gu[b, i, e0 + e] += gdu[e] * delta[b, t, e0 + e]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _sync_threads() -> None:
    # Match PyTorch's intra-op thread count so that the two pools do not oversubscribe.
    want = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


class _ScanCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, dA, Bk, C, orders):  # type: ignore[override]
        _sync_threads()
        y = torch.zeros_like(u)
        _scan_fwd(_np(u), _np(delta), _np(dA), _np(Bk), _np(C), _np(orders), y.numpy(), _BLOCK)
        ctx.save_for_backward(u, delta, dA, Bk, C, orders)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        u, delta, dA, Bk, C, orders = ctx.saved_tensors
        _sync_threads()
        n_blocks = -(-u.shape[2] // _BLOCK)
        gu = torch.zeros_like(u)
        gdelta = torch.zeros_like(delta)
        gdA = torch.zeros_like(dA)
        gBk = Bk.new_zeros((n_blocks,) + tuple(Bk.shape))
        gC = C.new_zeros((n_blocks,) + tuple(C.shape))
        _scan_bwd(
            _np(u), _np(delta), _np(dA), _np(Bk), _np(C), _np(orders), _np(gy.float()),
            gu.numpy(), gdelta.numpy(), gdA.numpy(), gBk.numpy(), gC.numpy(), _BLOCK, _CHUNK,
        )  # fmt: skip
        return gu, gdelta, gdA, gBk.sum(0), gC.sum(0), None


def scan_core_numba(
    u: torch.Tensor,
    delta: torch.Tensor,
    dA: torch.Tensor,
    Bk: torch.Tensor,
    C: torch.Tensor,
    orders: torch.Tensor,
) -> torch.Tensor:
    """The bare recurrence, summed over the four scans and written back in raster order.

    ``u``, ``delta`` (softplus'd): (batch, L, E); ``dA``: (batch, L, N, E); ``Bk``: (batch, 4, L, N)
    with the direction offsets added; ``C``: (batch, L, N); ``orders``: (4, L). All float32 on CPU.
    """
    return _ScanCore.apply(u, delta, dA, Bk, C, orders)


def zigzag_scan_numba(
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
    """CPU fast path with the signature of :func:`plainmamba.ops.zigzag_scan_ref`."""
    out_dtype = u.dtype
    check_grid(hw, u.shape[1])
    orders, _, dirs = scan_orders(hw[0], hw[1], u.device)
    uf = u.float().contiguous()
    dt = F.softplus(delta.float() + delta_bias.float()).contiguous()
    # delta_t is taken at raster position t by all four scans, so exp(delta_t * A) is shared.
    dA = torch.exp(dt.unsqueeze(2) * A.float().t()).contiguous()  # (batch, L, N, E)
    Bk = (B.float().unsqueeze(1) + direction_Bs.float()[dirs]).contiguous()  # (batch, 4, L, N)
    y = scan_core_numba(uf, dt, dA, Bk, C.float().contiguous(), orders)
    return (y + 4.0 * D.float() * uf).to(out_dtype)
