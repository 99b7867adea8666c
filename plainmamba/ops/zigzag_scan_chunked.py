"""Zig-zag selective scan from standard tensor ops only: exports to TorchScript and ONNX.

Same signature and quirks as :func:`plainmamba.ops.zigzag_scan_ref` (``delta``, ``B`` and ``C``
are read at raster position ``t`` by all four scans, ``u`` at the token the scan visits), with
gradients through plain autograd. It serves deployment (tracing, ``torch.onnx.export``) and any
device without Numba or Triton.

The steps are cut into chunks of ``T = CHUNK`` steps. Within a chunk, with
``S_t = cumsum(delta_t * A)`` (the log-decay from the chunk's start to step ``t``, per channel and
state) and ``R = S_last / 2``, the state is

    h_t = exp(S_t - R) * (exp(R) * h_in + cumsum_s(exp(R - S_s) * delta_s * u_s * B_s))

so the decay between two positions, ``exp(S_t - S_s)``, is a product of two factors and one
cumulative sum (a triangular matrix product) replaces the step loop; between chunks the state
``h`` is carried. Each step's log-decay is clamped at ``-LOG_DECAY_FLOOR``: a step that keeps less
than ``exp(-18) = 1.5e-8`` of the state keeps that much, below float32 resolution. The factors
then stay within ``exp(+-CHUNK * 18 / 2) = exp(+-72)``, which float32 holds (with
``|delta * u * B| < 1e6``, far beyond any trained layer's values).

Cost per layer, against the reference recurrence: the same arithmetic (about five passes over
``4 * L * E * N`` float32 values and two exponentials per ``L * E * N``) in about ``20 * L / 8``
operations instead of ``8 * L``, so a traced graph is about three times smaller. Memory: one
chunk's temporaries, a few tensors of ``batch * 4 * CHUNK * E * N`` float32 values (0.8 MB each
for PlainMamba-L1 at batch 1), plus the (batch, 4, L, E) outputs; autograd keeps each chunk's
temporaries for the backward, O(L * E * N) in all, like the reference.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .scan_orders import scan_orders

__all__ = ["zigzag_scan_chunked", "CHUNK", "LOG_DECAY_FLOOR"]

# Steps per chunk, and the most negative log-decay of one step: CHUNK * LOG_DECAY_FLOOR / 2 = 72
# bounds the exponents of the two factors (float32 overflows at exp(88.7)). Eight steps keep a
# chunk's temporaries near the CPU's L2 cache; longer chunks ran slower on the CPUs measured.
CHUNK = 8
LOG_DECAY_FLOOR = 18.0


def zigzag_scan_chunked(
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
    """Chunked path with the signature of :func:`plainmamba.ops.zigzag_scan_ref`; the grid is
    checked by the dispatcher, :func:`plainmamba.ops.zigzag_scan`."""
    out_dtype = u.dtype
    batch, length, channels = u.shape
    n_state = A.shape[1]
    orders, inverse, dirs = scan_orders(hw[0], hw[1], u.device)
    uf = u.float()
    Af = A.float()
    dt = F.softplus(delta.float() + delta_bias.float())  # (batch, L, E), raster position t
    # Every per-step tensor is laid out (batch, scan or 1, L, E or 1, N or 1) and split into
    # chunks once, so that a chunk costs about twenty operations (a traced graph stays small).
    dts = dt[:, None, :, :, None].split(CHUNK, dim=2)
    # What scan k adds at step t before the B_t product: delta_t * u at the token it visits.
    drives = (dt.unsqueeze(1) * uf[:, orders]).unsqueeze(-1).split(CHUNK, dim=2)
    Bks = (B.float().unsqueeze(1) + direction_Bs.float()[dirs]).unsqueeze(3).split(CHUNK, dim=2)
    Cs = C.float()[:, None, :, None, :].split(CHUNK, dim=2)
    # Lower-triangular ones: a product with it is the cumulative sum over a chunk's steps.
    tril = torch.ones(CHUNK, CHUNK, device=u.device).tril()
    flat = (batch * 4, -1, channels * n_state)

    h: Optional[torch.Tensor] = None  # (batch, 4, 1, E, N): state after the previous chunk
    ys: List[torch.Tensor] = []
    for dt_c, drive_c, B_c, C_c in zip(dts, drives, Bks, Cs):
        T = dt_c.shape[2]
        S = (dt_c * Af).clamp_min(-LOG_DECAY_FLOOR).cumsum(2)  # (batch, 1, T, E, N)
        shrink = torch.exp(S - 0.5 * S.narrow(2, T - 1, 1))  # exp(S_t - R)
        exp_r = shrink.narrow(2, T - 1, 1)  # the last step's factor is exp(S_last - R) = exp(R)
        # delta_s * u_s * B_s as an outer product (a matrix product with one inner term: ONNX
        # Runtime's broadcasting multiply is slow on this pattern), times exp(R - S_s).
        terms = (torch.matmul(drive_c, B_c) * shrink.reciprocal()).reshape(flat)
        if h is None:
            acc = torch.matmul(tril[:T, :T], terms)
        else:
            # The carried state decays by exp(S_t) = exp(S_t - R) * exp(R).
            carry = (h * exp_r).reshape(flat)
            acc = torch.baddbmm(carry, tril[:T, :T].expand(batch * 4, T, T), terms)
        acc = acc.view(batch, 4, T, channels, n_state)  # h_t = exp(S_t - R) * acc_t
        h = acc.narrow(2, T - 1, 1) * exp_r
        # y_t = sum_n C_t[n] h_t[., n], with exp(S_t - R) folded into C (a quarter of the size).
        ys.append((acc * (shrink * C_c)).sum(-1))
    y = torch.cat(ys, dim=2) if len(ys) > 1 else ys[0]  # (batch, 4, L, E), scan order
    out = y[:, 0, inverse[0]] + y[:, 1, inverse[1]] + y[:, 2, inverse[2]] + y[:, 3, inverse[3]]
    out = out + 4.0 * D.float() * uf  # each scan adds D * u at the token it visits
    return out.to(out_dtype)
