"""FLOP counting (plainmamba.analysis, tools/analyze_model.py): published figures, the handles of
the selective scan and the deformable attention, and loud failures when something is missed."""

import json

import pytest
import torch

from helpers import REPO, run_script
from plainmamba import analysis, model_zoo
from plainmamba.modeling import MSDeformAttn, PlainMamba

TOOL = REPO / "tools" / "analyze_model.py"
PUBLISHED_GFLOPS_224 = {
    size: model_zoo.ZOO[f"ImageNet/plainmamba_{size}_300e.py"].published["gflops"]
    for size in ("l1", "l2", "l3")
}
L1 = model_zoo.ZOO["ImageNet/plainmamba_l1_300e.py"]


@pytest.mark.parametrize("size", ["l1", "l2", "l3"])
def test_classifier_flops_at_224_match_published(size):
    model = model_zoo.get(f"ImageNet/plainmamba_{size}_300e.py", device="cpu")
    report = analysis.flop_count(model, analysis.make_inputs(model, 224, 224))
    published = PUBLISHED_GFLOPS_224[size]
    assert abs(report.gflops / published - 1) < 0.10, (size, report.gflops)
    assert report.unsupported == {}
    # The scan is a large share of the total (about a third for L1): it must be there.
    assert report.by_operator["zigzag_scan"] > 0.2 * report.total


def _tiny_trunk(**kw):
    args = dict(embed_dim=32, depth=2, num_stem_convs=0, dwconv_layers=[], d_state=4, expand=2)
    args.update(kw)
    return PlainMamba(**args).eval()


@pytest.mark.parametrize("impl", ["ref", "numba"])
def test_scan_handle_matches_hand_formula(impl):
    trunk = _tiny_trunk(scan_impl=impl)
    x = torch.randn(2, 3, 64, 48)  # a 4 x 3 token grid
    batch, length, channels, states, depth = 2, 12, 64, 4, 2
    released = analysis.flop_count(trunk, x)
    expected = depth * batch * length * 4 * (9 * channels * states + channels)
    assert released.by_operator["zigzag_scan"] == expected
    mac = analysis.flop_count(trunk, x, convention="mac")
    per_step = 4 * (5 * channels * states + 2 * channels) + channels
    assert mac.by_operator["zigzag_scan"] == depth * batch * length * per_step
    # Only the scan's count depends on the convention.
    assert released.total - mac.total == expected - mac.by_operator["zigzag_scan"]


def test_countable_ops_patches_nothing_and_counts_custom_ops():
    import plainmamba.modeling.adapter as adapter_module
    import plainmamba.modeling.plainmamba as trunk_module

    scan, attn = trunk_module.zigzag_scan, adapter_module.ms_deform_attn
    with analysis.countable_ops():
        assert trunk_module.zigzag_scan is scan and adapter_module.ms_deform_attn is attn
        trunk = _tiny_trunk()
        x = torch.randn(1, 3, 32, 32)
        graph = torch.jit.trace(trunk, x, check_trace=False, strict=False).inlined_graph
    kinds = {node.kind() for node in graph.nodes()}
    assert analysis.SCAN_OP in kinds, sorted(kinds)


def test_deformable_attention_handle_matches_hand_formula():
    d_model, levels, heads, points = 16, 2, 2, 3
    attn = MSDeformAttn(d_model, levels, heads, points).eval()
    shapes = [(4, 5), (2, 3)]
    batch, queries, tokens = 1, 7, 4 * 5 + 2 * 3

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, query, ref, value):
            return self.attn(query, ref, value, shapes)

    inputs = (
        torch.randn(batch, queries, d_model),
        torch.rand(batch, queries, levels, 2),
        torch.randn(batch, tokens, d_model),
    )
    report = analysis.flop_count(Wrapper(), inputs)
    head_dim = d_model // heads
    sampling = batch * queries * heads * levels * points * head_dim * 5
    assert report.by_operator["ms_deform_attn"] == sampling
    linear = batch * (
        queries * d_model * heads * levels * points * 2  # sampling offsets
        + queries * d_model * heads * levels * points  # attention weights
        + tokens * d_model * d_model  # value projection
        + queries * d_model * d_model  # output projection
    )
    assert report.total == sampling + linear


def test_scan_that_bypasses_the_handle_fails_loudly(monkeypatch):
    import plainmamba.modeling.plainmamba as trunk_module
    from plainmamba.ops import zigzag_scan_ref

    # A scan that does not go through the dispatcher (here straight to the reference) is
    # invisible to countable_ops.
    monkeypatch.setattr(trunk_module, "zigzag_scan", lambda *a, **k: zigzag_scan_ref(*a[:9]))
    with pytest.raises(RuntimeError, match="no selective scan was counted"):
        analysis.flop_count(_tiny_trunk(), torch.randn(1, 3, 32, 32))


def test_uncounted_operators_are_reported_and_strict_fails():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.linalg.inv(self.fc(x).reshape(-1, 2, 2, 2)[:, 0])

    x = torch.randn(4, 8)
    report = analysis.flop_count(Odd(), x)
    assert report.total == 4 * 8 * 8
    assert "aten::linalg_inv_ex" in report.unsupported or "aten::linalg_inv" in report.unsupported
    with pytest.raises(RuntimeError, match="NOT counted"):
        analysis.flop_count(Odd(), x, strict=True)


@pytest.mark.slow
def test_analyze_model_tool_reports_params_flops_and_activations(tmp_path):
    out = tmp_path / "analysis.json"
    code, log = run_script(
        [
            TOOL,
            "--config-file",
            "ImageNet/plainmamba_l1_300e.py",
            "--tasks",
            "parameter",
            "flop",
            "activation",
            "--json",
            out,
        ],
        tmp_path / "data",
    )
    assert code == 0, log
    result = json.loads(out.read_text())
    assert result["input_size"] == [224, 224] and result["task"] == "classification"
    assert abs(result["backbone_params"] / (L1.measured["params_m"] * 1e6) - 1) < 0.01
    published = L1.published["gflops"]
    assert result["published_gflops"] == published and abs(result["gflops"] / published - 1) < 0.1
    assert result["gflops_by_operator"]["zigzag_scan"] > 0.5
    assert result["activations_m"] > 0 and result["uncounted_operators"] == {}
    assert f"published {published} GFLOPs" in log and "one multiply-add = one flop" in log
