"""tools/benchmark.py on the CPU at a tiny size: JSON fields, skipped scan paths, the plot, and
the documented default (PlainMamba-L1 beside DeiT-Tiny)."""

import importlib.util
import json
import sys

import pytest
from PIL import Image

from helpers import REPO, run_script

TOOL = REPO / "tools" / "benchmark.py"
FIELDS = {
    "impl",
    "mode",
    "res",
    "height",
    "width",
    "batch",
    "status",
    "ms_per_iter",
    "images_per_s",
    "peak_mem_mib",
    "base_mem_mib",
}


@pytest.mark.slow
def test_trunk_both_modes_two_paths_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code, log = run_script(
        [
            TOOL,
            "--config-file",
            "ImageNet/plainmamba_l1_300e.py",
            "--opts",
            "model.backbone.depth=4",
            "--model",
            "trunk",
            "--mode",
            "inference",
            "train",
            "--resolutions",
            "64",
            "48x80",
            "--batch-sizes",
            "1",
            "--scan-impl",
            "ref",
            "numba",
            "mamba",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--threads",
            "1",
            "--json",
            out,
            "--plot",
            png,
        ],
        tmp_path / "data",
    )
    assert code == 0, log
    result = json.loads(out.read_text())
    assert result["model"] == "trunk" and result["device"] == "cpu" and result["amp"] == "none"
    assert result["memory"] in ("rss_peak_reset", "ru_maxrss_process_lifetime")
    # mamba-ssm needs CUDA: reported and skipped, not a crash.
    assert [s["impl"] for s in result["skipped"]] == ["mamba"]
    assert "skipped scan path 'mamba'" in log
    rows = result["results"]
    assert len(rows) == 2 * 2 * 2  # modes x resolutions x paths
    seen = {(r["impl"], r["mode"], r["height"], r["width"]) for r in rows}
    assert seen == {
        (impl, mode, h, w)
        for impl in ("ref", "numba")
        for mode in ("inference", "train")
        for h, w in ((64, 64), (48, 80))
    }
    for row in rows:
        assert FIELDS <= row.keys()
        assert row["status"] == "ok", row
        assert row["ms_per_iter"] > 0 and row["batch"] == 1
        assert row["images_per_s"] == pytest.approx(1e3 / row["ms_per_iter"])
        assert row["peak_mem_mib"] >= row["base_mem_mib"] > 0
    assert "ms/iter" in log and "images/s" in log and "peak MiB" in log
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 200


@pytest.mark.slow
def test_default_run_compares_with_deit_tiny(tmp_path):
    out = tmp_path / "bench.json"
    code, log = run_script(
        [TOOL, "--iters", "2", "--warmup", "1", "--threads", "1", "--json", out],
        tmp_path / "data",
    )
    assert code == 0, log
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["results"]}
    assert set(rows) == {"plainmamba[numba]", "deit_tiny_patch16_224"}
    plainmamba = rows["plainmamba[numba]"]
    assert plainmamba["res"] == 224 and plainmamba["mode"] == "inference"
    deit = rows["deit_tiny_patch16_224"]["ms_per_iter"]
    assert plainmamba["ratio_to_deit"] == pytest.approx(plainmamba["ms_per_iter"] / deit)
    assert "vs DeiT-Tiny" in log


def test_resolution_parsing():
    spec = importlib.util.spec_from_file_location("plainmamba_benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert module.parse_resolution("224") == (224, 224)
    assert module.parse_resolution("800x1280") == (800, 1280)
    with pytest.raises(Exception, match="expected N or HxW"):
        module.parse_resolution("big")


def test_compile_modes_parse():
    spec = importlib.util.spec_from_file_location("plainmamba_benchmark_tool2", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    parse = module.get_parser().parse_args
    assert parse([]).compile is None
    assert parse(["--compile"]).compile == "default"
    assert parse(["--compile", "reduce-overhead", "--mode", "train"]).compile == "reduce-overhead"
    with pytest.raises(SystemExit):
        parse(["--compile", "fastest"])


def test_ops_report_names_settings_and_overrides():
    """The report carries the Triton settings in use and the override variables that were set
    when the package was imported (none in this process unless the caller set some)."""
    import torch

    from plainmamba.ops import all_switches, env_overrides, triton_settings

    spec = importlib.util.spec_from_file_location("plainmamba_benchmark_tool3", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    report = module.ops_report(torch.device("cpu"))
    assert report["triton_settings"] == triton_settings("cpu").as_dict()
    expected = {v: s.env_override for v, s in all_switches().items() if s.env_override}
    expected.update(env_overrides())
    assert report["env_overrides"] == expected
    assert set(report["default_paths"]) == {
        "selective-scan",
        "depthwise-conv",
        "deformable-attention",
    }
