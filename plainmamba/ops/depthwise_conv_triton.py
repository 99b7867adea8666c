"""Depthwise k x k convolution on token-major tensors, in Triton (the mixer's ``conv2d``).

The mixer's input projection leaves ``xs`` as a (batch, L, E) view with a row stride of 2E; cuDNN
wants an (N, C, H, W) tensor, contiguous in channels-last, so the model copied it, ran cuDNN's
depthwise kernel (87 us forward and 160 us input gradient for 128 x 384 x 14 x 14, bf16, on an
H200, for 19 MB in and out) and applied SiLU in another pass. Here one kernel reads the strided
view, accumulates the k x k taps in float32 and writes (batch, L, E) with the bias and, for
inference, SiLU applied.

Layout. A program owns one batch element, one output row, a block of ``BW`` columns and a block
of ``BE`` channels; tiles are contiguous along channels (coalesced 16-byte loads). The k x k
neighbour tiles are loaded with zero-padding masks; the repeated loads hit L1/L2.

Backward. The input gradient of a 'same' convolution with an odd kernel is the same convolution
of the output gradient with the kernel flipped, so it reuses the forward kernel. The weight
gradient is a per-channel correlation of the output gradient with the input; it goes to cuDNN's
weight-gradient kernel through ``aten.convolution_backward`` (a copy of the strided input into
channels-last first).
"""

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["depthwise_conv_triton", "INTERPRETED"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

_BLOCK_E = 64


@triton.jit
def _dwconv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    sx_b, sx_l, H, W, E,
    K: tl.constexpr, BW: tl.constexpr, BE: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """y[b, i, j, e] = act(bias[e] + sum_{p, q} w[p * K + q, e] * x[b, i + p - K//2, j + q - K//2, e])."""
    pe = tl.program_id(0)
    prow = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)
    n_wb = tl.cdiv(W, BW)
    i = prow // n_wb
    j = (prow % n_wb) * BW + tl.arange(0, BW)
    offs_e = pe * BE + tl.arange(0, BE)
    me = offs_e < E
    x_b = x_ptr + pb * sx_b
    acc = tl.zeros((BW, BE), tl.float32)
    for p in tl.static_range(K):
        r = i + p - K // 2
        row_ok = (r >= 0) & (r < H)
        for q in tl.static_range(K):
            c = j + q - K // 2
            m = (row_ok & (c >= 0) & (c < W))[:, None] & me[None, :]
            xv = tl.load(x_b + (r * W + c)[:, None] * sx_l + offs_e[None, :], mask=m, other=0.0)
            wv = tl.load(w_ptr + (p * K + q) * E + offs_e, mask=me, other=0.0)
            acc += xv.to(tl.float32) * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_e, mask=me, other=0.0)[None, :]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    mo = (j < W)[:, None] & me[None, :]
    out = y_ptr + (pb * H * W + i * W + j)[:, None] * E + offs_e[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mo)


def _conv(x: Tensor, taps: Tensor, bias: Optional[Tensor], h: int, w: int, silu: bool) -> Tensor:
    batch, length, channels = x.shape
    k = int(round(taps.shape[0] ** 0.5))
    y = torch.empty((batch, length, channels), device=x.device, dtype=x.dtype)
    bw = min(triton.next_power_of_2(w), 32)
    block_e = min(_BLOCK_E, triton.next_power_of_2(channels))
    grid = (triton.cdiv(channels, block_e), h * triton.cdiv(w, bw), batch)
    _dwconv_kernel[grid](
        x, taps, bias if bias is not None else taps, y, x.stride(0), x.stride(1), h, w, channels,
        K=k, BW=bw, BE=block_e, HAS_BIAS=bias is not None, SILU=silu,
        num_warps=4 if bw * block_e >= 1024 else 2,
    )  # fmt: skip
    return y


def _taps(weight: Tensor) -> Tensor:
    # (E, 1, k, k) -> (k * k, E) float32: a tap's channel values are contiguous.
    return weight.detach().float().reshape(weight.shape[0], -1).t().contiguous()


_OP_FWD = "plainmamba::depthwise_conv_fwd"
_OP_BWD = "plainmamba::depthwise_conv_bwd"

if not hasattr(torch.ops.plainmamba, "depthwise_conv_fwd"):

    @torch.library.custom_op(_OP_FWD, mutates_args=())
    def _fwd_op(
        x: Tensor, weight: Tensor, bias: Optional[Tensor], h: int, w: int, silu: bool
    ) -> Tensor:
        return _conv(x, _taps(weight), None if bias is None else bias.float(), h, w, silu)

    @_fwd_op.register_fake
    def _fwd_fake(x, weight, bias, h, w, silu):
        return x.new_empty(x.shape)

    @torch.library.custom_op(_OP_BWD, mutates_args=())
    def _bwd_op(
        gy: Tensor, x: Tensor, weight: Tensor, h: int, w: int, need_x: bool, need_w: bool
    ) -> Tuple[Tensor, Tensor]:
        batch, length, channels = x.shape
        gy = gy if gy.stride(-1) == 1 else gy.contiguous()
        gx = gy.new_empty((0,))
        gw = weight.new_empty((0,))
        if need_x:
            gx = _conv(gy, _taps(weight.flip(-1, -2)), None, h, w, False).to(x.dtype)
        if need_w:
            k = weight.shape[-1]
            img = x.reshape(batch, h, w, channels).permute(0, 3, 1, 2)
            gimg = gy.reshape(batch, h, w, channels).permute(0, 3, 1, 2)
            fmt = torch.channels_last
            _, gw, _ = torch.ops.aten.convolution_backward(
                gimg.contiguous(memory_format=fmt), img.contiguous(memory_format=fmt).to(gy.dtype),
                weight.to(gy.dtype), None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0],
                channels, [False, True, False],
            )  # fmt: skip
            gw = gw.to(weight.dtype)
        return gx, gw

    @_bwd_op.register_fake
    def _bwd_fake(gy, x, weight, h, w, need_x, need_w):
        gx = x.new_empty(x.shape if need_x else (0,))
        gw = weight.new_empty(weight.shape if need_w else (0,))
        return gx, gw

    def _setup_context(ctx, inputs, output):
        x, weight, bias, h, w, silu = inputs
        if silu:
            ctx.silu = True
            return
        ctx.silu = False
        ctx.save_for_backward(x, weight)
        ctx.grid = (h, w)
        ctx.has_bias = bias is not None

    def _backward(ctx, gy):
        if ctx.silu:
            raise RuntimeError(
                "depthwise_conv_triton: the SiLU epilogue is for inference; with gradients, "
                "apply SiLU outside (silu=False)"
            )
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx, gw = torch.ops.plainmamba.depthwise_conv_bwd(gy, x, weight, *ctx.grid, need_x, need_w)
        gb = gy.float().sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (gx if need_x else None), (gw if need_w else None), gb, None, None, None

    _fwd_op.register_autograd(_backward, setup_context=_setup_context)


def depthwise_conv_triton(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], hw: Tuple[int, int], silu: bool = False
) -> Tensor:
    """Triton path of :func:`plainmamba.ops.depthwise_conv_ref` (same signature)."""
    return torch.ops.plainmamba.depthwise_conv_fwd(
        x, weight, bias, int(hw[0]), int(hw[1]), bool(silu)
    )
