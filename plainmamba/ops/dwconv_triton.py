"""Fused depthwise 2-D convolution + SiLU on token-major tensors: Triton kernels, fwd and bwd.

``y = silu(conv2d(x, weight, bias, padding=k // 2, groups=E))`` where ``x`` is (B, L, E) in
raster order over an (H, W) grid, read through its strides (the ``xs`` half of ``in_proj``'s
output: row stride 2E, channel stride 1), and ``y`` is written as a contiguous (B, L, E) tensor.
No channels-last copy, no permutes.

Tiling. A program owns R output rows (at most 8; 7 for a 14 x 14 grid, which has no
power-of-two tiling) x BW columns (a power of two, at most 32) x BC contiguous channels of one
image, so every load and store is a run of channels: vectorised (16 bytes a thread) and
coalesced. Each output row has its own float32 accumulator tile. For each tap column dj (a loop)
it loads the R + k - 1 input rows the tile needs, shifted by dj, once each, and adds each into
the up to k output rows it reaches, with that tap row's weight: k (R + k - 1) loads and
conversions for R k^2 multiply-adds, where a load per tap would take R k^2 (for k = 7, R = 7: 91
against 343). Zero padding is the loads' mask. The weight is passed as float32 (k * k, E), so a
tap's channels are contiguous too; a tap column's k rows are loaded once per dj. Repeated loads
of neighbours hit L1/L2: from DRAM each input is read about once.

Backward, with ``g = dy * silu'(pre)`` (the gradient of the pre-activation):

- ``g`` comes from an elementwise kernel and is stored in x's dtype, as cuDNN's backward
  receives it under autocast: the two kernels below read it at neighbours and positions;
- ``dx`` is the forward's kernel applied to ``g`` with the taps flipped (source offsets
  negated), no bias and no activation;
- ``dweight[t, c] = sum_p g[p, c] * x[p + off_t, c]`` and ``dbias = sum_p g``: the same tile and
  row reuse, now pairing g's R rows with x's R + k - 1 shifted rows into k accumulators (one per
  tap row of the current tap column), summed over a chunk of images before the sums over columns
  (across threads: shuffles and a barrier) at the end of each tap column. Each program writes its
  (k * k, E) partial sums and PyTorch adds them: deterministic, no atomics.

The pre-activation is saved by the forward (in x's dtype) when a gradient is needed rather than
recomputed in the backward: recomputing it means a second k * k pass over x (as long as the
forward kernel), while saving costs one write and one read of a (B, L, E) tensor. Its memory is
less than PyTorch's path keeps for the same layer (the channels-last copy of x and the
convolution's output); x itself is a view of ``in_proj``'s output, which autograd keeps anyway
for SiLU(z).

All arithmetic is float32; inputs may be float32, float16, bfloat16 (or float64), weight and
bias any float dtype (read as float32). Set ``TRITON_INTERPRET=1`` before this module is
imported to run the kernels on CPU tensors (tests).
"""

import os
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .checks import DWCONV_TRITON_MAX_K as MAX_K  # a tap column's weights are k named registers
from .tuning import DWCONV_MAX_ROWS, TritonSettings, triton_settings

__all__ = [
    "dwconv2d_silu_triton",
    "INTERPRETED",
    "MAX_K",
    "conv_tiling",
    "wgrad_images",
    "dwconv_tuning",
    "multiprocessors",
]

# Decided by Triton when the kernels below are decorated, so read it the same way.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

MAX_R = DWCONV_MAX_ROWS  # output rows per program: each is a named accumulator

# Up to 9 tap rows and 8 output rows are kept as named tiles (w0..w8, a0..a7, ...) and picked by
# compile-time indices through the ladders of ``if i == n`` below, written inline: Triton has no
# indexable list of tiles in every version this runs on, and each jit-helper call costs about a
# millisecond under the interpreter, which would make thousands of them per test.


@triton.jit
def _tap_column(w_ptr, dj, E, ch, cok, K: tl.constexpr):
    # The k weights w[., dj] of a tap column, each a (1, BC) float32 row (unused ones alias w0).
    wq = w_ptr + dj * E + ch
    w0 = tl.load(wq, mask=cok, other=0.0)[None, :]
    w1, w2, w3, w4, w5, w6, w7, w8 = w0, w0, w0, w0, w0, w0, w0, w0
    if K > 1:
        w1 = tl.load(wq + 1 * K * E, mask=cok, other=0.0)[None, :]
    if K > 2:
        w2 = tl.load(wq + 2 * K * E, mask=cok, other=0.0)[None, :]
    if K > 3:
        w3 = tl.load(wq + 3 * K * E, mask=cok, other=0.0)[None, :]
    if K > 4:
        w4 = tl.load(wq + 4 * K * E, mask=cok, other=0.0)[None, :]
    if K > 5:
        w5 = tl.load(wq + 5 * K * E, mask=cok, other=0.0)[None, :]
    if K > 6:
        w6 = tl.load(wq + 6 * K * E, mask=cok, other=0.0)[None, :]
    if K > 7:
        w7 = tl.load(wq + 7 * K * E, mask=cok, other=0.0)[None, :]
    if K > 8:
        w8 = tl.load(wq + 8 * K * E, mask=cok, other=0.0)[None, :]
    return w0, w1, w2, w3, w4, w5, w6, w7, w8


@triton.jit
def _tile(pid, NRB, NCB, R: tl.constexpr, BW: tl.constexpr):
    # Program -> (image or image chunk, first row, columns) of an (R rows, BW columns) tile.
    tiles = NRB * NCB
    b = pid // tiles
    t = pid - b * tiles
    rb = t // NCB
    col = (t - rb * NCB) * BW + tl.arange(0, BW)
    return b, rb * R, col


@triton.jit
def _conv_kernel(
    src_ptr, w_ptr, b_ptr, out_ptr, pre_ptr,
    ss_b, ss_l, H, W, E, NRB, NCB,
    K: tl.constexpr, R: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr, FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
):  # fmt: skip
    """out = act(conv(src) + b) over R output rows x BW columns x BC channels of one image.

    For each tap column dj, each of the R + k - 1 input rows the tile needs is loaded (shifted
    by dj) and converted once, and added into the up to k output rows it reaches: k (R + k - 1)
    loads for R k^2 multiply-adds. FLIP negates the tap offsets (the input gradient).
    """
    P: tl.constexpr = K // 2
    b, r0, col = _tile(tl.program_id(0), NRB, NCB, R, BW)
    ch = tl.program_id(1) * BC + tl.arange(0, BC)
    cok = ch < E
    src = src_ptr + b.to(tl.int64) * ss_b + ch[None, :]
    z = tl.zeros((BW, BC), tl.float32)
    a0, a1, a2, a3, a4, a5, a6, a7 = z, z, z, z, z, z, z, z
    for dj in range(K):
        if FLIP:
            cc = col + (P - dj)
        else:
            cc = col + (dj - P)
        cm = ((cc >= 0) & (cc < W))[:, None] & cok[None, :]
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = _tap_column(w_ptr, dj, E, ch, cok, K)
        for u in tl.static_range(R + K - 1):
            rr = r0 + (u - P)  # input row u of the tile
            m = cm & (rr >= 0) & (rr < H)
            v = tl.load(src + (rr * W + cc)[:, None] * ss_l, mask=m, other=0.0).to(tl.float32)
            for o in tl.static_range(R):
                if u - o >= 0:
                    if u - o < K:  # output row o takes input row u through tap row u - o
                        if FLIP:
                            i = K - 1 - (u - o)
                        else:
                            i = u - o
                        # fmt: off
                        wv = w0
                        if i == 1: wv = w1
                        if i == 2: wv = w2
                        if i == 3: wv = w3
                        if i == 4: wv = w4
                        if i == 5: wv = w5
                        if i == 6: wv = w6
                        if i == 7: wv = w7
                        if i == 8: wv = w8
                        if o == 0: a0 += wv * v
                        if o == 1: a1 += wv * v
                        if o == 2: a2 += wv * v
                        if o == 3: a3 += wv * v
                        if o == 4: a4 += wv * v
                        if o == 5: a5 += wv * v
                        if o == 6: a6 += wv * v
                        if o == 7: a7 += wv * v
                        # fmt: on
    if HAS_BIAS:
        bias = tl.load(b_ptr + ch, mask=cok, other=0.0)[None, :]
    out_b = b.to(tl.int64) * H * W * E
    for o in tl.static_range(R):
        # fmt: off
        acc = a0
        if o == 1: acc = a1
        if o == 2: acc = a2
        if o == 3: acc = a3
        if o == 4: acc = a4
        if o == 5: acc = a5
        if o == 6: acc = a6
        if o == 7: acc = a7
        # fmt: on
        if HAS_BIAS:
            acc += bias
        row = r0 + o
        offs = out_b + (row * W + col)[:, None] * E + ch[None, :]
        m = ((col < W) & (row < H))[:, None] & cok[None, :]
        if SAVE_PRE:
            tl.store(pre_ptr + offs, acc.to(pre_ptr.dtype.element_ty), mask=m)
        if ACT:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dsilu_kernel(dy_ptr, pre_ptr, g_ptr, T, BLOCK: tl.constexpr):
    """g = dy * silu'(pre), elementwise over T contiguous values."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < T
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    pre = tl.load(pre_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.sigmoid(pre)
    g = dy * s * (1.0 + pre * (1.0 - s))
    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=m)


@triton.jit
def _wgrad_kernel(
    x_ptr, g_ptr, dw_ptr, db_ptr,
    sx_b, sx_l, H, W, E, B, NRB, NCB, BPER,
    K: tl.constexpr, R: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Partial dweight (k * k, BC) and dbias (BC,) over one (R, BW) tile of BPER images.

    For each tap column dj, the k tap rows' products are summed over the images in k named
    (BW, BC) accumulators, each input row shifted by dj loaded once for the R output rows it
    meets (as in the forward); the sums over columns cross threads, so they wait for the end of
    the image loop: k^2 reductions a program.
    """
    P: tl.constexpr = K // 2
    chunk, r0, col = _tile(tl.program_id(0), NRB, NCB, R, BW)
    ch = tl.program_id(1) * BC + tl.arange(0, BC)
    cok = ch < E
    b0 = chunk * BPER
    nb = tl.minimum(b0 + BPER, B) - b0
    L = H * W
    gm = (col < W)[:, None] & cok[None, :]
    z = tl.zeros((BW, BC), tl.float32)
    # dbias first, in its own pass: an accumulator fewer in the main loop.
    accb = z
    g_b = g_ptr + b0.to(tl.int64) * L * E + ch[None, :]
    for _ in range(nb):
        for o in tl.static_range(R):
            gv = tl.load(g_b + ((r0 + o) * W + col)[:, None] * E, mask=gm & (r0 + o < H), other=0.0)
            accb += gv.to(tl.float32)
        g_b += L * E
    tl.store(db_ptr + tl.program_id(0).to(tl.int64) * E + ch, tl.sum(accb, axis=0), mask=cok)
    part = tl.program_id(0).to(tl.int64) * (K * K) * E + ch
    for dj in range(K):
        cc = col + (dj - P)
        cm = ((cc >= 0) & (cc < W))[:, None] & cok[None, :]
        s0, s1, s2, s3, s4, s5, s6, s7, s8 = z, z, z, z, z, z, z, z, z
        x_b = x_ptr + b0.to(tl.int64) * sx_b + ch[None, :]
        g_b = g_ptr + b0.to(tl.int64) * L * E + ch[None, :]
        for _ in range(nb):
            # The tile's R rows of g, as float32 (zero outside the image).
            g0, g1, g2, g3, g4, g5, g6, g7 = z, z, z, z, z, z, z, z
            for o in tl.static_range(R):
                gv = tl.load(g_b + ((r0 + o) * W + col)[:, None] * E, mask=gm & (r0 + o < H),
                             other=0.0).to(tl.float32)  # fmt: skip
                # fmt: off
                if o == 0: g0 = gv
                if o == 1: g1 = gv
                if o == 2: g2 = gv
                if o == 3: g3 = gv
                if o == 4: g4 = gv
                if o == 5: g5 = gv
                if o == 6: g6 = gv
                if o == 7: g7 = gv
                # fmt: on
            for u in tl.static_range(R + K - 1):
                rr = r0 + (u - P)
                m = cm & (rr >= 0) & (rr < H)
                v = tl.load(x_b + (rr * W + cc)[:, None] * sx_l, mask=m, other=0.0)
                v = v.to(tl.float32)
                for o in tl.static_range(R):
                    if u - o >= 0:
                        if u - o < K:  # tap row i = u - o pairs g's row o with x's row u
                            i = u - o
                            # fmt: off
                            gv = g0
                            if o == 1: gv = g1
                            if o == 2: gv = g2
                            if o == 3: gv = g3
                            if o == 4: gv = g4
                            if o == 5: gv = g5
                            if o == 6: gv = g6
                            if o == 7: gv = g7
                            if i == 0: s0 += gv * v
                            if i == 1: s1 += gv * v
                            if i == 2: s2 += gv * v
                            if i == 3: s3 += gv * v
                            if i == 4: s4 += gv * v
                            if i == 5: s5 += gv * v
                            if i == 6: s6 += gv * v
                            if i == 7: s7 += gv * v
                            if i == 8: s8 += gv * v
                            # fmt: on
            x_b += sx_b
            g_b += L * E
        for i in tl.static_range(K):
            # fmt: off
            acc = s0
            if i == 1: acc = s1
            if i == 2: acc = s2
            if i == 3: acc = s3
            if i == 4: acc = s4
            if i == 5: acc = s5
            if i == 6: acc = s6
            if i == 7: acc = s7
            if i == 8: acc = s8
            # fmt: on
            tl.store(dw_ptr + part + (i * K + dj) * E, tl.sum(acc, axis=0), mask=cok)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

_DSILU_BLOCK = 1024


def conv_tiling(
    h: int, w: int, channels: int, wgrad: bool = False, tile: Optional[Sequence[int]] = None
) -> Tuple[int, int, int, int, int, int]:
    """Tile of the kernels for an (h, w) grid: R rows (as even as possible, at most 8), BW
    columns (a power of two, at most 32; at most 8 for the weight gradient) and BC channels; with
    the row and column block counts and the warps (a (BW, BC) row holds 8 values a thread).

    The weight gradient takes narrower tiles: its per-tap sums over a tile's columns cross
    warps. At B = 128, 14 x 14, E = 384, k = 7 it ran in 95 us with 8 columns against 115 with 16
    on an H100, while the forward ran in 57 us with 16 and 95 with 8 (H200). ``tile`` (rows,
    columns, channels; ``TritonSettings.dwconv_tile``, checked there) forces the tile of all
    kernels.
    """
    if tile:
        rows, bw, bc = (int(v) for v in tile)
    else:
        rows = -(-h // -(-h // MAX_R))
        bw = min(triton.next_power_of_2(w), 8 if wgrad else 32)
        bc = max(16, min(64, 1024 // bw))
    n_rb, n_cb = -(-h // rows), -(-w // bw)
    warps = max(1, min(8, bw * bc // 256))
    return rows, bw, bc, n_rb, n_cb, warps


_SMS: dict = {}


def multiprocessors(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (4 for anything else, e.g. the CPU interpreter)."""
    key = str(device)
    sms = _SMS.get(key)
    if sms is None:
        sms = 4
        if device.type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
        _SMS[key] = sms
    return sms


def wgrad_images(batch: int, tiles: int, multiprocessors: int, forced: int = 0) -> int:
    """Images per program of the weight gradient (``forced`` when not 0).

    Each program ends with k^2 sums across threads and writes a (k * k, E) partial sum, so it
    takes as many images as still leave about three programs a multiprocessor (on an H100, 128
    images at 14 x 14: 8 a program, 384 programs, 95 us; 16 a program 135 us, 4 a program about
    105 us).
    """
    if forced:
        return max(1, int(forced))
    return max(1, round(batch * tiles / (3 * multiprocessors)))


def dwconv_tuning(settings: TritonSettings) -> List[int]:
    """The depthwise conv's part of ``settings`` as its custom ops' ``tuning`` argument:
    ``[rows, columns, channels, images per weight-gradient program]``, 0 = automatic."""
    tile = settings.dwconv_tile or (0, 0, 0)
    return [*tile, int(settings.dwconv_wgrad_images or 0)]


def _tuning_for(device: str) -> Tuple[int, ...]:
    # The settings in force for the device, as plain integers; a constant to torch.compile.
    return tuple(dwconv_tuning(triton_settings(device)))


_tuning_for._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _fwd_impl(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], h: int, w: int, k: int, save_pre: bool,
    tuning: Sequence[int],
) -> Tuple[Tensor, Tensor]:  # fmt: skip
    x = _unit_last(x)
    batch, length, channels = x.shape
    y = torch.empty((batch, length, channels), device=x.device, dtype=x.dtype)
    pre = torch.empty((batch, length, channels) if save_pre else (0,), device=x.device,
                      dtype=x.dtype)  # fmt: skip
    if y.numel() == 0:
        return y, pre
    rows, bw, bc, n_rb, n_cb, warps = conv_tiling(h, w, channels, tile=tuning[0] and tuning[:3])
    grid = (batch * n_rb * n_cb, triton.cdiv(channels, bc))
    # An unused pointer argument still has to be a live tensor: pass y.
    _conv_kernel[grid](
        x, weight, bias if bias is not None else weight, y, pre if save_pre else y,
        x.stride(0), x.stride(1), h, w, channels, n_rb, n_cb,
        K=k, R=rows, BW=bw, BC=bc, FLIP=False, HAS_BIAS=bias is not None, ACT=True,
        SAVE_PRE=save_pre, num_warps=warps,
    )  # fmt: skip
    return y, pre


def _bwd_impl(
    dy: Tensor, x: Tensor, weight: Tensor, pre: Tensor, h: int, w: int, k: int, need_dx: bool,
    tuning: Sequence[int],
) -> Tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    if pre.numel() != dy.numel():
        raise RuntimeError(
            "dwconv2d_silu: the forward ran without saving its pre-activation (no input needed "
            "a gradient then), so it cannot be differentiated"
        )
    x, dy = _unit_last(x), dy.contiguous()
    batch, length, channels = x.shape
    dev, f32 = x.device, torch.float32
    dx = torch.empty((batch, length, channels) if need_dx else (0,), device=dev, dtype=x.dtype)
    if dy.numel() == 0:
        return dx.zero_(), torch.zeros_like(weight), weight.new_zeros((channels,))
    g = torch.empty((batch, length, channels), device=dev, dtype=x.dtype)
    total = g.numel()
    _dsilu_kernel[(triton.cdiv(total, _DSILU_BLOCK),)](
        dy, pre, g, total, BLOCK=_DSILU_BLOCK, num_warps=4
    )
    tile = tuning[0] and tuning[:3]
    rows, bw, bc, n_rb, n_cb, warps = conv_tiling(h, w, channels, wgrad=True, tile=tile)
    n_c = triton.cdiv(channels, bc)
    per = wgrad_images(batch, n_rb * n_cb * n_c, multiprocessors(dev), tuning[3])
    n_parts = triton.cdiv(batch, per) * n_rb * n_cb
    dw_parts = torch.empty((n_parts, k * k, channels), device=dev, dtype=f32)
    db_parts = torch.empty((n_parts, channels), device=dev, dtype=f32)
    _wgrad_kernel[(n_parts, n_c)](
        x, g, dw_parts, db_parts, x.stride(0), x.stride(1), h, w, channels, batch, n_rb, n_cb,
        per, K=k, R=rows, BW=bw, BC=bc, num_warps=warps,
    )  # fmt: skip
    if need_dx:
        rows, bw, bc, n_rb, n_cb, warps = conv_tiling(h, w, channels, tile=tile)
        _conv_kernel[(batch * n_rb * n_cb, triton.cdiv(channels, bc))](
            g, weight, weight, dx, dx, g.stride(0), g.stride(1), h, w, channels, n_rb, n_cb,
            K=k, R=rows, BW=bw, BC=bc, FLIP=True, HAS_BIAS=False, ACT=False, SAVE_PRE=False,
            num_warps=warps,
        )  # fmt: skip
    return dx, dw_parts.sum(0), db_parts.sum(0)


# Registered once per process and opaque to torch.compile (fake impls give the shapes), so a
# model using it compiles without graph breaks; nothing is cached on the device between calls,
# so CUDA graphs replay it. ``tuning`` is dwconv_tuning()'s list.
if not hasattr(torch.ops.plainmamba, "dwconv2d_silu_fwd"):

    @torch.library.custom_op("plainmamba::dwconv2d_silu_fwd", mutates_args=())
    def _fwd_op(
        x: Tensor, weight: Tensor, bias: Optional[Tensor], h: int, w: int, k: int,
        save_pre: bool, tuning: List[int],
    ) -> Tuple[Tensor, Tensor]:  # fmt: skip
        return _fwd_impl(x, weight, bias, h, w, k, save_pre, tuning)

    @_fwd_op.register_fake
    def _fwd_fake(x, weight, bias, h, w, k, save_pre, tuning):
        batch, length, channels = x.shape
        y = x.new_empty((batch, length, channels))
        return y, x.new_empty((batch, length, channels) if save_pre else (0,))

    @torch.library.custom_op("plainmamba::dwconv2d_silu_bwd", mutates_args=())
    def _bwd_op(
        dy: Tensor, x: Tensor, weight: Tensor, pre: Tensor, h: int, w: int, k: int,
        need_dx: bool, tuning: List[int],
    ) -> Tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        return _bwd_impl(dy, x, weight, pre, h, w, k, need_dx, tuning)

    @_bwd_op.register_fake
    def _bwd_fake(dy, x, weight, pre, h, w, k, need_dx, tuning):
        batch, length, channels = x.shape
        dx = x.new_empty((batch, length, channels) if need_dx else (0,))
        return dx, weight.new_empty(weight.shape), weight.new_empty((channels,))

    def _setup_context(ctx, inputs, output):
        x, weight, bias, h, w, k, _save_pre, tuning = inputs
        ctx.save_for_backward(x, weight, output[1])
        ctx.args = (h, w, k)
        ctx.tuning = tuning
        ctx.has_bias = bias is not None

    def _backward(ctx, dy, _dpre):
        x, weight, pre = ctx.saved_tensors
        need_dx = bool(ctx.needs_input_grad[0])
        dx, dw, db = torch.ops.plainmamba.dwconv2d_silu_bwd(
            dy, x, weight, pre, *ctx.args, need_dx, ctx.tuning
        )
        return (dx if need_dx else None, dw, db if ctx.has_bias else None,
                None, None, None, None, None)  # fmt: skip

    _fwd_op.register_autograd(_backward, setup_context=_setup_context)


def dwconv2d_silu_triton(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    hw: Tuple[int, int],
    settings: Optional[TritonSettings] = None,
) -> Tensor:
    """Triton path of :func:`plainmamba.ops.dwconv.dwconv2d_silu` (arguments checked there).

    ``x``: (B, L, E) with channel stride 1; ``weight``: (E, 1, k, k); ``bias``: (E,) or None.
    Returns (B, L, E) contiguous, in x's dtype; weight and bias gradients in their dtypes.
    ``settings``: the tuning; default the settings in force for x's device
    (:func:`~plainmamba.ops.tuning.triton_settings`).
    """
    channels, k = weight.shape[0], weight.shape[-1]
    if k > MAX_K:
        raise ValueError(f"dwconv2d_silu_triton: kernel sizes up to {MAX_K}, got {k}")
    if settings is None:
        tuning = list(_tuning_for(str(x.device)))
    else:
        tuning = dwconv_tuning(settings)
    f32 = torch.float32
    # (k * k, E) float32: a tap's weights are one contiguous row of channels. These reshapes
    # sit outside the op, so autograd takes the gradient back to weight's shape and dtype.
    w_t = weight.reshape(channels, k * k).t().to(f32).contiguous()
    b = bias.to(f32).contiguous() if bias is not None else None
    save_pre = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    y, _ = torch.ops.plainmamba.dwconv2d_silu_fwd(
        x, w_t, b, int(hw[0]), int(hw[1]), int(k), bool(save_pre), tuning
    )
    return y
