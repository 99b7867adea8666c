"""Fused CPU zig-zag selective scan: Numba kernels for forward and backward.

The four scans of a layer run in one pass over the steps; work is split over (batch, channel
block) and the innermost loop runs over contiguous channels so that it vectorises.

Inference (no gradient needed) runs one fused kernel: exp(delta * A) computed once per step for
all four scans, direction offsets, the recurrences and the D skip, with no (L, N, E) tensor in
memory. Training keeps the elementwise pieces around the recurrence (softplus, exp(delta * A),
direction offsets, D) in PyTorch so that autograd carries their gradients, and only the
recurrence is a custom autograd function.

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

_CHUNK = 64  # steps between checkpointed states in the backward


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _scan_fwd(u, delta, dA, Bk, C, orders, y, block):  # pragma: no cover - compiled
    batch, length, channels = u.shape
    n_state = C.shape[2]
    n_blocks = (channels + block - 1) // block
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        e0 = (job % n_blocks) * block
        e1 = min(e0 + block, channels)
        ne = e1 - e0
        h = np.zeros((4, n_state, ne), dtype=np.float32)
        du = np.empty(ne, dtype=np.float32)
        acc = np.empty(ne, dtype=np.float32)
        for t in range(length):
            dt_row = delta[b, t, e0:e1]
            for k in range(4):
                i = orders[k, t]
                u_row = u[b, i, e0:e1]
                for e in range(ne):
                    du[e] = dt_row[e] * u_row[e]
                    acc[e] = 0.0
                for n in range(n_state):
                    bk = Bk[b, k, t, n]
                    c = C[b, t, n]
                    # 1-D row views let LLVM vectorise the channel loop.
                    h_row = h[k, n]
                    a_row = dA[b, t, n, e0:e1]
                    for e in range(ne):
                        hv = a_row[e] * h_row[e] + bk * du[e]
                        h_row[e] = hv
                        acc[e] += hv * c
                y_row = y[b, i, e0:e1]
                for e in range(ne):
                    y_row[e] += acc[e]


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _exp_inplace(x, bits):  # pragma: no cover - compiled
    """exp(x) for x <= 0, in place, within 4e-7 relative; vectorises, unlike a libm call.

    Cody-Waite range reduction, a degree-6 polynomial, and 2^k assembled in the exponent bits.
    """
    scale = bits.view(np.float32)
    for e in range(x.shape[0]):
        v = max(x[e], np.float32(-87.0))  # exp(-87) ~ 1.6e-38: below that, float32 underflows
        k = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - k * _LN2_HI - k * _LN2_LO
        p = np.float32(1.0 / 720.0)
        p = p * r + np.float32(1.0 / 120.0)
        p = p * r + np.float32(1.0 / 24.0)
        p = p * r + np.float32(1.0 / 6.0)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        x[e] = p * r + np.float32(1.0)
        bits[e] = (np.int32(k) + np.int32(127)) << 23
    for e in range(x.shape[0]):
        x[e] *= scale[e]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _scan_fused_fwd(u, delta, A_t, B, C, dir_B, D, orders, dirs, y, block):  # pragma: no cover
    """Inference: exp(delta * A), direction offsets, the four scans and the D skip in one pass."""
    batch, length, channels = u.shape
    n_state = A_t.shape[0]
    n_blocks = (channels + block - 1) // block
    for job in prange(batch * n_blocks):
        b = job // n_blocks
        e0 = (job % n_blocks) * block
        e1 = min(e0 + block, channels)
        ne = e1 - e0
        h = np.zeros((4, n_state, ne), dtype=np.float32)
        # One flat buffer so that the exp runs as a single long vectorised loop per step.
        decay_flat = np.empty(n_state * ne, dtype=np.float32)
        decay = decay_flat.reshape((n_state, ne))
        bits = np.empty(n_state * ne, dtype=np.int32)
        du = np.empty(ne, dtype=np.float32)
        acc = np.empty(ne, dtype=np.float32)
        d_row = D[e0:e1]
        for t in range(length):
            dt_row = delta[b, t, e0:e1]
            for n in range(n_state):
                a_row = A_t[n, e0:e1]
                dec = decay[n]
                for e in range(ne):
                    dec[e] = dt_row[e] * a_row[e]
            _exp_inplace(decay_flat, bits)
            for k in range(4):
                i = orders[k, t]
                u_row = u[b, i, e0:e1]
                for e in range(ne):
                    du[e] = dt_row[e] * u_row[e]
                    acc[e] = d_row[e] * u_row[e]
                for n in range(n_state):
                    bk = B[b, t, n] + dir_B[dirs[k, t], n]
                    c = C[b, t, n]
                    h_row = h[k, n]
                    dec = decay[n]
                    for e in range(ne):
                        hv = dec[e] * h_row[e] + bk * du[e]
                        h_row[e] = hv
                        acc[e] += hv * c
                y_row = y[b, i, e0:e1]
                for e in range(ne):
                    y_row[e] += acc[e]


@njit(fastmath=True, cache=True, nogil=True)
def _advance(u, delta, dA, Bk, orders, b, t, e0, e1, h, du):  # pragma: no cover - compiled
    """One step of the four recurrences for channels e0:e1 (state ``h`` updated in place)."""
    ne = e1 - e0
    dt_row = delta[b, t, e0:e1]
    for k in range(4):
        u_row = u[b, orders[k, t], e0:e1]
        for e in range(ne):
            du[e] = dt_row[e] * u_row[e]
        for n in range(h.shape[1]):
            bk = Bk[b, k, t, n]
            h_row = h[k, n]
            a_row = dA[b, t, n, e0:e1]
            for e in range(ne):
                h_row[e] = a_row[e] * h_row[e] + bk * du[e]


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
        e1 = min(e0 + block, channels)
        ne = e1 - e0
        # State before each chunk (zeros before the first), then the states inside one chunk.
        bounds = np.zeros((n_chunks, 4, n_state, ne), dtype=np.float32)
        states = np.empty((chunk, 4, n_state, ne), dtype=np.float32)
        h = np.zeros((4, n_state, ne), dtype=np.float32)
        du = np.empty(ne, dtype=np.float32)
        gdu = np.empty(ne, dtype=np.float32)
        for t in range(length):
            if t % chunk == 0:
                bounds[t // chunk] = h
            _advance(u, delta, dA, Bk, orders, b, t, e0, e1, h, du)
        gh = np.zeros((4, n_state, ne), dtype=np.float32)
        for ci in range(n_chunks - 1, -1, -1):
            t0 = ci * chunk
            t1 = min(t0 + chunk, length)
            h[:] = bounds[ci]
            for t in range(t0, t1):
                _advance(u, delta, dA, Bk, orders, b, t, e0, e1, h, du)
                states[t - t0] = h
            for t in range(t1 - 1, t0 - 1, -1):
                s = t - t0
                prev = states[s - 1] if s > 0 else bounds[ci]
                dt_row = delta[b, t, e0:e1]
                gdt_row = gdelta[b, t, e0:e1]
                for k in range(4):
                    i = orders[k, t]
                    u_row = u[b, i, e0:e1]
                    gu_row = gu[b, i, e0:e1]
                    gy_row = gy[b, i, e0:e1]
                    for e in range(ne):
                        du[e] = dt_row[e] * u_row[e]
                        gdu[e] = 0.0
                    for n in range(n_state):
                        bk = Bk[b, k, t, n]
                        c = C[b, t, n]
                        gh_row = gh[k, n]
                        h_row = states[s, k, n]
                        hp_row = prev[k, n]
                        a_row = dA[b, t, n, e0:e1]
                        ga_row = gdA[b, t, n, e0:e1]
                        gc = np.float32(0.0)
                        gb = np.float32(0.0)
                        for e in range(ne):
                            g = gh_row[e] + gy_row[e] * c
                            gc += gy_row[e] * h_row[e]
                            ga_row[e] += g * hp_row[e]
                            gb += g * du[e]
                            gdu[e] += g * bk
                            gh_row[e] = g * a_row[e]
                        gC_part[blk, b, t, n] += gc
                        gBk_part[blk, b, k, t, n] = gb
                    for e in range(ne):
                        gdt_row[e] += gdu[e] * u_row[e]
                        gu_row[e] += gdu[e] * dt_row[e]


def _block_size(batch: int, channels: int, threads: int) -> int:
    """Channels per work item: enough items to feed every thread, rows that stay in L1."""
    items_per_sample = max(1, -(-threads // batch))
    block = -(-channels // items_per_sample)
    return int(min(256, max(16, -(-block // 16) * 16)))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _sync_threads() -> int:
    # Match PyTorch's intra-op thread count so that the two pools do not oversubscribe.
    torch_threads = torch.get_num_threads()
    want = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    if torch.get_num_threads() != torch_threads:
        # Starting numba's OpenMP pool resets the process's OpenMP thread count, which is also
        # PyTorch's: torch.set_num_threads would be undone in the middle of the first step, and
        # a run would not repeat exactly (e.g. after --resume).
        torch.set_num_threads(torch_threads)
    return want


class _ScanCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, dA, Bk, C, orders):  # type: ignore[override]
        block = _block_size(u.shape[0], u.shape[2], _sync_threads())
        y = torch.zeros_like(u)
        _scan_fwd(_np(u), _np(delta), _np(dA), _np(Bk), _np(C), _np(orders), y.numpy(), block)
        ctx.save_for_backward(u, delta, dA, Bk, C, orders)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        u, delta, dA, Bk, C, orders = ctx.saved_tensors
        block = _block_size(u.shape[0], u.shape[2], _sync_threads())
        n_blocks = -(-u.shape[2] // block)
        gu = torch.zeros_like(u)
        gdelta = torch.zeros_like(delta)
        gdA = torch.zeros_like(dA)
        gBk = Bk.new_zeros((n_blocks,) + tuple(Bk.shape))
        gC = C.new_zeros((n_blocks,) + tuple(C.shape))
        _scan_bwd(
            _np(u), _np(delta), _np(dA), _np(Bk), _np(C), _np(orders), _np(gy.float()),
            gu.numpy(), gdelta.numpy(), gdA.numpy(), gBk.numpy(), gC.numpy(), block, _CHUNK,
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
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (u, delta, A, B, C, D, direction_Bs, delta_bias)
    )
    if not needs_grad:
        y = torch.zeros_like(uf)
        block = _block_size(uf.shape[0], uf.shape[2], _sync_threads())
        _scan_fused_fwd(
            _np(uf), _np(dt), _np(A.float().t()), _np(B.float()), _np(C.float()),
            _np(direction_Bs.float()), _np(D.float()), orders.numpy(), dirs.numpy(), y.numpy(), block,
        )  # fmt: skip
        return y.to(out_dtype)
    # delta_t is taken at raster position t by all four scans, so exp(delta_t * A) is shared.
    dA = torch.exp(dt.unsqueeze(2) * A.float().t().contiguous())  # (batch, L, N, E)
    Bk = (B.float().unsqueeze(1) + direction_Bs.float()[dirs]).contiguous()  # (batch, 4, L, N)
    y = scan_core_numba(uf, dt, dA, Bk, C.float().contiguous(), orders)
    return (y + 4.0 * D.float() * uf).to(out_dtype)
