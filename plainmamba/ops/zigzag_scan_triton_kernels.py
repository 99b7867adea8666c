"""Triton kernels of the fused zig-zag selective scan: the four scans of a layer, fwd and bwd.

The host side (launches, the custom ops and their fake implementations) is
``zigzag_scan_triton.py``; the tuning is ``tuning.py``.

Layout. A program owns one batch element, a block of ``BE`` channels (32 by default: one warp),
one chunk of steps and S of the four scan orders (``TritonSettings.scans_*``, per kernel); a
thread owns one channel and keeps its N states of those orders in float32 registers, as (BE, N)
tiles. Since delta, B and C are indexed by the step (docs/model.md#the-selective-scan),
``exp(delta_t * A)`` is computed once per step and shared by the program's recurrences; each
recurrence gathers ``u`` at the token its order visits and reads its own row of B, to which a
small rows kernel has added the direction offset of the move that arrived (a (batch, L, 5, N)
table of the four B rows and the C row of each step).
Programs of fewer orders hold fewer registers but repeat that shared work; their results that
sum over orders are partial sums, added up on the host.

Register layout. A is passed as ``(A * log2 e)^T``, (N, E), and saved states are (N, E) too, so
every 2-D tile in memory is contiguous along channels: Triton then gives each thread a channel and
keeps its N states in its own registers, and the sums over states (``y = h . C``) need no
shuffles. B_t and C_t are loaded as (N,) rows and broadcast. ``dev/benchmarks/kernel_report.py``
prints the layouts, shuffles and registers without a GPU.

Writes. Each scan visits every token once, so by default (``TritonSettings.scan_scatter="store"``)
it writes ``y_k + D * u`` to its own (batch, L, E) slab and the four slabs are summed afterwards
in PyTorch, where torch.compile fuses the sum into the next elementwise op: deterministic, no
atomics (``atomic`` adds into one float32 buffer instead). A step's writes
come after all of its loads, because the compiler may not move a load above a write to memory
that could alias it. The visited tokens and move codes are computed on the device from (H, W)
at every call, so nothing is cached on the device (CUDA graphs could not replay a cached
tensor allocated while they record).

Chunks. With few (batch, channel-block) programs (batch 1 at high resolution) the steps are
cut into chunks that run in parallel: a first pass gives each chunk's final state from a zero
start and its summed delta (the decay of a whole chunk, ``exp(A * sum delta)``, is shared by
the four scans), a small carry kernel walks the chunks, and the main pass reruns each chunk from
its true initial state. With enough programs (batch 128 at 224) there is one chunk.

Backward. No per-step state is stored. With ``r_t = dL/dh_t`` (a reverse recurrence) and
``h_t`` (a forward one), the only terms that need both at once are
``q_t = r_t * exp(delta_t A) * h_{t-1}``, needed as ``sum_n A q_t`` (for d delta) and
``sum_t delta_t q_t`` (for dA). Both follow from one-sided sums, because
``r_t h_t - r_{t-1} h_{t-1} = r_t d_t - c_{t-1} h_{t-1}`` (``d_t`` the drive, ``c_t`` the output
gradient times ``C_t``):

- ``sum_n A q_t = sum_{s<t} (psi_s - phi_s)``, with ``psi_s = sum_n A d_s r_s`` from the reverse
  pass and ``phi_s = sum_n A c_s h_s`` from a forward pass: an exclusive cumulative sum;
- ``sum_t delta_t q_t = sum_s S_{s+1} (r_s d_s - c_s h_s)``, with ``S_{s+1}`` the sum of delta
  after step ``s``.

So the backward is a reverse pass (r: du, d delta's direct part, dB, the direction offsets'
gradient, psi, half of dA) and a forward pass (h again: dC, phi, the other half of dA), each a
plain loop in registers, chunked like the forward when needed (the reverse carry between chunks
uses the same per-chunk decay).

Inputs may be float32, float16 or bfloat16; all arithmetic is float32. Set ``TRITON_INTERPRET=1``
before this module is imported to run the kernels on CPU tensors (tests).
"""

import os

import triton
import triton.language as tl

__all__ = [
    "INTERPRETED",
    "LOG2E",
    "zz_fwd_kernel",
    "zz_carry_kernel",
    "zz_bwd_rev_kernel",
    "zz_bwd_fwd_kernel",
    "zz_rows_kernel",
    "zz_table_kernel",
]

# Decided by Triton when the kernels below are decorated, so read it the same way.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # read inside kernels


_HW_LOG = tl.constexpr(not INTERPRETED)  # the interpreter runs no inline assembly


@triton.jit
def _log2_fast(x):
    # The hardware's approximate log2: tl.log2 compiles to a 20-instruction polynomial.
    if _HW_LOG:
        return tl.inline_asm_elementwise(
            "lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.log2(x)


@triton.jit
def _softplus(x):
    # log1p(exp(x)) without a log1p: log(w) * e / (w - 1) keeps full precision for small e.
    # Hardware approximations throughout (ex2, lg2, rcp: relative error about 2^-22): tl.log
    # compiles to a 30-instruction polynomial, which ran in every step of every kernel.
    e = tl.exp2(tl.minimum(x, 20.0) * 1.4426950408889634)
    w = 1.0 + e
    den = tl.where(w == 1.0, 1.0, w - 1.0)
    small = tl.where(w == 1.0, e, (_log2_fast(w) * LN2) * tl.fdiv(e, den, ieee_rounding=False))
    return tl.where(x > 20.0, x, small)


@triton.jit
def _row(base, t, stride, offs, mask):
    # Offsets inside one batch element fit in int32; the batch offset is int64 already.
    return tl.load(base + t * stride + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _codes(od_ptr, L, t, S: tl.constexpr):
    # The packed ``token << 3 | code`` at step t of the program's S scans (od_ptr points at its
    # first scan's row); the values of scans it does not run repeat the first and go unused.
    k1 = tl.load(od_ptr + t)
    k2 = k1
    k3 = k1
    k4 = k1
    if S >= 2:
        k2 = tl.load(od_ptr + L + t)
    if S >= 4:
        k3 = tl.load(od_ptr + 2 * L + t)
        k4 = tl.load(od_ptr + 3 * L + t)
    return k1, k2, k3, k4


@triton.jit
def _gather(base, k1, k2, k3, k4, stride, kstride, offs_e, me, S: tl.constexpr):
    # The channel rows of the tokens that the program's scans visit (from their packed codes),
    # from per-scan slabs ``kstride`` apart (0 when all scans read one tensor).
    v1 = _row(base, k1 >> 3, stride, offs_e, me)
    v2 = v1
    v3 = v1
    v4 = v1
    if S >= 2:
        v2 = _row(base + kstride, k2 >> 3, stride, offs_e, me)
    if S >= 4:
        v3 = _row(base + 2 * kstride, k3 >> 3, stride, offs_e, me)
        v4 = _row(base + 3 * kstride, k4 >> 3, stride, offs_e, me)
    return v1, v2, v3, v4


@triton.jit
def _shfl_xor(x, m: tl.constexpr):
    # One butterfly shuffle of a float32 tensor across the lanes of a warp.
    bits = tl.inline_asm_elementwise(
        "shfl.sync.bfly.b32 $0, $1, $2, 0x1f, 0xffffffff;", "=r,r,r",
        [x.to(tl.int32, bitcast=True), tl.full(x.shape, m, tl.int32)], dtype=tl.int32,
        is_pure=True, pack=1,
    )  # fmt: skip
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _halve(x, lane, m: tl.constexpr):
    # Lanes whose bit ``m`` is set keep the odd states, the others the even ones, and each adds
    # what its partner across that bit sends: half the values, each summed over twice the lanes.
    a, b = tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))
    hi = (lane & m) != 0
    return tl.where(hi, b, a) + _shfl_xor(tl.where(hi, a, b), m)


@triton.jit
def _lane_sums(x, NP: tl.constexpr):
    """Sum a (32, NP) tile over its 32 lanes (one warp, a channel per lane), NP <= 32.

    A transposed butterfly: each level halves the states a lane holds, so it takes NP - 1 + 5 -
    log2(NP) shuffles where ``tl.sum(axis=0)`` takes 5 per state (80 for NP = 16). Returns
    ``(sums, state, owner)``: lane l holds the total of state ``state[l]``; ``owner`` marks one
    lane per state.
    """
    lane = tl.arange(0, 32)
    lane2 = lane[:, None]
    if NP >= 2:
        x = _halve(x, lane2, 16)
    if NP >= 4:
        x = _halve(x, lane2, 8)
    if NP >= 8:
        x = _halve(x, lane2, 4)
    if NP >= 16:
        x = _halve(x, lane2, 2)
    if NP >= 32:
        x = _halve(x, lane2, 1)
    v = tl.reshape(x, (32,))
    state = tl.zeros((32,), tl.int32)
    owner = lane >= 0
    if NP >= 2:
        state += (lane >> 4) & 1
    else:
        v += _shfl_xor(v, 16)
        owner = owner & ((lane & 16) == 0)
    if NP >= 4:
        state += ((lane >> 3) & 1) * 2
    else:
        v += _shfl_xor(v, 8)
        owner = owner & ((lane & 8) == 0)
    if NP >= 8:
        state += ((lane >> 2) & 1) * 4
    else:
        v += _shfl_xor(v, 4)
        owner = owner & ((lane & 4) == 0)
    if NP >= 16:
        state += ((lane >> 1) & 1) * 8
    else:
        v += _shfl_xor(v, 2)
        owner = owner & ((lane & 2) == 0)
    if NP >= 32:
        state += (lane & 1) * 16
    else:
        v += _shfl_xor(v, 1)
        owner = owner & ((lane & 1) == 0)
    return v, state, owner


@triton.jit
def _store_state_sums(ptr, x, offs_n, NP: tl.constexpr, LANES: tl.constexpr):
    # A step's (BE, NP) tile summed over channels, stored as NP values at ptr.
    if LANES:
        v, state, owner = _lane_sums(x, NP)
        tl.store(ptr + state, v, mask=owner)
    else:
        tl.store(ptr + offs_n, tl.sum(x, axis=0))


@triton.jit
def _zeros4(BE: tl.constexpr, NP: tl.constexpr):
    z = tl.zeros((BE, NP), tl.float32)
    return z, z, z, z


@triton.jit
def _load4(ptr, slab, mask, S: tl.constexpr):
    # The (BE, NP) state tiles of the program's S scans, ``slab`` apart (zeros for the others).
    h1 = tl.load(ptr, mask=mask, other=0.0)
    h2 = tl.zeros_like(h1)
    h3 = h2
    h4 = h2
    if S >= 2:
        h2 = tl.load(ptr + slab, mask=mask, other=0.0)
    if S >= 4:
        h3 = tl.load(ptr + 2 * slab, mask=mask, other=0.0)
        h4 = tl.load(ptr + 3 * slab, mask=mask, other=0.0)
    return h1, h2, h3, h4


@triton.jit
def _store4(ptr, slab, mask, h1, h2, h3, h4, S: tl.constexpr):
    tl.store(ptr, h1, mask=mask)
    if S >= 2:
        tl.store(ptr + slab, h2, mask=mask)
    if S >= 4:
        tl.store(ptr + 2 * slab, h3, mask=mask)
        tl.store(ptr + 3 * slab, h4, mask=mask)


@triton.jit
def _step_rows(bc_t, k0, offs_n, NP: tl.constexpr, S: tl.constexpr):
    # A step's row of C and its rows of B plus the direction offset of the move that arrived,
    # for the program's S scans: one (5, NP) block of the table made by state_params, so that
    # one address serves the five rows.
    Cv = tl.load(bc_t + 4 * NP + offs_n)
    b_k = bc_t + k0 * NP + offs_n
    b1 = tl.load(b_k)
    b2 = b1
    b3 = b1
    b4 = b1
    if S >= 2:
        b2 = tl.load(b_k + NP)
    if S >= 4:
        b3 = tl.load(b_k + 2 * NP)
        b4 = tl.load(b_k + 3 * NP)
    return Cv, b1, b2, b3, b4


@triton.jit
def _fwd_dir(h, dA, dt, uk, bkv, Cv, Dv):
    h = dA * h + bkv[None, :] * (dt * uk)[:, None]
    return h, tl.sum(h * Cv[None, :], axis=1) + Dv * uk


@triton.jit
def _put_row(ptr, tok, E, offs_e, me, v, STORE: tl.constexpr):
    if STORE:
        tl.store(ptr + tok.to(tl.int64) * E + offs_e, v.to(ptr.dtype.element_ty), mask=me)
    else:
        tl.atomic_add(ptr + tok.to(tl.int64) * E + offs_e, v, mask=me, sem="relaxed")


@triton.jit
def _put_rows(out_b, slab, E, offs_e, me, k1, v1, k2, v2, k3, v3, k4, v4,
              S: tl.constexpr, STORE: tl.constexpr):  # fmt: skip
    # A step's writes all come after its loads: the compiler may not move a load above a write
    # to memory that could alias it, so a load behind a write pays its full latency.
    # STORE: each scan writes its own (batch, L, E) slab (each visits every token once), summed
    # afterwards; otherwise the scans add into one buffer with atomics.
    if not STORE:  # one buffer
        slab = 0
    _put_row(out_b, k1, E, offs_e, me, v1, STORE)
    if S >= 2:
        _put_row(out_b + slab, k2, E, offs_e, me, v2, STORE)
    if S >= 4:
        _put_row(out_b + 2 * slab, k3, E, offs_e, me, v3, STORE)
        _put_row(out_b + 3 * slab, k4, E, offs_e, me, v4, STORE)


@triton.jit
def _program(a_ptr, bias_ptr, L, E, T, NP: tl.constexpr, BE: tl.constexpr, S: tl.constexpr):
    """What a scan program (forward or either backward pass) works on, from its ids.

    Program ``i`` along axis 0 takes channel block ``i // (4 // S)`` and the S scans from
    ``k0 = (i % (4 // S)) * S``; axis 1 is the chunk of steps [t0, t1), axis 2 the batch element.
    Returns ``(pid, grp, k0, pc, pb, t0, t1, offs_e, me, offs_n, m2, st, A2, bias)``: the ids,
    the program's channels and mask, its states, the (BE, NP) offsets ``st`` of its state tiles
    and its ``A * log2(e)`` tile and delta bias.
    """
    pid = tl.program_id(0)
    grp = pid % (4 // S)
    pe = pid // (4 // S)
    k0 = grp * S
    pc = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)
    t0 = pc * T
    t1 = tl.minimum(t0 + T, L)
    offs_e = pe * BE + tl.arange(0, BE)
    me = offs_e < E
    offs_n = tl.arange(0, NP)
    m2 = me[:, None] & (offs_n < NP)[None, :]
    # States are stored (NP, E) so that their tiles, like A's, are contiguous along channels:
    # that keeps all NP states of a channel inside one thread.
    st = offs_n[None, :] * E + offs_e[:, None]
    A2 = tl.load(a_ptr + st, mask=m2, other=0.0)  # A * log2(e)
    bias = tl.load(bias_ptr + offs_e, mask=me, other=0.0)
    return pid, grp, k0, pc, pb, t0, t1, offs_e, me, offs_n, m2, st, A2, bias


@triton.jit
def _zz_fwd_kernel(
    u_ptr, dl_ptr, bc_ptr, a_ptr, d_ptr, bias_ptr, od_ptr,
    y_ptr, hin_ptr, hend_ptr, dsum_ptr,
    su_b, su_l, sd_b, sd_l, sb_b, sb_l,
    YSLAB, L, E, T, NCH,
    NP: tl.constexpr, BE: tl.constexpr, S: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_Y: tl.constexpr, WRITE_STATE: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    """Forward over one chunk: outputs (WRITE_Y) and/or the chunk's end state (WRITE_STATE).

    A program runs S of the four scans (S = 1, 2, 4): program ``i`` along axis 0 takes channel
    block ``i // (4 // S)`` and scans from ``(i % (4 // S)) * S``.
    """
    _, _, k0, pc, pb, t0, t1, offs_e, me, offs_n, m2, st, A2, bias = _program(
        a_ptr, bias_ptr, L, E, T, NP, BE, S
    )
    Dv = tl.load(d_ptr + offs_e, mask=me, other=0.0)
    u_b = u_ptr + pb * su_b
    dl_b = dl_ptr + pb * sd_b
    bc_b = bc_ptr + pb * sb_b
    y_b = y_ptr + pb * L * E
    if STORE:  # the program's first scan's slab (atomics add into one buffer)
        y_b += k0 * YSLAB
    od_k = od_ptr + k0 * L
    slab = NP * E
    if HAS_INIT:
        hb = hin_ptr + ((pb * (NCH - 1) + pc - 1) * 4 + k0) * slab + st
        mi = m2 & (pc > 0)
        h1, h2, h3, h4 = _load4(hb, slab, mi, S)
    else:
        h1, h2, h3, h4 = _zeros4(BE, NP)
    dsum = tl.zeros((BE,), tl.float32)

    # Software pipelining by hand: scan codes two steps ahead, rows one step ahead.
    k1, k2, k3, k4 = _codes(od_k, L, t0, S)
    tq = tl.minimum(t0 + 1, t1 - 1)
    q1, q2, q3, q4 = _codes(od_k, L, tq, S)
    x = _row(dl_b, t0, sd_l, offs_e, me)
    u1, u2, u3, u4 = _gather(u_b, k1, k2, k3, k4, su_l, 0, offs_e, me, S)
    for t in range(t0, t1):
        tn = tl.minimum(t + 1, t1 - 1)
        tnn = tl.minimum(t + 2, t1 - 1)
        # The B and C rows are loaded in the step that uses them (prefetching takes 16 registers
        # a row); their latency hides behind the softplus and the exponentials.
        Cc, b1, b2, b3, b4 = _step_rows(bc_b + t * sb_l, k0, offs_n, NP, S)
        x_n = _row(dl_b, tn, sd_l, offs_e, me)
        u1_n, u2_n, u3_n, u4_n = _gather(u_b, q1, q2, q3, q4, su_l, 0, offs_e, me, S)
        r1, r2, r3, r4 = _codes(od_k, L, tnn, S)

        dt = _softplus(x + bias)
        dA = tl.exp2(dt[:, None] * A2)
        h1, y1 = _fwd_dir(h1, dA, dt, u1, b1, Cc, Dv)
        y2 = y1
        y3 = y1
        y4 = y1
        if S >= 2:
            h2, y2 = _fwd_dir(h2, dA, dt, u2, b2, Cc, Dv)
        if S >= 4:
            h3, y3 = _fwd_dir(h3, dA, dt, u3, b3, Cc, Dv)
            h4, y4 = _fwd_dir(h4, dA, dt, u4, b4, Cc, Dv)
        if WRITE_Y:
            _put_rows(y_b, YSLAB, E, offs_e, me,
                      k1 >> 3, y1, k2 >> 3, y2, k3 >> 3, y3, k4 >> 3, y4, S, STORE)  # fmt: skip
        if WRITE_STATE:
            dsum += dt

        x = x_n
        u1 = u1_n
        u2 = u2_n
        u3 = u3_n
        u4 = u4_n
        k1 = q1
        k2 = q2
        k3 = q3
        k4 = q4
        q1 = r1
        q2 = r2
        q3 = r3
        q4 = r4
    if WRITE_STATE:
        hb = hend_ptr + ((pb * NCH + pc) * 4 + k0) * slab + st
        _store4(hb, slab, m2, h1, h2, h3, h4, S)
        # Every program of the channel block sums the same delta: the first one stores it.
        tl.store(dsum_ptr + (pb * NCH + pc) * E + offs_e, dsum, mask=me & (k0 == 0))


@triton.jit
def _zz_carry_kernel(a_ptr, src_ptr, dsum_ptr, dst_ptr, later_ptr, E, NCH,
                     NP: tl.constexpr, BE: tl.constexpr, REVERSE: tl.constexpr):  # fmt: skip
    """Walk the chunks: each one's local result plus the decayed carry of those before it.

    Forward: ``src`` holds each chunk's end state from a zero start; ``dst[c]`` becomes the true
    initial state of chunk ``c + 1``. Reverse: ``src`` holds each chunk's zero-carry
    ``a_t0 * r_t0``; ``dst[c]`` becomes what flows into the last step of chunk ``c`` from the
    chunks after it, and ``later[c]`` the sum of delta after chunk ``c``. Either way the decay
    across a whole chunk is ``exp(A * sum of its delta)``, shared by the four scans.
    """
    pe = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    offs_e = pe * BE + tl.arange(0, BE)
    me = offs_e < E
    offs_n = tl.arange(0, NP)
    m2 = me[:, None] & (offs_n < NP)[None, :]
    slab = NP * E
    st = offs_n[None, :] * E + offs_e[:, None]
    A2 = tl.load(a_ptr + st, mask=m2, other=0.0)
    h1, h2, h3, h4 = _zeros4(BE, NP)
    later = tl.zeros((BE,), tl.float32)
    if REVERSE:
        tl.store(later_ptr + (pb * NCH + NCH - 1) * E + offs_e, later, mask=me)
    for j in range(0, NCH - 1):
        if REVERSE:
            c_src = NCH - 1 - j
            c_dst = NCH - 2 - j
        else:
            c_src = j
            c_dst = j
        ds = tl.load(dsum_ptr + (pb * NCH + c_src) * E + offs_e, mask=me, other=0.0)
        P = tl.exp2(A2 * ds[:, None])
        src = src_ptr + (pb * NCH + c_src) * 4 * slab + st
        h1 = P * h1 + tl.load(src, mask=m2, other=0.0)
        h2 = P * h2 + tl.load(src + slab, mask=m2, other=0.0)
        h3 = P * h3 + tl.load(src + 2 * slab, mask=m2, other=0.0)
        h4 = P * h4 + tl.load(src + 3 * slab, mask=m2, other=0.0)
        dst = dst_ptr + (pb * (NCH - 1) + c_dst) * 4 * slab + st
        _store4(dst, slab, m2, h1, h2, h3, h4, 4)
        if REVERSE:
            later += ds
            tl.store(later_ptr + (pb * NCH + c_dst) * E + offs_e, later, mask=me)


@triton.jit
def _rev_dir(r, a, gk, uk, code, dt, bkv, Cv, W, Usum, gam, acc1, acc2, acc3,
             MAIN: tl.constexpr, DIRS: tl.constexpr):  # fmt: skip
    # r holds a_{t+1} * r_{t+1} on entry (the decay was applied at the end of the later step).
    r = tl.fma(Cv[None, :], gk[:, None], r)
    du = gk  # du (dt * dv) is returned and added to its token after the step's loads
    if MAIN:
        rb = r * bkv[None, :]
        dv = tl.sum(rb, axis=1)
        du = dt * dv
        gam += uk * dv
        # W = sum over the scans of u_k * r_k * Bk_k: psi and dA's r-half need only this sum.
        W = tl.fma(uk[:, None], rb, W)
        duk = (dt * uk)[:, None]
        Usum = tl.fma(r, duk, Usum)
        if DIRS:
            # The code is uniform over the program, so these are cheap branches. Code 4's sum
            # is what is left of the total (the sum of dB over all steps) once codes 0-3 are
            # taken. (A program of one scan stores that scan's dB per step instead.)
            d = code & 7
            if d == 1:
                acc1 = tl.fma(r, duk, acc1)
            elif d == 2:
                acc2 = tl.fma(r, duk, acc2)
            elif d == 3:
                acc3 = tl.fma(r, duk, acc3)
    return r * a, du, W, Usum, gam, acc1, acc2, acc3


@triton.jit
def _zz_bwd_rev_kernel(
    u_ptr, dl_ptr, bc_ptr, a_ptr, bias_ptr, od_ptr, gy_ptr,
    rho_ptr, later_ptr,
    du_ptr, gam_ptr, w_ptr, dbp_ptr, dap_ptr, dirp_ptr, sst_ptr, plocal_ptr, dsum_ptr,
    su_b, su_l, sd_b, sd_l, sb_b, sb_l, sg_b, sg_l, sg_k,
    BATCH, YSLAB, L, E, T, NCH,
    NP: tl.constexpr, BE: tl.constexpr, S: tl.constexpr, HAS_CARRY: tl.constexpr,
    MAIN: tl.constexpr, STORE: tl.constexpr, LANES: tl.constexpr,
):  # fmt: skip
    """Reverse pass over one chunk, for S of the four scans (as in the forward).

    MAIN: gradients (du, d delta's direct part, psi, dB, direction offsets, dA's r-half), each
    a partial sum over the program's scans in its own slab (gam, psi, dA) or row (dB, offsets).
    Otherwise: the chunk's zero-carry ``a_t0 * r_t0`` and summed delta, for the reverse carry.
    """
    pid, grp, k0, pc, pb, t0, t1, offs_e, me, offs_n, m2, st, A2, bias = _program(
        a_ptr, bias_ptr, L, E, T, NP, BE, S
    )  # also the row of the per-program partial sums
    slab = NP * E
    u_b = u_ptr + pb * su_b
    g_b = gy_ptr + pb * sg_b + k0 * sg_k
    dl_b = dl_ptr + pb * sd_b
    bc_b = bc_ptr + pb * sb_b
    du_b = du_ptr + pb * L * E
    if STORE:
        du_b += k0 * YSLAB
    od_k = od_ptr + k0 * L
    if HAS_CARRY:
        rb_ = rho_ptr + ((pb * (NCH - 1) + pc) * 4 + k0) * slab + st
        mr = m2 & (pc < NCH - 1)
        r1, r2, r3, r4 = _load4(rb_, slab, mr, S)
        s_after = tl.load(later_ptr + (pb * NCH + pc) * E + offs_e, mask=me, other=0.0)
    else:
        r1, r2, r3, r4 = _zeros4(BE, NP)
        s_after = tl.zeros((BE,), tl.float32)
    dA_acc, acc1, acc2, acc3 = _zeros4(BE, NP)

    tl0 = t1 - 1
    k1, k2, k3, k4 = _codes(od_k, L, tl0, S)
    tq = tl.maximum(tl0 - 1, t0)
    q1, q2, q3, q4 = _codes(od_k, L, tq, S)
    x = _row(dl_b, tl0, sd_l, offs_e, me)
    g1, g2, g3, g4 = _gather(g_b, k1, k2, k3, k4, sg_l, sg_k, offs_e, me, S)
    if MAIN:
        u1, u2, u3, u4 = _gather(u_b, k1, k2, k3, k4, su_l, 0, offs_e, me, S)
    else:
        u1 = x
        u2 = x
        u3 = x
        u4 = x
    for s in range(0, t1 - t0):
        t = tl0 - s
        tn = tl.maximum(t - 1, t0)
        tnn = tl.maximum(t - 2, t0)
        x_n = _row(dl_b, tn, sd_l, offs_e, me)
        g1_n, g2_n, g3_n, g4_n = _gather(g_b, q1, q2, q3, q4, sg_l, sg_k, offs_e, me, S)
        if MAIN:
            u1_n, u2_n, u3_n, u4_n = _gather(u_b, q1, q2, q3, q4, su_l, 0, offs_e, me, S)
        else:
            u1_n = x_n
            u2_n = x_n
            u3_n = x_n
            u4_n = x_n
        p1, p2, p3, p4 = _codes(od_k, L, tnn, S)

        dt = _softplus(x + bias)
        a = tl.exp2(dt[:, None] * A2)
        Cv, b1, b2, b3, b4 = _step_rows(bc_b + t * sb_l, k0, offs_n, NP, S)
        W = tl.zeros((BE, NP), tl.float32)
        Usum = tl.zeros((BE, NP), tl.float32)
        gam = tl.zeros((BE,), tl.float32)
        r1, du1, W, Usum, gam, acc1, acc2, acc3 = _rev_dir(
            r1, a, g1, u1, k1, dt, b1, Cv, W, Usum, gam, acc1, acc2, acc3,
            MAIN, S > 1,
        )  # fmt: skip
        du2 = du1
        du3 = du1
        du4 = du1
        if S >= 2:
            r2, du2, W, Usum, gam, acc1, acc2, acc3 = _rev_dir(
                r2, a, g2, u2, k2, dt, b2, Cv, W, Usum, gam, acc1, acc2, acc3,
                MAIN, S > 1,
            )  # fmt: skip
        if S >= 4:
            r3, du3, W, Usum, gam, acc1, acc2, acc3 = _rev_dir(
                r3, a, g3, u3, k3, dt, b3, Cv, W, Usum, gam, acc1, acc2, acc3,
                MAIN, S > 1,
            )  # fmt: skip
            r4, du4, W, Usum, gam, acc1, acc2, acc3 = _rev_dir(
                r4, a, g4, u4, k4, dt, b4, Cv, W, Usum, gam, acc1, acc2, acc3,
                MAIN, S > 1,
            )  # fmt: skip
        if MAIN:
            dA_acc = tl.fma((s_after * dt)[:, None], W, dA_acc)
            psi = tl.sum(A2 * W, axis=1)
            _put_rows(du_b, YSLAB, E, offs_e, me,
                      k1 >> 3, du1, k2 >> 3, du2, k3 >> 3, du3, k4 >> 3, du4, S, STORE)  # fmt: skip
            row = grp * YSLAB + (pb * L + t) * E + offs_e
            tl.store(gam_ptr + row, gam, mask=me)
            # psi_t = sum_n A_n r_n d_n over the program's scans (A = A2 * ln 2).
            tl.store(w_ptr + row, psi * dt * LN2, mask=me)
            _store_state_sums(dbp_ptr + ((pid * BATCH + pb) * L + t) * NP, Usum, offs_n, NP, LANES)
        s_after += dt

        x = x_n
        g1 = g1_n
        g2 = g2_n
        g3 = g3_n
        g4 = g4_n
        u1 = u1_n
        u2 = u2_n
        u3 = u3_n
        u4 = u4_n
        k1 = q1
        k2 = q2
        k3 = q3
        k4 = q4
        q1 = p1
        q2 = p2
        q3 = p3
        q4 = p4
    first = k0 == 0  # values the program's scans share: the first program stores them
    if MAIN:
        tl.store(dap_ptr + ((grp * BATCH + pb) * NCH + pc) * slab + st, dA_acc, mask=m2)
        if S > 1:
            dirb = dirp_ptr + ((pb * NCH + pc) * tl.num_programs(0) + pid) * 3 * NP + offs_n
            tl.store(dirb, tl.sum(acc1, axis=0))
            tl.store(dirb + NP, tl.sum(acc2, axis=0))
            tl.store(dirb + 2 * NP, tl.sum(acc3, axis=0))
        tl.store(sst_ptr + (pb * NCH + pc) * E + offs_e, s_after, mask=me & first)
    else:
        pl = plocal_ptr + ((pb * NCH + pc) * 4 + k0) * slab + st
        _store4(pl, slab, m2, r1, r2, r3, r4, S)
        tl.store(dsum_ptr + (pb * NCH + pc) * E + offs_e, s_after, mask=me & first)


@triton.jit
def _fb_dir(h, a, dt, uk, gk, bkv, G):
    h = a * h + bkv[None, :] * (dt * uk)[:, None]
    G += gk[:, None] * h
    return h, G


@triton.jit
def _zz_bwd_fwd_kernel(
    u_ptr, dl_ptr, bc_ptr, a_ptr, bias_ptr, od_ptr, gy_ptr,
    hin_ptr, sst_ptr, phi_ptr, dcp_ptr, dah_ptr,
    su_b, su_l, sd_b, sd_l, sb_b, sb_l, sg_b, sg_l, sg_k,
    BATCH, YSLAB, L, E, T, NCH,
    NP: tl.constexpr, BE: tl.constexpr, S: tl.constexpr, HAS_INIT: tl.constexpr,
    LANES: tl.constexpr,
):  # fmt: skip
    """Forward half of the backward, for S of the four scans: dC, phi and dA's h-half, partial
    sums over the program's scans in its own slab (phi, dA) or row (dC)."""
    pid, grp, k0, pc, pb, t0, t1, offs_e, me, offs_n, m2, st, A2, bias = _program(
        a_ptr, bias_ptr, L, E, T, NP, BE, S
    )
    slab = NP * E
    u_b = u_ptr + pb * su_b
    g_b = gy_ptr + pb * sg_b + k0 * sg_k
    dl_b = dl_ptr + pb * sd_b
    bc_b = bc_ptr + pb * sb_b
    od_k = od_ptr + k0 * L
    if HAS_INIT:
        hb = hin_ptr + ((pb * (NCH - 1) + pc - 1) * 4 + k0) * slab + st
        mi = m2 & (pc > 0)
        h1, h2, h3, h4 = _load4(hb, slab, mi, S)
    else:
        h1, h2, h3, h4 = _zeros4(BE, NP)
    run = tl.load(sst_ptr + (pb * NCH + pc) * E + offs_e, mask=me, other=0.0)
    dA_acc = tl.zeros((BE, NP), tl.float32)

    k1, k2, k3, k4 = _codes(od_k, L, t0, S)
    tq = tl.minimum(t0 + 1, t1 - 1)
    q1, q2, q3, q4 = _codes(od_k, L, tq, S)
    x = _row(dl_b, t0, sd_l, offs_e, me)
    u1, u2, u3, u4 = _gather(u_b, k1, k2, k3, k4, su_l, 0, offs_e, me, S)
    g1, g2, g3, g4 = _gather(g_b, k1, k2, k3, k4, sg_l, sg_k, offs_e, me, S)
    for t in range(t0, t1):
        tn = tl.minimum(t + 1, t1 - 1)
        tnn = tl.minimum(t + 2, t1 - 1)
        x_n = _row(dl_b, tn, sd_l, offs_e, me)
        u1_n, u2_n, u3_n, u4_n = _gather(u_b, q1, q2, q3, q4, su_l, 0, offs_e, me, S)
        g1_n, g2_n, g3_n, g4_n = _gather(g_b, q1, q2, q3, q4, sg_l, sg_k, offs_e, me, S)
        p1, p2, p3, p4 = _codes(od_k, L, tnn, S)

        dt = _softplus(x + bias)
        a = tl.exp2(dt[:, None] * A2)
        Cv, b1, b2, b3, b4 = _step_rows(bc_b + t * sb_l, k0, offs_n, NP, S)
        G = tl.zeros((BE, NP), tl.float32)
        h1, G = _fb_dir(h1, a, dt, u1, g1, b1, G)
        if S >= 2:
            h2, G = _fb_dir(h2, a, dt, u2, g2, b2, G)
        if S >= 4:
            h3, G = _fb_dir(h3, a, dt, u3, g3, b3, G)
            h4, G = _fb_dir(h4, a, dt, u4, g4, b4, G)
        run -= dt  # now the sum of delta after step t
        CG = Cv[None, :] * G
        row = grp * YSLAB + (pb * L + t) * E + offs_e
        tl.store(phi_ptr + row, tl.sum(A2 * CG, axis=1) * LN2, mask=me)
        _store_state_sums(dcp_ptr + ((pid * BATCH + pb) * L + t) * NP, G, offs_n, NP, LANES)
        dA_acc += run[:, None] * CG

        x = x_n
        u1 = u1_n
        u2 = u2_n
        u3 = u3_n
        u4 = u4_n
        g1 = g1_n
        g2 = g2_n
        g3 = g3_n
        g4 = g4_n
        k1 = q1
        k2 = q2
        k3 = q3
        k4 = q4
        q1 = p1
        q2 = p2
        q3 = p3
        q4 = p4
    tl.store(dah_ptr + ((grp * BATCH + pb) * NCH + pc) * slab + st, dA_acc, mask=m2)


@triton.jit
def _visit(t, K: tl.constexpr, H, W, L):
    """Token visited at step ``t`` of scan ``K`` (1..4) and the code of the move that arrived."""
    if K == 1 or K == 3:
        s = t
    else:
        s = L - 1 - t
    if K <= 2:  # snake along rows; scan 2 walks scan 1 backwards
        row = s // W
        col = s % W
        tok = row * W + tl.where(row % 2 == 0, col, W - 1 - col)
    else:  # snake along columns; scan 4 walks scan 3 backwards
        col = s // H
        row = s % H
        tok = tl.where(col % 2 == 0, row, H - 1 - row) * W + col
    # Scan 2 (4) arrives at step t by the reverse of the move by which scan 1 (3) left step s.
    if K == 1:
        code = tl.where(t % W == 0, 4, tl.where((t // W) % 2 == 0, 1, 2))
    elif K == 2:
        code = tl.where((L - t) % W == 0, 3, tl.where(((L - t) // W) % 2 == 0, 2, 1))
    elif K == 3:
        code = tl.where(t % H == 0, 1, tl.where((t // H) % 2 == 0, 4, 3))
    else:
        code = tl.where((L - t) % H == 0, 2, tl.where(((L - t) // H) % 2 == 0, 3, 4))
    code = tl.where(t == 0, 0, code)
    return tok, code


@triton.jit
def _zz_rows_kernel(b_ptr, c_ptr, p_ptr, od_ptr, out_ptr, sb_b, sb_l, sc_b, sc_l, L, N,
                    NP: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    """The scan kernels' per-step rows, (batch, L, 5, NP) float32: B plus the direction offset
    of the move by which scan k arrived (rows 0-3) and C (row 4); states past N are zero."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    pb = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, NP)
    mt = t < L
    m_in = mt[:, None] & (n < N)[None, :]
    m_out = mt[:, None] & (n < NP)[None, :]
    Bv = tl.load(b_ptr + pb * sb_b + t[:, None] * sb_l + n[None, :], mask=m_in, other=0.0)
    Cv = tl.load(c_ptr + pb * sc_b + t[:, None] * sc_l + n[None, :], mask=m_in, other=0.0)
    Bv = Bv.to(tl.float32)
    out = out_ptr + (pb * L + t[:, None]) * (5 * NP) + n[None, :]
    for k in tl.static_range(4):
        code = tl.load(od_ptr + k * L + t, mask=mt, other=0) & 7
        off = tl.load(p_ptr + code[:, None] * NP + n[None, :], mask=m_out, other=0.0)
        tl.store(out + k * NP, Bv + off, mask=m_out)
    tl.store(out + 4 * NP, Cv.to(tl.float32), mask=m_out)


@triton.jit
def _zz_table_kernel(od_ptr, H, W, L, BT: tl.constexpr):
    """The packed ``token << 3 | code`` table of the four scans, (4, L) int32."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    mt = t < L
    tok, code = _visit(t, 1, H, W, L)
    tl.store(od_ptr + t, (tok << 3) | code, mask=mt)
    tok, code = _visit(t, 2, H, W, L)
    tl.store(od_ptr + L + t, (tok << 3) | code, mask=mt)
    tok, code = _visit(t, 3, H, W, L)
    tl.store(od_ptr + 2 * L + t, (tok << 3) | code, mask=mt)
    tok, code = _visit(t, 4, H, W, L)
    tl.store(od_ptr + 3 * L + t, (tok << 3) | code, mask=mt)


# The launchable kernels under public names (the host module and dev/benchmarks/kernel_report.py).
zz_fwd_kernel = _zz_fwd_kernel
zz_carry_kernel = _zz_carry_kernel
zz_bwd_rev_kernel = _zz_bwd_rev_kernel
zz_bwd_fwd_kernel = _zz_bwd_fwd_kernel
zz_rows_kernel = _zz_rows_kernel
zz_table_kernel = _zz_table_kernel
