"""Multi-scale deformable attention: the grid_sample reference against a per-point evaluation."""

import pytest
import torch

from plainmamba.ops import MSDA_SWITCH, ms_deform_attn, ms_deform_attn_ref

SHAPES = [(3, 5), (2, 3), (1, 2)]


def _direct(value, shapes, locations, weights):
    """Bilinear sampling written out point by point (zeros outside), float64, autograd-able."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(batch, queries, heads, dim)
    rows = []
    for b in range(batch):
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = value.new_zeros(dim)
                for lv, (h, w) in enumerate(shapes):
                    for p in range(points):
                        # pixel centres sit at (i + 0.5) / W in normalised coordinates
                        x = locations[b, q, m, lv, p, 0] * w - 0.5
                        y = locations[b, q, m, lv, p, 1] * h - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                wt = (1 - (x - xx).abs()) * (1 - (y - yy).abs())
                                v = value[b, starts[lv] + yy * w + xx, m]
                                acc = acc + weights[b, q, m, lv, p] * wt * v
                per_head.append(acc)
            rows.append(torch.cat(per_head))
    out = torch.stack(rows).view(batch, queries, heads * dim)
    return out


def _inputs(dtype=torch.float64, batch=2, queries=4, heads=2, dim=3, points=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    length = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, length, heads, dim, generator=g, dtype=dtype)
    # include points outside [0, 1] so the zero padding is exercised
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=dtype)
    loc = loc * 1.4 - 0.2
    w = torch.rand(batch, queries, heads, len(SHAPES) * points, generator=g, dtype=dtype)
    w = w.softmax(-1).view(batch, queries, heads, len(SHAPES), points)
    return value, loc, w


def test_ref_matches_direct_values_and_grads():
    value, loc, w = _inputs()
    assert ((loc < 0) | (loc > 1)).any()
    tensors = [t.clone().requires_grad_(True) for t in (value, loc, w)]
    direct = [t.clone().requires_grad_(True) for t in (value, loc, w)]
    out = ms_deform_attn_ref(tensors[0], SHAPES, tensors[1], tensors[2])
    exp = _direct(direct[0], SHAPES, direct[1], direct[2])
    # the reference samples in float32
    torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(exp)
    out.backward(grad_out)
    exp.backward(grad_out)
    for name, a, b in zip(("value", "locations", "weights"), tensors, direct):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=f"grad of {name}")


def test_dispatch_and_dtypes():
    value, loc, w = _inputs(dtype=torch.float32)
    ref = ms_deform_attn_ref(value, SHAPES, loc, w)
    assert torch.equal(ms_deform_attn(value, SHAPES, loc, w), ref)
    assert torch.equal(ms_deform_attn(value, SHAPES, loc, w, impl="ref"), ref)
    half = ms_deform_attn(value.bfloat16(), SHAPES, loc, w)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, rtol=2e-2, atol=2e-2)


def test_bad_inputs_are_named(monkeypatch):
    value, loc, w = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="hold 24 tokens, value has 23"):
        ms_deform_attn(value, SHAPES + [(1, 1)], loc, w)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, SHAPES, loc, w[..., :1])
    with pytest.raises(ValueError, match="choose one of"):
        ms_deform_attn(value, SHAPES, loc, w, impl="cuda-magic")
    monkeypatch.setenv("PLAINMAMBA_MSDA", "nope")
    MSDA_SWITCH.reset()  # the override is read once; reset() reads it again
    try:
        with pytest.raises(ValueError, match=r"\$PLAINMAMBA_MSDA"):
            ms_deform_attn(value, SHAPES, loc, w)
    finally:
        monkeypatch.undo()
        MSDA_SWITCH.reset()
