"""The mixer's depthwise convolution: the Triton path against ``F.conv2d``, values and gradients.

Without a GPU the Triton cases run on CPU tensors through Triton's interpreter in a child pytest
(``TRITON_INTERPRET`` must be set before Triton is imported); with one they run compiled.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from plainmamba.ops import depthwise_conv, depthwise_conv_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
_CHILD_ENV = "PLAINMAMBA_DWCONV_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(_CHILD_ENV) == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def old_mixer_conv(xs, conv, hw):
    """The mixer's code before the op existed."""
    batch, length, channels = xs.shape
    img = xs.reshape(batch, hw[0], hw[1], channels).permute(0, 3, 1, 2)
    out = F.silu(conv(img.contiguous(memory_format=torch.channels_last)))
    return out.permute(0, 2, 3, 1).reshape(batch, length, channels)


def test_reference_is_the_mixers_formula_and_validates():
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(12, 12, 5, padding=2, groups=12)
    proj = torch.randn(2, 15, 24, generator=g, requires_grad=True)
    xs = proj[..., :12]
    want = old_mixer_conv(xs, conv, (3, 5))
    got = depthwise_conv(xs, conv.weight, conv.bias, (3, 5), silu=True, impl="auto")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.sum().backward()
    assert proj.grad is not None and proj.grad[..., 12:].abs().sum() == 0
    with pytest.raises(ValueError, match="grid 4x4 holds 16 tokens, sequence has 15"):
        depthwise_conv_ref(xs, conv.weight, conv.bias, (4, 4))
    with pytest.raises(ValueError, match=r"expected a weight of shape \(12, 1, k, k\)"):
        depthwise_conv_ref(xs, torch.zeros(12, 1, 4, 4), None, (3, 5))
    with pytest.raises(ValueError, match="unknown depthwise-conv implementation 'fast'"):
        depthwise_conv(xs, conv.weight, conv.bias, (3, 5), impl="fast")
    if not IN_CHILD:
        with pytest.raises(ValueError, match="runs on cuda tensors, got tensors on cpu"):
            depthwise_conv(xs.detach(), conv.weight, conv.bias, (3, 5), impl="triton")


if not (CUDA or IN_CHILD):

    def test_triton_under_interpreter():
        """The Triton cases of this file, on CPU through the interpreter, in a fresh process."""
        env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        env[_CHILD_ENV] = "1"
        repo = Path(__file__).resolve().parents[1]
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        report = proc.stdout[-6000:] + proc.stderr[-3000:]
        assert proc.returncode == 0, report
        assert " passed" in proc.stdout and "skipped" not in proc.stdout, report

else:
    dt = importlib.import_module("plainmamba.ops.depthwise_conv_triton")
    assert dt.INTERPRETED == (not CUDA)

    def run(impl, proj, channels, weight, bias, hw, silu, gout):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None
                  for t in (proj, weight, bias)]  # fmt: skip
        y = depthwise_conv(leaves[0][..., :channels], leaves[1], leaves[2], hw, silu, impl=impl)
        (y.float() * gout).sum().backward()
        grads = [t.grad if t is not None else None for t in leaves]
        return y.detach(), grads

    @pytest.mark.parametrize(
        "batch,h,w,channels,k,bias",
        [(2, 5, 7, 20, 7, True), (1, 1, 1, 48, 7, True), (2, 3, 1, 20, 3, False),
         (1, 1, 6, 20, 3, True), (1, 4, 4, 70, 5, True)],
    )  # fmt: skip
    def test_matches_conv2d(batch, h, w, channels, k, bias):
        g = torch.Generator().manual_seed(h * 10 + w + k)
        dev = dict(device=DEVICE)
        proj = torch.randn(batch, h * w, 2 * channels, generator=g).to(**dev)
        weight = (torch.randn(channels, 1, k, k, generator=g) * 0.2).to(**dev)
        b = (torch.randn(channels, generator=g) * 0.1).to(**dev) if bias else None
        gout = torch.randn(batch, h * w, channels, generator=g).to(**dev)
        for silu in (False, True):
            want, want_g = run("ref", proj, channels, weight, b, (h, w), silu, gout)
            got, got_g = run("triton", proj, channels, weight, b, (h, w), silu, gout)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for a, e in zip(got_g, want_g):
                if e is not None:
                    torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
            with torch.no_grad():  # inference: SiLU in the kernel's epilogue
                fast = depthwise_conv(proj[..., :channels], weight, b, (h, w), silu, "triton")
            torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-5)

    def test_half_inputs_with_float_weights():
        g = torch.Generator().manual_seed(3)
        proj = torch.randn(2, 20, 64, generator=g).to(DEVICE, torch.bfloat16)
        weight = (torch.randn(32, 1, 7, 7, generator=g) * 0.2).to(DEVICE)
        bias = torch.randn(32, generator=g).to(DEVICE)
        with torch.no_grad():
            got = depthwise_conv(proj[..., :32], weight, bias, (4, 5), True, impl="triton")
            want = depthwise_conv_ref(proj[..., :32].float(), weight, bias, (4, 5), True)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)

    if CUDA:

        def test_compiles_without_graph_breaks():
            conv = torch.nn.Conv2d(64, 64, 7, padding=3, groups=64).cuda()
            x = torch.randn(2, 14 * 14, 128, device="cuda", requires_grad=True)

            def f(t):
                return depthwise_conv(t[..., :64], conv.weight, conv.bias, (14, 14), True) * 2

            compiled = torch.compile(f, fullgraph=True)
            torch.testing.assert_close(compiled(x), f(x), rtol=1e-5, atol=1e-5)
            compiled(x).sum().backward()
            assert x.grad is not None
