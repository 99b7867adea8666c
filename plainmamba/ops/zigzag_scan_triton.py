"""Host side of the fused Triton zig-zag scan: launches, custom ops with fake impls, autograd.

The kernels and their design are in ``zigzag_scan_triton_kernels.py``; the tuning (channels per
program, scans per program, register caps, chunking, how results are written) is one
:class:`~plainmamba.ops.tuning.TritonSettings`, passed to the custom ops as integers so
that eager and compiled runs use the same values.

Set ``TRITON_INTERPRET=1`` before this module is imported to run the kernels on CPU tensors
(tests).
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from .tuning import TritonSettings, triton_settings
from .zigzag_scan_triton_kernels import (
    INTERPRETED,
    LOG2E,
    zz_bwd_fwd_kernel,
    zz_bwd_rev_kernel,
    zz_carry_kernel,
    zz_fwd_kernel,
    zz_rows_kernel,
    zz_table_kernel,
)

__all__ = [
    "zigzag_scan_triton",
    "chunk_length",
    "plan_chunk",
    "multiprocessors",
    "scan_tuning",
    "ScanTuning",
    "order_table",
    "state_params",
    "KERNEL_STATS",
    "INTERPRETED",
]

_TABLE_STEPS = 256  # steps per program of the table kernel
_ROWS_STEPS = 32  # steps per program of the rows kernel

# Compiled kernels' register and spill counts by name, filled while the settings' record_stats
# is on (benchmarks report them: a spill means the state no longer fits in registers).
KERNEL_STATS: Dict[str, Dict[str, int]] = {}


class ScanTuning(NamedTuple):
    """The settings the scan's custom ops receive, as integers (their ``tuning`` argument)."""

    block: int
    block_bwd: int
    scans_fwd: int
    scans_rev: int
    scans_bf: int
    maxnreg_fwd: int
    maxnreg_rev: int
    maxnreg_bf: int
    store: int  # 1: a slab per scan, summed afterwards; 0: atomic adds into one buffer
    stats: int  # 1: record registers and spills in KERNEL_STATS


def scan_tuning(settings: TritonSettings) -> ScanTuning:
    """The scan's part of ``settings`` as the integers its custom ops take."""
    return ScanTuning(
        settings.block(False), settings.block(True),
        settings.scans_fwd, settings.scans_rev, settings.scans_bf,
        settings.maxnreg_fwd, settings.maxnreg_rev, settings.maxnreg_bf,
        int(settings.scan_scatter == "store"), int(settings.record_stats),
    )  # fmt: skip


def _tuning_for(device: str) -> Tuple[int, ...]:
    # The settings in force for the device, as plain integers; a constant to torch.compile.
    return tuple(scan_tuning(triton_settings(device)))


_tuning_for._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _launch(kernel, grid, *args, stats: int = 0, **kwargs):
    compiled = kernel[grid](*args, **kwargs)
    if stats and compiled is not None and hasattr(compiled, "n_regs"):
        flags = ",".join(
            f"{k}={int(v)}" for k, v in kwargs.items() if k.isupper() or k == "maxnreg"
        )
        name = getattr(kernel, "__name__", None) or getattr(kernel.fn, "__name__", "kernel")
        KERNEL_STATS[f"{name}[{flags}]"] = {
            "regs": int(compiled.n_regs), "spills": int(compiled.n_spills),
        }  # fmt: skip
    return compiled


def _regs(cap: int) -> dict:
    # A register cap for the compiler (0: its own choice; the interpreter takes none).
    return {"maxnreg": cap} if cap and not INTERPRETED else {}


def order_table(h: int, w: int, device: torch.device, stats: int = 0) -> Tensor:
    """(4, h*w) int32: ``token << 3 | code`` per scan and step, made on the device.

    It is made at every call rather than cached: a device tensor cached while torch.compile's
    CUDA graphs record would live in their memory pool, which they refuse to replay.
    """
    length = int(h) * int(w)
    table = torch.empty((4, length), device=device, dtype=torch.int32)
    _launch(zz_table_kernel, (triton.cdiv(length, _TABLE_STEPS),), table, int(h), int(w), length,
            BT=_TABLE_STEPS, stats=stats)  # fmt: skip
    return table


_SMS: Dict[str, int] = {}


def multiprocessors(device: str) -> int:
    """Multiprocessors of a CUDA device (4 for anything else, e.g. the CPU interpreter)."""
    sms = _SMS.get(device)
    if sms is None:
        sms = 4
        if device.startswith("cuda") and torch.cuda.is_available():
            sms = torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
        _SMS[device] = sms
    return sms


def plan_chunk(
    batch: int, length: int, channels: int, multiprocessors: int, block: int = 32
) -> int:
    """Steps per chunk: the whole sequence unless too few (batch, channel-block) programs would
    fill a GPU of ``multiprocessors``; then chunks of a multiple of 8 steps, aiming at about four
    programs per multiprocessor."""
    programs = batch * -(-channels // block)
    target = 4 * multiprocessors
    if 2 * programs >= target or length <= 64:
        return length
    n_chunks = min(-(-target // programs), -(-length // 32))
    per_chunk = -(-length // n_chunks)
    return min(length, -(-per_chunk // 8) * 8)


def _chunk_for(batch: int, length: int, channels: int, device: str, block: int, forced: int) -> int:
    if forced:
        return max(1, min(forced, length))
    return plan_chunk(batch, length, channels, multiprocessors(device), block)


# torch.compile calls it while tracing and keeps the result (assume_constant_result's marker).
_chunk_for._dynamo_marked_constant = True  # type: ignore[attr-defined]


def chunk_length(
    batch: int,
    length: int,
    channels: int,
    device: torch.device,
    settings: Optional[TritonSettings] = None,
) -> int:
    """Steps per chunk for this call: ``settings.scan_chunk`` when set, else :func:`plan_chunk`
    for the device (``settings``: default :func:`~plainmamba.ops.tuning.triton_settings`).
    """
    settings = settings if settings is not None else triton_settings(device)
    return _chunk_for(int(batch), int(length), int(channels), str(device), settings.block(),
                      int(settings.scan_chunk or 0))  # fmt: skip


def _num_warps(block: int) -> int:
    return max(1, block // 32)


def _row_strides(t: Tensor) -> Tuple[int, int]:
    return t.stride(0), t.stride(1)


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def state_params(
    A: Tensor, B: Tensor, C: Tensor, direction_Bs: Tensor, od: Tensor, n_pad: int, stats: int = 0
) -> Tuple[Tensor, Tensor]:
    """``A * log2(e)`` as (n_pad, E), and the per-step rows of B and C as one float32 table
    (batch, L, 5, n_pad): rows 0-3 are B plus the direction offset by which scan 1-4 arrived,
    row 4 is C.

    B and C are small (N values per token against E per channel row): as float32 rows of n_pad
    values each thread reads a row with four 16-byte loads and no conversions, and the five rows
    of a step share one address. The offsets are added here once per (scan, step), where the
    kernels would add them in every channel's recurrence (an add per state and scan in every
    step). One small kernel reads B and C where they lie (x_proj's output) and writes the table.
    States past N are zero-padded (only when N is not a power of two): with A = 0 and B = C = 0
    they stay zero and add nothing.
    """
    n_state = A.shape[1]
    a2 = (A.float() * LOG2E).t()
    P = direction_Bs.float()
    if n_pad != n_state:
        a2 = F.pad(a2, (0, 0, 0, n_pad - n_state))
        P = F.pad(P, (0, n_pad - n_state))
    B, C = _unit_last(B), _unit_last(C)
    batch, length = B.shape[:2]
    table = torch.empty((batch, length, 5, n_pad), device=B.device, dtype=torch.float32)
    _launch(zz_rows_kernel, (triton.cdiv(length, _ROWS_STEPS), batch),
            B, C, P.contiguous(), od, table, *_row_strides(B), *_row_strides(C), length, n_state,
            NP=n_pad, BT=_ROWS_STEPS, stats=stats)  # fmt: skip
    return a2.contiguous(), table


def _fwd_impl(u, delta, A, B, C, D, direction_Bs, delta_bias, h, w, chunk, tuning):
    cfg = ScanTuning(*tuning)
    u, delta = _unit_last(u), _unit_last(delta)
    batch, length, channels = u.shape
    np_ = triton.next_power_of_2(A.shape[1])
    od = order_table(h, w, u.device, cfg.stats)
    a2, bc = state_params(A, B, C, direction_Bs, od, np_, cfg.stats)
    block = cfg.block
    n_e = -(-channels // block)
    n_chunks = -(-length // chunk)
    f32 = torch.float32
    store = bool(cfg.store)
    if store:  # every (scan, token) is written exactly once
        y = torch.empty((4, batch, length, channels), device=u.device, dtype=u.dtype)
    else:
        y = torch.zeros((batch, length, channels), device=u.device, dtype=f32)
    hin = torch.empty((batch, n_chunks - 1, 4, np_, channels), device=u.device, dtype=f32)
    strides = (*_row_strides(u), *_row_strides(delta), *_row_strides(bc))
    warps = _num_warps(block)
    scans = cfg.scans_fwd
    grid = (n_e * (4 // scans), n_chunks, batch)
    if n_chunks > 1:
        hend = torch.empty((batch, n_chunks, 4, np_, channels), device=u.device, dtype=f32)
        dsum = torch.empty((batch, n_chunks, channels), device=u.device, dtype=f32)
        _launch(zz_fwd_kernel, grid,
            u, delta, bc, a2, D, delta_bias, od, y, hin, hend, dsum, *strides,
            batch * length * channels, length, channels, chunk, n_chunks, NP=np_, BE=block,
            S=scans, HAS_INIT=False, WRITE_Y=False, WRITE_STATE=True, STORE=store,
            num_warps=warps,
            stats=cfg.stats, **_regs(cfg.maxnreg_fwd),
        )  # fmt: skip
        _launch(zz_carry_kernel, (n_e, batch),
            a2, hend, dsum, hin, dsum, channels, n_chunks, NP=np_, BE=block, REVERSE=False,
            num_warps=warps, stats=cfg.stats,
        )  # fmt: skip
    # An empty tensor may have a null pointer, which Triton's launcher refuses: pass y instead.
    _launch(zz_fwd_kernel, grid,
        u, delta, bc, a2, D, delta_bias, od, y, hin if n_chunks > 1 else y, y, y, *strides,
        batch * length * channels, length, channels, chunk, n_chunks, NP=np_, BE=block,
        S=scans, HAS_INIT=n_chunks > 1, WRITE_Y=True, WRITE_STATE=False, STORE=store,
        num_warps=warps,
        stats=cfg.stats, **_regs(cfg.maxnreg_fwd),
    )  # fmt: skip
    # The caller sums the slabs (in PyTorch, so that torch.compile fuses the sum into the next
    # elementwise op); the atomic variant returns its one summed slab.
    return (y if store else y.to(u.dtype).unsqueeze(0)), hin


def _bwd_impl(gy, u, delta, A, B, C, D, direction_Bs, delta_bias, hin, h, w, chunk, tuning):
    cfg = ScanTuning(*tuning)
    # gy: the gradient of the output slabs, (S, batch, L, E); one slab (S = 1, or a stride of
    # 0 along S, as when the slabs were summed) serves all four scans.
    u, delta, gy = (_unit_last(t) for t in (u, delta, gy))
    sg_k = gy.stride(0) if gy.shape[0] == 4 else 0
    batch, length, channels = u.shape
    np_ = triton.next_power_of_2(A.shape[1])
    od = order_table(h, w, u.device, cfg.stats)
    # The table is rebuilt rather than saved by the forward: 8 us a layer against 8 MB of
    # activation memory a layer at batch 128 (L1: 0.2 ms against 192 MB a training step).
    a2, bc = state_params(A, B, C, direction_Bs, od, np_, cfg.stats)
    block = cfg.block_bwd
    n_e = -(-channels // block)
    n_chunks = -(-length // chunk)
    dev, f32 = u.device, torch.float32
    store = bool(cfg.store)
    s_rev, s_bf = cfg.scans_rev, cfg.scans_bf
    g_rev, g_bf = 4 // s_rev, 4 // s_bf  # programs per channel block
    if store:
        du = torch.empty((4, batch, length, channels), device=dev, dtype=u.dtype)
    else:
        du = torch.zeros((batch, length, channels), device=dev, dtype=f32)
    shapes = _partial_shapes(batch, length, channels, np_, n_chunks, cfg)
    gam, psi, phi, dbp, dcp, dar, dah = (
        torch.empty(shapes[name], device=dev, dtype=f32)
        for name in ("gam", "psi", "phi", "dbp", "dcp", "dar", "dah")
    )
    # One-scan programs leave the offsets' gradient to the host (below): du is a placeholder.
    dirp_shape = shapes["dirp"]
    dirp = torch.empty(dirp_shape, device=dev, dtype=f32) if s_rev > 1 else du
    sst = torch.empty((batch, n_chunks, channels), device=dev, dtype=f32)
    strides = (
        *_row_strides(u), *_row_strides(delta), *_row_strides(bc),
        gy.stride(1), gy.stride(2), sg_k,
    )  # fmt: skip
    warps = _num_warps(block)
    # Per-step sums over a warp's channels (dB, dC) by shuffles in PTX: one warp per program,
    # and not under the interpreter, which runs no inline assembly.
    lanes = block == 32 and np_ <= 32 and not INTERPRETED
    grid_rev = (n_e * g_rev, n_chunks, batch)
    slab = batch * length * channels
    rho, later = du, du  # placeholders when there is a single chunk
    if n_chunks > 1:
        plocal = torch.empty((batch, n_chunks, 4, np_, channels), device=dev, dtype=f32)
        dsum = torch.empty((batch, n_chunks, channels), device=dev, dtype=f32)
        _launch(zz_bwd_rev_kernel, grid_rev,
            u, delta, bc, a2, delta_bias, od, gy, du, du,
            du, gam, psi, dbp, dar, dirp, sst, plocal, dsum, *strides,
            batch, slab, length, channels, chunk, n_chunks,
            NP=np_, BE=block, S=s_rev, HAS_CARRY=False, MAIN=False, STORE=store, LANES=lanes,
            num_warps=warps,
            stats=cfg.stats, **_regs(cfg.maxnreg_rev),
        )  # fmt: skip
        rho = torch.empty((batch, n_chunks - 1, 4, np_, channels), device=dev, dtype=f32)
        later = torch.empty((batch, n_chunks, channels), device=dev, dtype=f32)
        _launch(zz_carry_kernel, (n_e, batch),
            a2, plocal, dsum, rho, later, channels, n_chunks, NP=np_, BE=block, REVERSE=True,
            num_warps=warps, stats=cfg.stats,
        )  # fmt: skip
    _launch(zz_bwd_rev_kernel, grid_rev,
        u, delta, bc, a2, delta_bias, od, gy, rho, later,
        du, gam, psi, dbp, dar, dirp, sst, du, du, *strides,
        batch, slab, length, channels, chunk, n_chunks,
        NP=np_, BE=block, S=s_rev, HAS_CARRY=n_chunks > 1, MAIN=True, STORE=store, LANES=lanes,
        num_warps=warps,
        stats=cfg.stats, **_regs(cfg.maxnreg_rev),
    )  # fmt: skip
    _launch(zz_bwd_fwd_kernel, (n_e * g_bf, n_chunks, batch),
        u, delta, bc, a2, delta_bias, od, gy, hin if n_chunks > 1 else du, sst,
        phi, dcp, dah, *strides,
        batch, slab, length, channels, chunk, n_chunks,
        NP=np_, BE=block, S=s_bf, HAS_INIT=n_chunks > 1, LANES=lanes, num_warps=warps,
        stats=cfg.stats, **_regs(cfg.maxnreg_bf),
    )  # fmt: skip
    if s_rev == 1:
        # Programs of one scan stored each scan's dB per step (no offset sums in the kernel):
        # the offsets' gradients are those summed by the code of the move at each step.
        per_scan = dbp.view(n_e, 4, batch, length, np_).sum((0, 2))
        moves = F.one_hot((od & 7).long(), 5)[..., 1:4].to(f32)  # codes 1-3, (4, L, 3)
        dirp = torch.einsum("kld,kln->dn", moves, per_scan).view(dirp_shape)
    if not store:
        du = du.unsqueeze(0)
    return du, gam, psi, phi, dbp, dcp, dar, dah, dirp


def _partial_shapes(
    batch: int, length: int, channels: int, n_pad: int, n_chunks: int, cfg: ScanTuning
) -> dict:
    """Shapes of the backward's float32 partial sums, in _bwd_impl's return order after du (its
    fake implementation uses them too): a slab per scan group (gam, psi, phi, dA's halves), a
    row per program (dB, dC), and per program, chunk and code 1-3 the direction offsets'
    gradient summed over channels (a program of one scan leaves that to the host, which sums it
    once)."""
    n_e = -(-channels // cfg.block_bwd)
    s_rev = cfg.scans_rev
    g_rev, g_bf = 4 // s_rev, 4 // cfg.scans_bf
    dirp = (1, 1, 1, 3, n_pad) if s_rev == 1 else (batch, n_chunks, n_e * g_rev, 3, n_pad)
    return {
        "gam": (g_rev, batch, length, channels),
        "psi": (g_rev, batch, length, channels),
        "phi": (g_bf, batch, length, channels),
        "dbp": (n_e * g_rev, batch, length, n_pad),
        "dcp": (n_e * g_bf, batch, length, n_pad),
        "dar": (g_rev, batch, n_chunks, n_pad, channels),
        "dah": (g_bf, batch, n_chunks, n_pad, channels),
        "dirp": dirp,
    }


def _finish_grads(raw, gy, u, delta, B, C, D, delta_bias):
    """The elementwise tail of the backward, in PyTorch so that torch.compile can fuse it."""
    du, gam, psi, phi, dbp, dcp, dar, dah, dirp = raw
    n_state = B.shape[-1]
    # Every scan adds D * u at every token: u and D see the sum of the slabs' gradients.
    gsum = gy.float().sum(0) if gy.shape[0] > 1 else 4.0 * gy[0].float()
    # d softplus(delta): the direct part plus the exclusive prefix sum of psi - phi.
    w = psi.sum(0) - phi.sum(0)
    d_soft = gam.sum(0) + torch.cumsum(w, dim=1) - w
    d_delta = d_soft * torch.sigmoid(delta.float() + delta_bias)
    d_bias = d_delta.sum((0, 1))
    # du's slabs are summed here too, where torch.compile fuses the sum with what follows.
    du = du.float().sum(0) + D * gsum
    dD = (gsum * u.float()).sum((0, 1))
    dA = (dar.sum((0, 1, 2)) - dah.sum((0, 1, 2)))[:n_state].t()
    dB = dbp.sum(0)[..., :n_state]
    dC = dcp.sum(0)[..., :n_state]
    # The start offset (code 0) is added at step 0 of all four scans; code 4 takes the rest.
    d_start = dB[:, 0].sum(0, keepdim=True)
    d_123 = dirp.sum((0, 1, 2))[:, :n_state]
    d_4 = dB.sum((0, 1)) - d_start[0] - d_123.sum(0)
    d_dir = torch.cat([d_start, d_123, d_4[None]], dim=0)
    return (
        du.to(u.dtype), d_delta.to(delta.dtype), dA, dB.to(B.dtype), dC.to(C.dtype), dD,
        d_dir, d_bias,
    )  # fmt: skip


# Registered once per process, opaque to torch.compile (fake impls give the shapes), so the
# model compiles without graph breaks and replays under CUDA graphs. ``tuning`` is ScanTuning.
_OP_FWD = "plainmamba::zigzag_scan_fwd"
_OP_BWD = "plainmamba::zigzag_scan_bwd"

if not hasattr(torch.ops.plainmamba, "zigzag_scan_fwd"):

    @torch.library.custom_op(_OP_FWD, mutates_args=())
    def _fwd_op(
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
        direction_Bs: Tensor, delta_bias: Tensor, h: int, w: int, chunk: int, tuning: List[int],
    ) -> Tuple[Tensor, Tensor]:  # fmt: skip
        return _fwd_impl(u, delta, A, B, C, D, direction_Bs, delta_bias, h, w, chunk, tuning)

    @_fwd_op.register_fake
    def _fwd_fake(u, delta, A, B, C, D, direction_Bs, delta_bias, h, w, chunk, tuning):
        batch, length, channels = u.shape
        n_chunks = -(-length // chunk)
        y = u.new_empty((4 if ScanTuning(*tuning).store else 1, batch, length, channels))
        n_pad = triton.next_power_of_2(A.shape[1])
        hin = u.new_empty((batch, n_chunks - 1, 4, n_pad, channels), dtype=torch.float32)
        return y, hin

    @torch.library.custom_op(_OP_BWD, mutates_args=())
    def _bwd_op(
        gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
        direction_Bs: Tensor, delta_bias: Tensor, hin: Tensor, h: int, w: int, chunk: int,
        tuning: List[int],
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        return _bwd_impl(
            gy, u, delta, A, B, C, D, direction_Bs, delta_bias, hin, h, w, chunk, tuning
        )

    @_bwd_op.register_fake
    def _bwd_fake(gy, u, delta, A, B, C, D, direction_Bs, delta_bias, hin, h, w, chunk, tuning):
        batch, length, channels = u.shape
        n_state = triton.next_power_of_2(A.shape[1])
        n_chunks = -(-length // chunk)
        cfg = ScanTuning(*tuning)
        f32 = torch.float32

        def new(*shape):
            return u.new_empty(shape, dtype=f32)

        if cfg.store:
            du = u.new_empty((4, batch, length, channels))
        else:
            du = new(1, batch, length, channels)
        shapes = _partial_shapes(batch, length, channels, n_state, n_chunks, cfg)
        return (du, *(new(*shape) for shape in shapes.values()))

    def _setup_context(ctx, inputs, output):
        u, delta, A, B, C, D, direction_Bs, delta_bias, h, w, chunk, tuning = inputs
        ctx.save_for_backward(u, delta, A, B, C, D, direction_Bs, delta_bias, output[1])
        ctx.grid = (h, w, chunk, tuning)

    def _backward(ctx, gy, _ghin):
        saved = ctx.saved_tensors
        u, delta, A, B, C, D, direction_Bs, delta_bias, _ = saved
        raw = torch.ops.plainmamba.zigzag_scan_bwd(gy, *saved, *ctx.grid)
        grads = _finish_grads(raw, gy, u, delta, B, C, D, delta_bias)
        return (*grads, None, None, None, None)

    _fwd_op.register_autograd(_backward, setup_context=_setup_context)


def zigzag_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    direction_Bs: Tensor,
    delta_bias: Tensor,
    hw: Tuple[int, int],
    settings: Optional[TritonSettings] = None,
) -> Tensor:
    """Triton path with the signature of :func:`plainmamba.ops.zigzag_scan_ref` (the grid is
    checked by the dispatcher, :func:`plainmamba.ops.zigzag_scan`).

    ``settings``: the tuning; default the settings in force for ``u``'s device
    (:func:`~plainmamba.ops.tuning.triton_settings`).
    """
    batch, length, channels = u.shape
    if settings is None:
        device = str(u.device)
        tuning = list(_tuning_for(device))
        chunk = _chunk_for(batch, length, channels, device, tuning[0], _forced_chunk(device))
    else:
        tuning = list(scan_tuning(settings))
        chunk = chunk_length(batch, length, channels, u.device, settings)
    f32 = torch.float32
    slabs, _ = torch.ops.plainmamba.zigzag_scan_fwd(
        u, delta, A.to(f32).contiguous(), B, C, D.to(f32).contiguous(),
        direction_Bs.to(f32).contiguous(), delta_bias.to(f32).contiguous(),
        int(hw[0]), int(hw[1]), chunk, tuning,
    )  # fmt: skip
    # Each slab holds one scan's outputs (plus D * u) at the tokens it visited; the sum, in
    # float32 and rounded once, fuses into the next elementwise op under torch.compile.
    return slabs[0] if slabs.shape[0] == 1 else slabs.sum(0)


def _forced_chunk(device: str) -> int:
    # The settings' forced chunk length for the device (0: automatic); a constant to compile.
    return int(triton_settings(device).scan_chunk or 0)


_forced_chunk._dynamo_marked_constant = True  # type: ignore[attr-defined]
