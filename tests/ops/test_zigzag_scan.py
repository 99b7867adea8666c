"""Every available scan path against the float32 reference: outputs and gradients."""

import warnings
import pytest
import torch

from plainmamba.ops import (
    SCAN_SWITCH,
    assume_backends,
    available_impls,
    resolve_impl,
    zigzag_scan,
    zigzag_scan_ref,
)

FAST = [name for name in available_impls() if name != "ref"]
DEVICE = {"numba": "cpu", "mamba": "cuda", "triton": "cuda", "chunked": "cpu"}


def make_inputs(batch, h, w, channels=24, n_state=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(h * 100 + w)
    length = h * w

    def t(*shape, scale=1.0, shift=0.0):
        x = torch.randn(*shape, generator=g) * scale + shift
        return x.to(device)

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


def run(inputs, impl, grad_out=None):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k != "hw"}
    y = zigzag_scan(**leaves, hw=inputs["hw"], impl=impl)
    if grad_out is None:
        grad_out = torch.randn_like(y, dtype=torch.float32).to(y.dtype)
    (y.float() * grad_out.float()).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}, grad_out


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


GRIDS = [(1, 1, 13), (2, 11, 1), (2, 7, 9), (1, 9, 13)]  # 9x13 crosses backward chunk borders


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("batch,h,w", GRIDS)
def test_fast_path_matches_reference_fp32(impl, batch, h, w):
    inputs = make_inputs(batch, h, w, device=DEVICE[impl])
    y_ref, g_ref, gout = run(inputs, "ref")
    y, grads, _ = run(inputs, impl, gout)
    assert rel_err(y, y_ref) < 1e-5
    for name in g_ref:
        assert rel_err(grads[name], g_ref[name]) < 1e-4, name


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("batch,h,w", GRIDS)
def test_fast_inference_matches_reference(impl, batch, h, w):
    inputs = make_inputs(batch, h, w, channels=40, device=DEVICE[impl])
    with torch.no_grad():
        y_ref = zigzag_scan(**inputs, impl="ref")
        y = zigzag_scan(**inputs, impl=impl)
    assert rel_err(y, y_ref) < 1e-5


@pytest.mark.parametrize("impl", FAST)
def test_fast_path_matches_reference_bf16(impl):
    inputs = make_inputs(2, 7, 9, dtype=torch.bfloat16, device=DEVICE[impl])
    y_ref, g_ref, gout = run(inputs, "ref")
    y, grads, _ = run(inputs, impl, gout)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 2e-2
    for name in g_ref:
        assert grads[name].dtype == inputs[name].dtype
        assert rel_err(grads[name], g_ref[name]) < 2e-2, name


def test_reference_recurrence_by_hand():
    """One channel, one state, 1x3 grid: the recurrence written out.

    See docs/model.md#the-selective-scan."""
    u = torch.tensor([[[1.0], [2.0], [3.0]]])
    raw = torch.tensor([[[0.1], [0.2], [0.3]]])
    bias = torch.tensor([0.05])
    A = torch.tensor([[-0.7]])
    B = torch.tensor([[[0.5], [-1.0], [2.0]]])
    C = torch.tensor([[[1.5], [0.5], [-0.25]]])
    D = torch.tensor([0.3])
    dB = torch.tensor([[0.01], [0.02], [0.03], [0.04], [0.05]])
    y = zigzag_scan_ref(u, raw, A, B, C, D, dB, bias, (1, 3))
    delta = torch.nn.functional.softplus(raw[0, :, 0] + bias)
    expected = torch.zeros(3)
    # Orders on a 1x3 grid: 1 and 3 walk right, 2 and 4 walk left.
    for order, dirs in (([0, 1, 2], [0, 1, 1]), ([2, 1, 0], [0, 2, 2])) * 2:
        h = 0.0
        for t, (i, d) in enumerate(zip(order, dirs)):
            h = torch.exp(delta[t] * A[0, 0]) * h + delta[t] * (B[0, t, 0] + dB[d, 0]) * u[0, i, 0]
            expected[i] += h * C[0, t, 0] + D[0] * u[0, i, 0]
    torch.testing.assert_close(y[0, :, 0], expected, rtol=1e-6, atol=1e-6)


def test_grid_must_match_length():
    inputs = make_inputs(1, 3, 4)
    inputs["hw"] = (4, 4)
    with pytest.raises(ValueError, match="4x4 holds 16 tokens, sequence has 12"):
        zigzag_scan(**inputs, impl="ref")


def test_unknown_impl_is_named():
    with pytest.raises(ValueError, match="'fastest'.*auto, ref, numba, mamba"):
        resolve_impl("fastest", torch.device("cpu"))


@pytest.fixture
def scan_env(monkeypatch):
    """Set ``$PLAINMAMBA_SCAN`` and have the switch read it again (it reads it once, at import);
    the switch reads the real environment again afterwards."""

    def set_override(value):
        if value is None:
            monkeypatch.delenv("PLAINMAMBA_SCAN", raising=False)
        else:
            monkeypatch.setenv("PLAINMAMBA_SCAN", value)
        SCAN_SWITCH.reset()

    yield set_override
    monkeypatch.undo()
    SCAN_SWITCH.reset()


def test_env_switch(scan_env):
    scan_env("ref")
    assert resolve_impl(None, torch.device("cpu")) == "ref"
    assert resolve_impl("numba", torch.device("cpu")) == "numba"  # the argument wins
    scan_env("bogus")
    with pytest.raises(ValueError, match=r"\$PLAINMAMBA_SCAN"):
        resolve_impl(None, torch.device("cpu"))


def test_env_override_is_read_once(monkeypatch):
    monkeypatch.setenv("PLAINMAMBA_SCAN", "bogus")  # after import: no effect until reset()
    assert resolve_impl(None, torch.device("cpu")) == SCAN_SWITCH.resolve(None, "cpu")
    assert SCAN_SWITCH.env_override != "bogus"


def test_auto_prefers_numba_on_cpu(scan_env):
    scan_env(None)
    assert resolve_impl(None, torch.device("cpu")) == "numba"


def test_switch_without_numba_falls_back_to_ref(scan_env):
    scan_env(None)
    with assume_backends(numba=False):
        with warnings.catch_warnings():  # it warns once per process
            warnings.simplefilter("ignore")
            assert resolve_impl("auto", torch.device("cpu")) == "ref"
        with pytest.raises(RuntimeError, match="pip install numba"):
            resolve_impl("numba", torch.device("cpu"))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_missing_mamba_gives_install_hint():
    with pytest.raises(RuntimeError, match="pip install mamba-ssm"):
        resolve_impl("mamba", torch.device("cpu"))


def test_numba_refuses_cuda_device():
    with pytest.raises(ValueError, match="runs on cpu tensors"):
        resolve_impl("numba", torch.device("cuda"))


def test_no_grad_with_leaf_parameters():
    """Leaves that require grad, called under no_grad (an eval loop over a trained model)."""
    inputs = make_inputs(1, 5, 6)
    leaves = {k: v.requires_grad_() for k, v in inputs.items() if k != "hw"}
    with torch.no_grad():
        y = zigzag_scan(**leaves, hw=(5, 6), impl="numba")
        y_ref = zigzag_scan(**leaves, hw=(5, 6), impl="ref")
    assert rel_err(y, y_ref) < 1e-5
