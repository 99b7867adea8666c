"""The CPU inference fast paths (fused Numba scan with the gate, folded stem BNs) against the
plain paths."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

from plainmamba.modeling.plainmamba import ConvPatchEmbed, PlainMambaMixer  # noqa: E402
from plainmamba.ops import zigzag_scan_ref  # noqa: E402
from plainmamba.ops.zigzag_scan_numba import zigzag_scan_gated_numba  # noqa: E402


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("batch,h,w,channels", [(1, 14, 14, 384), (2, 5, 7, 72), (1, 3, 1, 16)])
def test_gated_scan_matches_reference(batch, h, w, channels):
    g = torch.Generator().manual_seed(h * 10 + w)
    length, n = h * w, 16
    u = torch.randn(batch, length, channels, generator=g)
    delta = torch.randn(batch, length, channels, generator=g) * 2 - 1
    A = -torch.exp(torch.randn(channels, n, generator=g) * 0.5 + 0.5)
    # B, C and z as the strided slices of the projections' outputs that the mixer passes.
    bc = torch.randn(batch, length, 3 + 2 * n, generator=g)
    B, C = bc[..., 3 : 3 + n], bc[..., 3 + n :]
    z = (torch.randn(batch, length, 2 * channels, generator=g) * 4)[..., channels:]
    D = torch.randn(channels, generator=g)
    dir_B = torch.randn(5, n, generator=g) * 0.1
    bias = torch.randn(channels, generator=g) * 3  # softplus on both branches, large |x| too
    args = (u, delta, A, B, C, D, dir_B, bias, (h, w))
    want = zigzag_scan_ref(*args) * F.silu(z)
    with torch.no_grad():
        got = zigzag_scan_gated_numba(*args, z)
    assert got.shape == want.shape and got.is_contiguous()
    assert rel_err(got, want) < 2e-5


def test_mixer_fast_path_taken_and_equal():
    mixer = PlainMambaMixer(64).eval()
    x = torch.randn(2, 6 * 5, 64)
    with torch.no_grad():
        assert mixer._fused_cpu_inference(x)
        fast = mixer(x, (6, 5))
    assert not mixer._fused_cpu_inference(x)  # autograd on: the plain path
    plain = mixer(x, (6, 5))
    assert rel_err(fast, plain) < 2e-5


@pytest.mark.parametrize("num_convs", [0, 1, 2])
@pytest.mark.parametrize("size", [(224, 224), (33, 50), (7, 8)])
def test_folded_stem_equals_bn_stem(num_convs, size):
    torch.manual_seed(num_convs)
    embed = ConvPatchEmbed(3, 32, num_convs)
    for m in embed.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    x = torch.randn(2, 3, *size)
    embed.train()
    assert not embed._folded_bn(x)
    embed.eval()
    assert embed._folded_bn(x)
    with torch.no_grad():
        folded, hw = embed(x)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        y = embed.stem[2](embed.stem[1](embed.stem[0](x_cl)))
        if embed.convs is not None:
            y = embed.convs(y)
        pad = (0, -y.shape[3] % 8, 0, -y.shape[2] % 8)
        y = embed.projection(F.pad(y, pad))
    assert hw == tuple(y.shape[-2:])
    assert rel_err(folded, y.flatten(2).transpose(1, 2)) < 1e-5


def test_cpu_fast_paths_argument_turns_both_off():
    from plainmamba.modeling import PlainMamba

    model = PlainMamba(embed_dim=32, depth=2, cpu_fast_paths=False).eval()
    x = torch.randn(1, 3, 64, 64)
    tokens = torch.randn(1, 16, 32)
    with torch.no_grad():
        assert not model.patch_embed._folded_bn(x)
        assert not model.layers[0].mamba._fused_cpu_inference(tokens)
        plain = model(x)["layer1"]
        model_fast = PlainMamba(embed_dim=32, depth=2, cpu_fast_paths=True).eval()
        model_fast.load_state_dict(model.state_dict())
        assert model_fast.patch_embed._folded_bn(x)
        assert model_fast.layers[0].mamba._fused_cpu_inference(tokens)
        fast = model_fast(x)["layer1"]
    assert rel_err(fast, plain) < 1e-5
