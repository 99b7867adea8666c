"""The fused Triton scan against the float32 reference: outputs and every gradient.

With a GPU the cases below run compiled, plus cases at the shapes of PlainMamba-L1 and, when
mamba-ssm is installed, against mamba-ssm's kernel. Without one they run on CPU tensors through
Triton's interpreter, in a child pytest: ``TRITON_INTERPRET`` must be set before Triton itself is
imported (its own ``tl.zeros`` and friends are decorated then), which this process may already
have done for other tests.
"""

import importlib

import pytest
import torch

from helpers import in_interpreter_child, run_under_triton_interpreter
from plainmamba.ops import TritonSettings, available_impls, zigzag_scan, zigzag_scan_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
_CHILD_ENV = "PLAINMAMBA_TRITON_INTERPRETER_CHILD"
IN_CHILD = in_interpreter_child(_CHILD_ENV)


def test_settings_reject_bad_values():
    """Malformed tuning is refused when the settings are made, naming the field or the
    environment variable it came from."""
    with pytest.raises(ValueError, match="PLAINMAMBA_TRITON_SCATTER"):
        TritonSettings().with_env({"PLAINMAMBA_TRITON_SCATTER": "scatter"})
    with pytest.raises(ValueError, match="fwd:160"):
        TritonSettings().with_env({"PLAINMAMBA_TRITON_MAXNREG": "fwd:128,bwd:1"})
    settings = TritonSettings().with_env({"PLAINMAMBA_TRITON_MAXNREG": "bf:192"})
    assert settings.max_registers("bf") == 192 and settings.max_registers("fwd") == 160
    with pytest.raises(ValueError, match="PLAINMAMBA_TRITON_SCANS.*rev:2"):
        TritonSettings().with_env({"PLAINMAMBA_TRITON_SCANS": "rev:3"})
    with pytest.raises(ValueError, match="power of two"):
        TritonSettings().with_env({"PLAINMAMBA_TRITON_BLOCK": "48"})
    with pytest.raises(ValueError, match="power of two"):
        TritonSettings(scan_block=48)
    with pytest.raises(ValueError, match="scan_scatter"):
        TritonSettings(scan_scatter="scatter")
    # $..._BLOCK sets both passes unless $..._BLOCK_BWD says otherwise.
    settings = TritonSettings().with_env({"PLAINMAMBA_TRITON_BLOCK": "64"})
    assert settings.block() == settings.block(backward=True) == 64
    settings = TritonSettings().with_env(
        {"PLAINMAMBA_TRITON_BLOCK": "64", "PLAINMAMBA_TRITON_BLOCK_BWD": "16"}
    )
    assert (settings.block(), settings.block(backward=True)) == (64, 16)


if not (CUDA or IN_CHILD):

    @pytest.mark.slow
    def test_kernels_under_triton_interpreter():
        """Every case of this file, on CPU through the interpreter, in a fresh interpreter."""
        run_under_triton_interpreter(__file__, _CHILD_ENV)

else:
    zt = importlib.import_module("plainmamba.ops.zigzag_scan_triton")
    assert zt.INTERPRETED == (not CUDA)

    def make_inputs(batch, h, w, channels, n_state, dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed * 1000 + h * 37 + w)
        length = h * w

        def t(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, generator=g) * scale + shift).to(DEVICE)

        return dict(
            u=t(batch, length, channels).to(dtype),
            delta=t(batch, length, channels, scale=0.5, shift=-1.0).to(dtype),
            A=-torch.exp(t(channels, n_state, scale=0.5, shift=0.5)),
            B=t(batch, length, n_state).to(dtype),
            C=t(batch, length, n_state).to(dtype),
            D=t(channels),
            direction_Bs=t(5, n_state, scale=0.1),
            delta_bias=t(channels, scale=0.3),
            hw=(h, w),
        )

    def run(fn, inputs, grad_out=None, **kwargs):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k != "hw"}
        y = fn(**leaves, hw=inputs["hw"], **kwargs)
        if grad_out is None:
            grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y)
        (y.float() * grad_out.float()).sum().backward()
        return y.detach(), {k: v.grad for k, v in leaves.items()}, grad_out

    def rel_err(a, b):
        a, b = a.double(), b.double()
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    # (batch, h, w, channels, n_state, chunk, block): odd grids, masked channels and states,
    # several channel blocks, and chunked scans whose chunks end mid-row (the last one short).
    CASES = [
        (1, 1, 5, 24, 4, None, 32),
        (2, 3, 1, 24, 5, None, 32),
        (1, 5, 7, 40, 16, None, 16),
        (1, 1, 1, 8, 3, None, 16),
        (1, 6, 7, 24, 5, 8, 16),
        (1, 3, 5, 16, 4, 1, 16),
    ]
    if CUDA:  # the small cases ran on CPU; here one of them and PlainMamba-L1's layer (E = 384,
        # N = 16) at 14x14 (224 px) and chunked at 32x32
        CASES = [
            (2, 5, 7, 40, 16, 8, 16),
            (2, 14, 14, 384, 16, None, 32),
            (1, 32, 32, 384, 16, 96, 32),
        ]

    @pytest.mark.parametrize("batch,h,w,channels,n_state,chunk_len,block", CASES)
    def test_matches_reference_fp32(batch, h, w, channels, n_state, chunk_len, block):
        settings = TritonSettings(scan_chunk=chunk_len, scan_block=block)
        inputs = make_inputs(batch, h, w, channels, n_state)
        y_ref, g_ref, gout = run(zigzag_scan_ref, inputs)
        y, grads, _ = run(zt.zigzag_scan_triton, inputs, gout, settings=settings)
        assert y.dtype == torch.float32
        assert rel_err(y, y_ref) < 1e-5
        for name, ref in g_ref.items():
            assert grads[name].shape == ref.shape, name
            assert rel_err(grads[name], ref) < 2e-4, name

    def test_atomic_scatter_matches_reference():
        """The atomic-add variant of the per-token writes (y, du) gives the same results."""
        settings = TritonSettings(scan_chunk=8, scan_scatter="atomic")
        inputs = make_inputs(2, 5, 7, 40, 16)
        y_ref, g_ref, gout = run(zigzag_scan_ref, inputs)
        y, grads, _ = run(zt.zigzag_scan_triton, inputs, gout, settings=settings)
        assert rel_err(y, y_ref) < 1e-5
        for name, ref in g_ref.items():
            assert rel_err(grads[name], ref) < 2e-4, name

    @pytest.mark.parametrize("scans", ["fwd:1,rev:1,bf:1", "fwd:2,rev:4,bf:1", "fwd:4,rev:2,bf:4"])
    def test_scans_per_program(scans):
        """Programs running 1, 2 or 4 of the scans (and different splits in the two backward
        passes, whose partial sums are kept apart) give the same results, chunked too; the
        settings come from the environment variable's syntax here."""
        settings = TritonSettings(scan_chunk=4).with_env({"PLAINMAMBA_TRITON_SCANS": scans})
        inputs = make_inputs(1, 3, 5, 40, 16)  # 4 chunks (the last short), 2 channel blocks
        y_ref, g_ref, gout = run(zigzag_scan_ref, inputs)
        y, grads, _ = run(zt.zigzag_scan_triton, inputs, gout, settings=settings)
        assert rel_err(y, y_ref) < 1e-5
        for name, ref in g_ref.items():
            assert rel_err(grads[name], ref) < 2e-4, name

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_half_precision_inputs(dtype):
        settings = TritonSettings(scan_chunk=8)  # chunked as well
        inputs = make_inputs(1, 5, 7, 24, 8, dtype=dtype)
        y_ref, g_ref, gout = run(zigzag_scan_ref, inputs)
        y, grads, _ = run(zt.zigzag_scan_triton, inputs, gout, settings=settings)
        assert y.dtype == dtype
        assert rel_err(y, y_ref) < 2e-2
        for name, ref in g_ref.items():
            assert grads[name].dtype == inputs[name].dtype, name
            assert rel_err(grads[name], ref) < 2e-2, name

    def test_inference_and_switch():
        """No-grad calls, and the ``impl="triton"`` switch, give the reference's output."""
        inputs = make_inputs(2, 4, 6, 24, 16)
        with torch.no_grad():
            y_ref = zigzag_scan_ref(**inputs)
            y = zigzag_scan(**inputs, impl="triton")
        assert rel_err(y, y_ref) < 1e-5

    def test_chunk_rule():
        # Batch 128 at 224 px fills an H100 (132 multiprocessors) with one chunk; batch 1 at
        # 1024 px is cut into chunks; the settings can force a length.
        assert zt.plan_chunk(128, 196, 384, 132) == 196
        chunk = zt.plan_chunk(1, 4096, 384, 132)
        assert chunk % 8 == 0 and 32 <= chunk <= 256
        forced = TritonSettings(scan_chunk=24)
        assert zt.chunk_length(1, 4096, 384, torch.device(DEVICE), forced) == 24

    @pytest.mark.parametrize("h,w", [(1, 1), (1, 6), (5, 1), (3, 4), (4, 3), (5, 7), (6, 6)])
    def test_visit_order_matches_scan_orders(h, w):
        """The kernels compute each scan's token and move by integer arithmetic (no cached
        device tables, which CUDA graphs could not replay); they must equal the orders of
        docs/model.md#scan-orders-and-directions."""
        from plainmamba.ops.scan_orders import scan_orders

        orders, _, dirs = scan_orders(h, w, "cpu")
        table = zt.order_table(h, w, torch.device(DEVICE)).cpu()
        assert table.dtype == torch.int32 and tuple(table.shape) == (4, h * w)
        assert torch.equal(table >> 3, orders.to(torch.int32))
        assert torch.equal(table & 7, dirs.to(torch.int32))

    @pytest.mark.parametrize("n_state", [4, 6])
    def test_step_table_rows(n_state):
        """The rows kernel's table: B plus the offset of each scan's arriving move (rows 0-3), C
        (row 4), zero past N; B and C read as strided bf16 views of one x_proj-like output."""
        from plainmamba.ops.scan_orders import scan_orders

        h, w, batch, n_pad = 3, 5, 2, 8 if n_state == 6 else 4
        g = torch.Generator().manual_seed(n_state)
        proj = torch.randn(batch, h * w, 3 + 2 * n_state, generator=g).to(DEVICE, torch.bfloat16)
        B, C = proj[..., 3 : 3 + n_state], proj[..., 3 + n_state :]
        P = torch.randn(5, n_state, generator=g).to(DEVICE)
        A = -torch.ones(7, n_state, device=DEVICE)
        od = zt.order_table(h, w, torch.device(DEVICE))
        a2, table = zt.state_params(A, B, C, P, od, n_pad)
        assert tuple(table.shape) == (batch, h * w, 5, n_pad) and table.dtype == torch.float32
        assert tuple(a2.shape) == (n_pad, 7)
        table = table.cpu()
        _, _, dirs = scan_orders(h, w, "cpu")  # (4, L) move codes
        want_b = B.float().cpu()[:, None] + P.cpu()[dirs.long()]  # (batch, 4, L, N)
        torch.testing.assert_close(table[..., :4, :n_state], want_b.permute(0, 2, 1, 3))
        torch.testing.assert_close(table[..., 4, :n_state], C.float().cpu())
        assert not table[..., n_state:].any()

    def test_compiles_without_graph_breaks():
        """The mixer with the Triton path compiles as one graph (opaque custom op, fake impls)."""
        from plainmamba.modeling.plainmamba import PlainMambaMixer

        torch.manual_seed(0)
        mixer = PlainMambaMixer(16, d_state=4, scan_impl="triton").to(DEVICE)
        x = torch.randn(2, 15, 16, device=DEVICE, requires_grad=True)
        torch._dynamo.reset()
        # Compiled first, so the scan path is resolved while tracing too.
        compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True)
        y1 = compiled(x, (3, 5))
        (g1,) = torch.autograd.grad(y1.square().sum(), x)
        y0 = mixer(x, (3, 5))
        (g0,) = torch.autograd.grad(y0.square().sum(), x)
        assert rel_err(y1, y0) < 1e-6 and rel_err(g1, g0) < 1e-6

    if CUDA:

        def test_cuda_graph_replay():
            """Under torch.compile's CUDA graphs the mixer replays with the same output: nothing
            the scan allocates outlives a call (the earlier cached order table did)."""
            from plainmamba.modeling.plainmamba import PlainMambaMixer

            torch.manual_seed(0)
            mixer = PlainMambaMixer(32, d_state=16, scan_impl="triton").to(DEVICE).eval()
            torch._dynamo.reset()
            compiled = torch.compile(mixer, mode="reduce-overhead")
            with torch.no_grad():
                for seed in range(4):  # warm-up, recording, then replays on new inputs
                    x = torch.randn(2, 35, 32, device=DEVICE, generator=None) + seed
                    y = compiled(x, (5, 7)).clone()
                    assert rel_err(y, mixer(x, (5, 7))) < 1e-5

    def test_custom_op_registration():
        """torch.library's own checks of the schema, fake impl and autograd registration."""
        inputs = make_inputs(1, 2, 3, 16, 4)
        f32 = torch.float32
        args = (
            inputs["u"].requires_grad_(), inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
            inputs["D"].to(f32), inputs["direction_Bs"], inputs["delta_bias"], 2, 3, 6,
            list(zt.scan_tuning(TritonSettings())),
        )  # fmt: skip
        torch.library.opcheck(
            torch.ops.plainmamba.zigzag_scan_fwd.default,
            args,
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )

    if "mamba" in available_impls():

        @pytest.mark.parametrize(
            "batch,h,w,dtype", [(8, 14, 14, torch.float32), (8, 14, 14, torch.bfloat16)]
        )
        def test_agrees_with_mamba_ssm(batch, h, w, dtype):
            """On a GPU with mamba-ssm: same outputs and gradients as the released kernel path."""
            inputs = make_inputs(batch, h, w, 384, 16, dtype=dtype)
            y_m, g_m, gout = run(zigzag_scan, inputs, impl="mamba")
            y_t, g_t, _ = run(zigzag_scan, inputs, gout, impl="triton")
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            assert rel_err(y_t, y_m) < tol
            for name, ref in g_m.items():
                assert rel_err(g_t[name], ref) < 10 * tol, name
