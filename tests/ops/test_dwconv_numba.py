"""The Numba depthwise 7x7 conv + SiLU for CPU inference against PyTorch's path, when the
dispatcher takes it, and the cache of tensors derived from parameters that CPU inference uses."""

import gc

import pytest
import torch

pytest.importorskip("numba")

import plainmamba.ops.dwconv_numba as dwconv_numba  # noqa: E402
from plainmamba.modeling.plainmamba import PlainMambaMixer  # noqa: E402
from plainmamba.ops import DWCONV_SWITCH, dwconv2d_silu, dwconv2d_silu_ref  # noqa: E402
from plainmamba.ops.derived import _STORE, derived  # noqa: E402
from plainmamba.ops.dwconv_numba import dwconv2d_silu_numba  # noqa: E402
from plainmamba.ops.switch import counting_ops  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the compiled kernel (the dispatcher's choice, seen from inside)."""
    calls = []
    kernel = dwconv_numba._dwconv7_silu

    def counted(*args):
        calls.append(args[5:7])  # the grid
        return kernel(*args)

    monkeypatch.setattr(dwconv_numba, "_dwconv7_silu", counted)
    monkeypatch.delenv("PLAINMAMBA_DWCONV", raising=False)
    DWCONV_SWITCH.reset()
    yield calls
    DWCONV_SWITCH.reset()


# L1's layer; channels that leave a partial block of 16; several row bands and column tiles
# (16 x 26 outputs a job); grids narrower than the kernel.
@pytest.mark.parametrize(
    "batch,h,w,channels",
    [
        (1, 14, 14, 384),
        (2, 13, 29, 40),
        (1, 40, 35, 16),
        (2, 17, 53, 24),
        (3, 1, 1, 8),
        (1, 3, 2, 7),
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_numba_matches_pytorch(batch, h, w, channels, with_bias):
    g = torch.Generator().manual_seed(h * 100 + w + channels)
    # The strided half of in_proj's output, as the mixer passes it.
    x = torch.randn(batch, h * w, 2 * channels, generator=g)[..., :channels]
    weight = torch.randn(channels, 1, 7, 7, generator=g) * 0.2
    bias = torch.randn(channels, generator=g) if with_bias else None
    want = dwconv2d_silu_ref(x, weight, bias, (h, w))
    with torch.no_grad():
        got = dwconv2d_silu_numba(x, weight, bias, (h, w))
    assert got.shape == want.shape and got.is_contiguous()
    assert rel_err(got, want) < 2e-6


def test_dispatcher_takes_numba_only_for_inference(kernel_calls):
    conv = torch.nn.Conv2d(32, 32, 7, padding=3, groups=32)
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        fast = dwconv2d_silu(x, conv.weight, conv.bias, (5, 6))
    assert kernel_calls == [(5, 6)]
    # With autograd, traced or counted: PyTorch's operators, equal results.
    plain = dwconv2d_silu(x, conv.weight, conv.bias, (5, 6))
    assert plain.requires_grad and rel_err(fast, plain) < 2e-6
    with torch.no_grad(), counting_ops():
        dwconv2d_silu(x, conv.weight, conv.bias, (5, 6))
    weight, bias = conv.weight.detach(), conv.bias.detach()
    with torch.no_grad():
        fn = lambda t: dwconv2d_silu(t, weight, bias, (5, 6))  # noqa: E731
        traced = torch.jit.trace(fn, (x,), check_trace=False)
        assert rel_err(traced(x), plain) < 2e-6
        dwconv2d_silu(x.double(), conv.weight.double(), conv.bias.double(), (5, 6))
        dwconv2d_silu(x, conv.weight, conv.bias, (5, 6), impl="ref")
    assert len(kernel_calls) == 1


def test_other_kernel_sizes(kernel_calls):
    conv = torch.nn.Conv2d(16, 16, 5, padding=2, groups=16)
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        out = dwconv2d_silu(x, conv.weight, conv.bias, (3, 4))  # auto: PyTorch's path
        assert rel_err(out, dwconv2d_silu_ref(x, conv.weight, conv.bias, (3, 4))) == 0
        with pytest.raises(ValueError, match="'numba' takes kernel size 7, got 5"):
            dwconv2d_silu(x, conv.weight, conv.bias, (3, 4), impl="numba")
    assert kernel_calls == []


def test_numba_path_rejects_cuda_tensors():
    with pytest.raises(ValueError, match="'numba' runs on cpu tensors"):
        DWCONV_SWITCH.resolve("numba", torch.device("cuda"))


def test_derived_follows_its_source():
    weight = torch.nn.Parameter(torch.randn(4, 3))
    first = derived(weight, "t", lambda w: w.t().contiguous())
    assert derived(weight, "t", lambda w: w.t().contiguous()) is first
    assert not first.requires_grad
    with torch.no_grad():
        weight.mul_(2)  # an optimizer step or load_state_dict writes in place
    again = derived(weight, "t", lambda w: w.t().contiguous())
    assert again is not first and torch.equal(again, weight.detach().t())
    weight.data = torch.zeros(4, 3)  # what module.to(...) does: new data, same counter
    assert derived(weight, "t", lambda w: w.t().contiguous()).abs().sum() == 0
    # A result that also reads another parameter follows that one too.
    other = torch.nn.Parameter(torch.ones(4, 3))
    summed = derived(weight, "sum", lambda w: w + other, other)
    with torch.no_grad():
        other.add_(1)
    assert torch.equal(derived(weight, "sum", lambda w: w + other, other), summed + 1)
    key = id(weight)
    assert key in _STORE
    del weight, first, again
    gc.collect()
    assert key not in _STORE  # the entry went with its source


def test_mixer_inference_sees_new_weights():
    """The cached A and conv taps of CPU inference follow load_state_dict."""
    torch.manual_seed(0)
    mixer = PlainMambaMixer(32).eval()
    other = PlainMambaMixer(32).eval()
    x = torch.randn(1, 20, 32)
    with torch.no_grad():
        mixer(x, (4, 5))
        mixer.load_state_dict(other.state_dict())
        fast = mixer(x, (4, 5))
    plain = other(x, (4, 5))  # autograd on: the plain operators
    assert rel_err(fast, plain) < 2e-5
