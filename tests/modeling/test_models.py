"""Every published size built from its config; shapes, sizes, gradients and bad input."""

import math

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import Backbone

from helpers import REPO
from plainmamba.model_zoo import ZOO
from plainmamba.modeling import PlainMamba

# Our counts of the released structure (the model zoo's table; the paper rounds them).
COUNTED_PARAMS = {
    n: ZOO[f"ImageNet/plainmamba_l{n}_300e.py"].measured["params_m"] * 1e6 for n in (1, 2, 3)
}


def load_cfg(n):
    return LazyConfig.load(str(REPO / "configs" / "ImageNet" / f"plainmamba_l{n}_300e.py"))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_backbone_parameter_counts(n):
    backbone = instantiate(load_cfg(n).model.backbone)
    count = sum(p.numel() for p in backbone.parameters())
    assert abs(count - COUNTED_PARAMS[n]) < 0.005e6, count


@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_size_runs_on_odd_input(n):
    cfg = load_cfg(n)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 72, 104), dtype=torch.uint8)}])
    assert out[0]["logits"].shape == (1000,)
    assert torch.isfinite(out[0]["logits"]).all()


def small(**kw):
    args = dict(embed_dim=32, depth=4, num_stem_convs=1, dwconv_layers=[0])
    args.update(kw)
    return PlainMamba(**args)


@pytest.mark.parametrize("size", [(16, 16), (100, 130), (161, 97), (288, 352)])
def test_any_input_size(size):
    model = small(out_indices=[1, -1]).eval()
    assert isinstance(model, Backbone)
    with torch.no_grad():
        maps = model(torch.randn(1, 3, *size))
    grid = (math.ceil(math.ceil(size[0] / 2) / 8), math.ceil(math.ceil(size[1] / 2) / 8))
    assert list(maps) == ["layer1", "layer3"]
    for name, spec in model.output_shape().items():
        assert spec.stride == 16 and spec.channels == 32
        assert maps[name].shape == (1, 32, *grid)


def test_position_embedding_resized_bicubic():
    model = small()
    pe = model.position_embedding((10, 6))
    grid = model.pos_embed.reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, (10, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pe, ref.flatten(2).transpose(1, 2))
    assert model.position_embedding((14, 14)) is model.pos_embed


def test_backward_and_drop_path():
    model = small(drop_path_rate=0.3).train()
    assert model.layers[0].drop_path.__class__.__name__ == "Identity"
    assert abs(model.layers[-1].drop_path.drop_prob - 0.3) < 1e-6
    maps = model(torch.randn(2, 3, 64, 80))
    maps["layer3"].square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_taps_have_their_own_norms():
    model = small(out_indices=[0, 2, 3])
    names = {n for n, _ in model.named_children()}
    assert {"norm_layer0", "norm_layer2", "ln1"} <= names and "norm_layer3" not in names


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(1, 3, 15, 64), "smaller than one 16x16 patch"),
        (torch.randn(1, 1, 64, 64), "expected 3 channels, got 1"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.randn(3, 32, 32), r"expected a \(B, 3, H, W\) tensor"),
    ],
)
def test_bad_input_is_named(x, match):
    with pytest.raises(ValueError, match=match):
        small()(x)


def test_bad_out_indices():
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        small(out_indices=[7])


def test_training_after_inference_mode_in_the_same_process():
    """Cached scan orders and reference points made under inference_mode must not poison a later
    backward (they are shared across calls)."""
    from plainmamba.modeling import PlainMamba

    trunk = PlainMamba(embed_dim=32, depth=1, img_size=48, patch_size=16, out_indices=[0])
    x = torch.randn(1, 3, 48, 80)  # a grid no other test uses before this one
    with torch.inference_mode():
        trunk.eval()(x)
    trunk.train()
    out = trunk(x)
    sum(v.sum() for v in out.values()).backward()
    assert trunk.patch_embed.projection.weight.grad is not None


@pytest.mark.parametrize("dim,d_state", [(192, 16), (64, 5)])
def test_padded_projections_change_no_value(dim, d_state):
    """The zero-padded x_proj / dt_proj used on CUDA give the released projections exactly."""
    from plainmamba.modeling.plainmamba import PlainMambaMixer

    mixer = PlainMambaMixer(dim, d_state=d_state)
    xs = torch.randn(2, 10, mixer.d_inner, requires_grad=True)
    plain = mixer.project(xs, pad_rows=False)
    padded = mixer.project(xs, pad_rows=True)
    assert padded[0].shape == (2, 10, mixer.d_inner) and padded[1].shape[-1] == d_state
    for a, b in zip(plain, padded):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    grads = [torch.autograd.grad(sum(t.sum() for t in out), xs) for out in (plain, padded)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(224, 224), (33, 50), (7, 8)])
def test_space_to_depth_stem_is_the_same_conv(size):
    """The CUDA stem's 4x4 conv over 2x2 pixel blocks equals the released 7x7/2 conv."""
    from plainmamba.modeling.plainmamba import ConvPatchEmbed

    embed = ConvPatchEmbed(3, 64)
    x = torch.randn(2, 3, *size, requires_grad=True)
    direct = embed.stem_conv(x, space_to_depth=False)
    folded = embed.stem_conv(x, space_to_depth=True)
    assert folded.shape == direct.shape
    torch.testing.assert_close(folded, direct, rtol=1e-4, atol=1e-4)
    weight = embed.stem[0].weight
    grads = [torch.autograd.grad(out.square().sum(), (x, weight)) for out in (direct, folded)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA paths need a GPU")
def test_cuda_model_matches_cpu():
    """L1 on CUDA (Triton scan and conv, padded projections, space-to-depth stem) against the
    CPU model, float32, outputs and gradients."""
    torch.manual_seed(0)
    cfg = load_cfg(1)
    model = instantiate(cfg.model.backbone).eval()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # exact float32 convs on the GPU too
    x = torch.randn(2, 3, 96, 128)
    out = {}
    for device in ("cpu", "cuda"):
        model.to(device).zero_grad()
        xd = x.detach().to(device).requires_grad_()
        feats = model(xd)
        key = sorted(feats)[-1]
        feats[key].square().mean().backward()
        grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
        out[device] = (feats[key].detach().cpu(), xd.grad.cpu(), grads)
    torch.backends.cudnn.allow_tf32 = tf32
    y_cpu, gx_cpu, g_cpu = out["cpu"]
    y_gpu, gx_gpu, g_gpu = out["cuda"]
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gx_gpu, gx_cpu, rtol=1e-3, atol=1e-4)
    for name, ref in g_cpu.items():
        scale = ref.abs().max().clamp_min(1e-8)
        assert ((g_gpu[name] - ref).abs().max() / scale).item() < 1e-2, name


def test_operator_paths_are_constructor_arguments():
    """scan_impl / dwconv_impl reach every mixer (and set_* changes them at run time);
    msda_impl reaches every deformable attention of the adapter, which can also replace its
    trunk's paths. The paths compute the same outputs."""
    from plainmamba.modeling import MSDeformAttn, PlainMambaAdapter

    torch.manual_seed(0)
    trunk = small(scan_impl="chunked", dwconv_impl="ref", final_norm=False)
    mixers = [layer.mamba for layer in trunk.layers]
    assert {(m.scan_impl, m.dwconv_impl) for m in mixers} == {("chunked", "ref")}
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        chunked = trunk(x)
        trunk.set_scan_impl("ref")
        trunk.set_dwconv_impl("auto")
        assert {(m.scan_impl, m.dwconv_impl) for m in mixers} == {("ref", "auto")}
        reference = trunk(x)
    for name in reference:
        torch.testing.assert_close(chunked[name], reference[name], rtol=1e-4, atol=1e-5)

    adapter = PlainMambaAdapter(
        trunk,
        [[0, trunk.depth - 1]],
        deform_num_heads=2,
        norm="BN",
        msda_impl="ref",
        scan_impl="chunked",
        dwconv_impl="ref",
    )
    attns = [m for m in adapter.modules() if isinstance(m, MSDeformAttn)]
    assert attns and {a.impl for a in attns} == {"ref"}
    assert {(m.scan_impl, m.dwconv_impl) for m in mixers} == {("chunked", "ref")}
    adapter.set_msda_impl("auto")
    assert {a.impl for a in attns} == {"auto"}
    with pytest.raises(ValueError, match="choose one of"):
        PlainMamba(depth=1, embed_dim=32, scan_impl="fastest")(torch.randn(1, 3, 32, 32))
