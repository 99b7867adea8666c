"""The fused depthwise conv + SiLU (Triton) against PyTorch's path, and the switch between them.

With a GPU the kernel cases run compiled, plus PlainMamba-L1's layer shape and torch.compile.
Without one they run on CPU tensors through Triton's interpreter, in a child pytest:
``TRITON_INTERPRET`` must be set before Triton itself is imported, which this process may already
have done for other tests.
"""

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import in_interpreter_child, run_under_triton_interpreter
from plainmamba.ops import (
    DWCONV_ENV_VAR,
    DWCONV_IMPLS,
    DWCONV_SWITCH,
    TritonSettings,
    assume_backends,
    dwconv2d_silu,
    dwconv2d_silu_ref,
    resolve_dwconv_impl,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
_CHILD_ENV = "PLAINMAMBA_DWCONV_INTERPRETER_CHILD"
IN_CHILD = in_interpreter_child(_CHILD_ENV)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def fresh_switch(monkeypatch):
    """The switch without its environment override and cached choices (read again afterwards),
    so it is asked again."""
    monkeypatch.delenv(DWCONV_ENV_VAR, raising=False)
    DWCONV_SWITCH.reset()
    yield monkeypatch
    monkeypatch.undo()
    DWCONV_SWITCH.reset()


# ------------------------------------------------------------------------------------------
# The switch and argument checks: cheap, run in every process.
# ------------------------------------------------------------------------------------------


def test_unknown_impl_is_rejected(fresh_switch):
    x, w = torch.randn(1, 4, 8), torch.randn(8, 1, 3, 3)
    with pytest.raises(ValueError, match="auto, ref, triton, numba"):
        dwconv2d_silu(x, w, None, (2, 2), impl="cudnn")
    # The override is read once; reset() reads it again.
    fresh_switch.setenv(DWCONV_ENV_VAR, "fast")
    DWCONV_SWITCH.reset()
    with pytest.raises(ValueError, match=r"\$PLAINMAMBA_DWCONV"):
        dwconv2d_silu(x, w, None, (2, 2))
    assert DWCONV_IMPLS == ("auto", "ref", "triton", "numba")


def test_triton_on_cpu_needs_the_interpreter(fresh_switch):
    x, w = torch.randn(1, 4, 8), torch.randn(8, 1, 3, 3)
    with assume_backends(triton=True, triton_interpreter=False):
        with pytest.raises(ValueError, match="got tensors on cpu"):
            dwconv2d_silu(x, w, None, (2, 2), impl="triton")
        assert resolve_dwconv_impl("auto", torch.device("cpu")) == "numba"
    with assume_backends(triton=True, triton_interpreter=False, numba=False):
        assert resolve_dwconv_impl("auto", torch.device("cpu")) == "ref"


def test_triton_missing_gives_install_hint(fresh_switch):
    with assume_backends(triton=False, triton_interpreter=False):
        with pytest.raises(RuntimeError, match="pip install triton"):
            resolve_dwconv_impl("triton", torch.device("cuda"))
        assert resolve_dwconv_impl("auto", torch.device("cuda")) == "ref"


def test_bad_arguments_are_named():
    x = torch.randn(2, 12, 8)
    with pytest.raises(ValueError, match="grid 3x5 holds 15 tokens, sequence has 12"):
        dwconv2d_silu(x, torch.randn(8, 1, 3, 3), None, (3, 5))
    with pytest.raises(ValueError, match="got 4"):
        dwconv2d_silu(x, torch.randn(8, 1, 4, 4), None, (3, 4))
    with pytest.raises(ValueError, match=r"\(8, 1, k, k\).*got \(6, 1, 3, 3\)"):
        dwconv2d_silu(x, torch.randn(6, 1, 3, 3), None, (3, 4))
    with pytest.raises(ValueError, match="grid 3x5"):
        dwconv2d_silu_ref(x, torch.randn(8, 1, 3, 3), None, (3, 5))


if not IN_CHILD:

    def test_auto_on_cpu_is_the_mixers_old_formula(fresh_switch):
        """With autograd, ``auto`` on CPU is PyTorch's path: the mixer's former lines, bit for
        bit, with grads (the Numba kernel is for inference)."""
        batch, (h, w), e = 2, (3, 5), 16
        conv = nn.Conv2d(e, e, 7, padding=3, groups=e, bias=True)
        full = torch.randn(batch, h * w, 2 * e, requires_grad=True)
        xs = full.chunk(2, dim=-1)[0]
        old = xs.reshape(batch, h, w, e).permute(0, 3, 1, 2)
        old = F.silu(conv(old.contiguous(memory_format=torch.channels_last)))
        old = old.permute(0, 2, 3, 1).reshape(batch, h * w, e)
        new = dwconv2d_silu(xs, conv.weight, conv.bias, (h, w), impl="auto")
        assert new.shape == (batch, h * w, e)
        assert torch.equal(new, old)
        g_old = torch.autograd.grad(old.square().sum(), [full, conv.weight, conv.bias])
        g_new = torch.autograd.grad(new.square().sum(), [full, conv.weight, conv.bias])
        for a, b in zip(g_new, g_old):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# The Triton kernels: compiled on a GPU, else interpreted in a child process.
# ------------------------------------------------------------------------------------------

if not (CUDA or IN_CHILD):

    @pytest.mark.slow
    def test_kernels_under_triton_interpreter():
        """Every case of this file, on CPU through the interpreter, in a fresh interpreter."""
        run_under_triton_interpreter(__file__, _CHILD_ENV)

else:
    dt = importlib.import_module("plainmamba.ops.dwconv_triton")
    assert dt.INTERPRETED == (not CUDA)

    def make_inputs(batch, h, w, channels, k, bias=True, dtype=torch.float32, seed=0):
        """x as the first half of a (B, L, 2E) tensor (row stride 2E), weight (E, 1, k, k)."""
        g = torch.Generator().manual_seed(seed * 1000 + h * 37 + w + k)
        full = torch.randn(batch, h * w, 2 * channels, generator=g).to(DEVICE, dtype)
        weight = (torch.randn(channels, 1, k, k, generator=g) / k).to(DEVICE)
        b = torch.randn(channels, generator=g).to(DEVICE) if bias else None
        return full, weight, b

    def run(impl, full, weight, bias, hw, grad_out=None, dtype=None, settings=None):
        """Output and gradients (full input, weight, bias) of one path; ``dtype`` casts all
        leaves first (the float64 oracle); ``settings`` tunes the Triton path."""
        leaves = [t.detach().clone() for t in (full, weight, bias) if t is not None]
        if dtype is not None:
            leaves = [t.to(dtype) for t in leaves]
        for t in leaves:
            t.requires_grad_()
        full_, weight_ = leaves[0], leaves[1]
        bias_ = leaves[2] if bias is not None else None
        x = full_.chunk(2, dim=-1)[0]
        assert not x.is_contiguous() or x.shape[0] * x.shape[1] == 1
        y = dwconv2d_silu(x, weight_, bias_, hw, impl=impl, triton_settings=settings)
        if grad_out is None:
            gen = torch.Generator().manual_seed(7)
            grad_out = torch.randn(y.shape, generator=gen).to(DEVICE)
        grads = torch.autograd.grad((y.double() * grad_out.double()).sum(), leaves)
        return y.detach(), grads, grad_out

    # (batch, h, w, channels, k, bias, tile, images per weight-gradient program): odd grids and
    # single rows/columns (most taps out of range), channels not a multiple of the block, several
    # row, column and channel blocks, last blocks partly outside the grid, k = 3, 5, 7 and 9.
    CASES = [
        (2, 5, 7, 20, 7, True, None, None),
        (1, 1, 1, 48, 3, True, None, None),
        (1, 3, 1, 20, 7, False, (2, 1, 16), 1),
        (2, 1, 6, 48, 3, True, (1, 4, 32), 1),
        (1, 4, 4, 20, 3, False, (3, 2, 16), None),
        (3, 3, 4, 16, 7, True, (2, 4, 16), 2),
        (1, 6, 9, 16, 5, True, (4, 8, 16), None),
        (1, 3, 10, 16, 9, True, None, None),
    ]
    if CUDA:  # also PlainMamba-L1's layer (E = 384, k = 7) at 14x14 and a wide detection grid
        CASES += [(8, 14, 14, 384, 7, True, None, None), (1, 24, 40, 96, 7, True, None, None)]

    @pytest.mark.parametrize("batch,h,w,channels,k,bias,block,chunk", CASES)
    def test_matches_reference_fp32(batch, h, w, channels, k, bias, block, chunk):
        # The kernels' (rows, columns, channels) tile and the images per weight-gradient
        # program (None: the automatic choice).
        settings = TritonSettings(dwconv_tile=block, dwconv_wgrad_images=chunk)
        full, weight, b = make_inputs(batch, h, w, channels, k, bias)
        y_ref, g_ref, gout = run("ref", full, weight, b, (h, w), dtype=torch.float64)
        y, grads, _ = run("triton", full, weight, b, (h, w), gout, settings=settings)
        assert y.dtype == torch.float32 and y.shape == (batch, h * w, channels)
        assert y.is_contiguous()
        assert rel_err(y, y_ref) < 1e-5
        assert len(grads) == len(g_ref) == (3 if bias else 2)
        for name, got, ref in zip(("x", "weight", "bias"), grads, g_ref):
            assert got.shape == ref.shape and got.dtype == torch.float32, name
            assert rel_err(got, ref) < 1e-5, name

    def test_bf16_input_with_fp32_parameters():
        """The mixer under bf16 autocast: x arrives in bf16, weight and bias stay float32."""
        batch, h, w, channels, k = 2, 5, 7, 48, 7
        full, weight, b = make_inputs(batch, h, w, channels, k, dtype=torch.bfloat16)
        y_ref, g_ref, gout = run("ref", full, weight, b, (h, w), dtype=torch.float64)
        y, grads, _ = run("triton", full, weight, b, (h, w), gout)
        assert y.dtype == torch.bfloat16
        assert rel_err(y, y_ref) < 1e-2
        for name, got, ref, dtype in zip(("x", "weight", "bias"), grads, g_ref,
                                         (torch.bfloat16, torch.float32, torch.float32)):  # fmt: skip
            assert got.dtype == dtype, name
            assert rel_err(got, ref) < 2e-2, name

    def test_inference_and_partial_grads():
        """No-grad calls save nothing and match; only weights needing grads skips dx."""
        full, weight, b = make_inputs(1, 3, 4, 20, 3)
        x = full.chunk(2, dim=-1)[0]
        with torch.no_grad():
            y = dwconv2d_silu(x, weight, b, (3, 4), impl="triton")
        assert rel_err(y, dwconv2d_silu_ref(x, weight, b, (3, 4))) < 1e-5
        w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
        (gw,) = torch.autograd.grad(dwconv2d_silu(x, w1, b, (3, 4), impl="triton").sum(), [w1])
        (gr,) = torch.autograd.grad(dwconv2d_silu_ref(x, w2, b, (3, 4)).sum(), [w2])
        assert rel_err(gw, gr) < 1e-5

    def test_tiling_rule():
        # 14x14 (224 px): two blocks of 7 rows, 16 columns (14 used), 64 channels, 4 warps.
        assert dt.conv_tiling(14, 14, 384) == (7, 16, 64, 2, 1, 4)
        assert dt.conv_tiling(64, 64, 384) == (8, 32, 32, 8, 2, 4)
        assert dt.conv_tiling(1, 1, 8) == (1, 1, 64, 1, 1, 1)
        assert dt.conv_tiling(14, 14, 384, wgrad=True) == (7, 8, 64, 2, 2, 2)
        assert dt.conv_tiling(14, 14, 384, tile=(2, 4, 16)) == (2, 4, 16, 7, 4, 1)
        # An H100's 132 multiprocessors, batch 128 at 14x14: 8 images per gradient program.
        assert dt.wgrad_images(128, 2 * 2 * 6, 132) == 8
        assert dt.wgrad_images(128, 2 * 2 * 6, 132, forced=3) == 3
        with pytest.raises(ValueError, match="rows,columns,channels"):
            TritonSettings().with_env({"PLAINMAMBA_DWCONV_BLOCK": "9,16,64"})
        with pytest.raises(ValueError, match="dwconv_tile"):
            TritonSettings(dwconv_tile=(9, 16, 64))

    def test_kernel_size_limit(fresh_switch):
        """Past the Triton path's largest kernel, ``auto`` takes PyTorch's path; asking for
        ``triton`` by name is an error."""
        x, w = torch.randn(1, 12, 8, device=DEVICE), torch.randn(8, 1, 11, 11, device=DEVICE)
        with pytest.raises(ValueError, match="up to 9, got 11"):
            dwconv2d_silu(x, w, None, (3, 4), impl="triton")
        if CUDA:
            y = dwconv2d_silu(x, w, None, (3, 4), impl="auto")
            assert rel_err(y, dwconv2d_silu_ref(x, w, None, (3, 4))) < 1e-6

    def test_custom_op_registration():
        """torch.library's own checks of the schemas, fake impls and autograd registration."""
        full, weight, b = make_inputs(1, 2, 3, 16, 3)
        x = full.chunk(2, dim=-1)[0].requires_grad_()
        w_t = weight.reshape(16, 9).t().contiguous().requires_grad_()
        torch.library.opcheck(
            torch.ops.plainmamba.dwconv2d_silu_fwd.default,
            (x, w_t, b, 2, 3, 3, True, dt.dwconv_tuning(TritonSettings())),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )

    def test_compiles_with_aot_eager(fresh_switch):
        """The op and the switch trace as one graph (fake impls, autograd registration, the
        switch's constant resolution), forward and backward, on any device."""
        full, weight, b = make_inputs(1, 3, 4, 16, 3)
        full.requires_grad_()

        def f(full, weight, b):
            xs, z = full.chunk(2, dim=-1)
            return dwconv2d_silu(xs, weight, b, (3, 4), impl="triton") * F.silu(z)

        torch._dynamo.reset()
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        y1 = compiled(full, weight, b)
        (g1,) = torch.autograd.grad(y1.square().sum(), full)
        y0 = f(full, weight, b)
        (g0,) = torch.autograd.grad(y0.square().sum(), full)
        assert rel_err(y1, y0) < 1e-6 and rel_err(g1, g0) < 1e-6

    if CUDA:

        def test_compiles_without_graph_breaks():
            """A small function around the op compiles as one graph, forward and backward."""
            full, weight, b = make_inputs(2, 5, 7, 64, 7)
            full.requires_grad_()

            def f(full, weight, b):
                xs, z = full.chunk(2, dim=-1)
                return dwconv2d_silu(xs, weight, b, (5, 7)) * F.silu(z)

            torch._dynamo.reset()
            compiled = torch.compile(f, fullgraph=True)
            y1 = compiled(full, weight, b)
            (g1,) = torch.autograd.grad(y1.square().sum(), full)
            y0 = f(full, weight, b)
            (g0,) = torch.autograd.grad(y0.square().sum(), full)
            assert rel_err(y1, y0) < 1e-6 and rel_err(g1, g0) < 1e-6

        def test_cuda_graph_replay():
            """Under torch.compile's CUDA graphs the op replays with fresh inputs."""
            _, weight, b = make_inputs(2, 5, 7, 64, 7)

            def f(x):
                return dwconv2d_silu(x, weight, b, (5, 7))

            torch._dynamo.reset()
            compiled = torch.compile(f, mode="reduce-overhead")
            with torch.no_grad():
                for seed in range(4):  # warm-up, recording, then replays on new inputs
                    x = torch.randn(2, 35, 64, device=DEVICE) + seed
                    y = compiled(x).clone()
                    assert rel_err(y, dwconv2d_silu_ref(x, weight, b, (5, 7))) < 1e-5
