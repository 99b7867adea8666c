"""Export to TorchScript and ONNX (tools/deploy/export_model.py), checked in a fresh process.

Each task's tiny model is exported once (module fixture) to both formats, with saved weights and a
sample image; one subprocess that imports neither plainmamba nor Detectron2 loads every file
(``torch.jit.load``, ONNX Runtime's CPU provider) and writes its outputs, which are compared here
with the eager model on its default paths.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, run_script
from plainmamba import deploy
from plainmamba.ops import zigzag_scan_ref
from plainmamba.ops.zigzag_scan_chunked import zigzag_scan_chunked

pytest.importorskip("onnx", reason=deploy.INSTALL_HINT)
pytest.importorskip("onnxruntime", reason=deploy.INSTALL_HINT)

TOOL = REPO / "tools" / "deploy" / "export_model.py"
# name: (config, overrides that make it smaller still, trace size H x W, parts)
ADAPTER_2 = [
    "model.backbone.bottom_up.trunk.depth=2",
    "model.backbone.bottom_up.interaction_indexes=[[0,0],[1,1]]",
]
CASES = {
    "cls": ("quickstart/plainmamba_tiny_cls_shapes.py", ["model.backbone.depth=2"], (48, 40), []),
    "seg": (
        "quickstart/upernet_plainmamba_tiny_shapes.py",
        ["model.backbone.depth=2", "model.backbone.out_indices=[0,1]"]
        + ["model.decode_head.in_features=[layer0,layer1]", "model.auxiliary_head=null"],
        (64, 96),
        [],
    ),
    "mask_rcnn": (
        "quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py",
        ADAPTER_2,
        (64, 96),
        ["--parts", "model", "backbone_fpn"],
    ),
    "retinanet": (
        str(REPO / "tests" / "configs" / "retinanet_plainmamba_adapter_tiny.py"),
        ADAPTER_2,
        (64, 96),
        [],
    ),
}
DETECTORS = ("mask_rcnn", "retinanet")
TOLERANCE = 1e-4

# Runs in a fresh interpreter: only torch, torchvision (the traced detectors call its nms and
# roi_align operators), onnx and onnxruntime.
CHECKER = r"""
import json, sys
import numpy as np
import onnx, onnxruntime, torch, torchvision  # noqa: F401
for job in json.load(open(sys.argv[1])):
    image = np.load(job["image"])
    info = {"standalone": not any(m.startswith(("plainmamba", "detectron2")) for m in sys.modules)}
    if job["format"] == "torchscript":
        with torch.no_grad():
            out = torch.jit.load(job["path"])(torch.from_numpy(image))
        out = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
    else:
        proto = onnx.load(job["path"])
        info["domains"] = sorted({n.domain or "ai.onnx" for n in proto.graph.node})
        info["opset"] = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        session = onnxruntime.InferenceSession(job["path"], providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: image})
    np.savez(job["result"], *out)
    json.dump(info, open(job["result"] + ".json", "w"))
"""


def _tool():
    """tools/deploy/export_model.py loaded by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("plainmamba_export_model_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(config: str, overrides):
    from detectron2.config import LazyConfig, instantiate

    from plainmamba import model_zoo
    from plainmamba.engine import apply_overrides

    cfg = LazyConfig.load(config) if os.path.isfile(config) else model_zoo.get_config(config)
    model = instantiate(apply_overrides(cfg, overrides).model).eval()
    with torch.no_grad():
        # Spread the untrained classifiers' scores, so that no two detections tie and the
        # comparison does not hinge on the order of equal scores.
        if hasattr(model, "roi_heads"):
            model.roi_heads.box_predictor.cls_score.weight.mul_(30)
        if hasattr(model, "head") and hasattr(model.head, "cls_score"):
            model.head.cls_score.weight.mul_(30)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per case: the eager model, its sample image, the exported files and their outputs as
    loaded by the fresh-process checker."""
    from PIL import Image

    root = tmp_path_factory.mktemp("deploy")
    tool = _tool()
    results, jobs = {}, []
    for seed, (name, (config, overrides, size, parts)) in enumerate(CASES.items()):
        torch.manual_seed(seed)
        model = _build(config, overrides)
        weights = root / f"{name}.pth"
        torch.save({"model": model.state_dict()}, weights)
        image = deploy.generated_image(*size, seed=seed)
        image_path = root / f"{name}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(image_path)
        np.save(root / f"{name}.npy", image.numpy())
        out_dir = root / name
        args = ["--config-file", config, "--format", "torchscript", "onnx", "--output", out_dir]
        args += [*parts, "--sample-image", image_path]
        args += ["--opts", *overrides, f"train.init_checkpoint={weights}"]
        if name == "cls":
            # Once through the command line, with the tool's own check.
            code, log = run_script([TOOL, *args], root, timeout=300)
        else:
            code, log = tool.main([str(a) for a in args] + ["--no-verify"]), ""
        assert code == 0, log
        manifest = json.loads((out_dir / "export.json").read_text())
        for item in manifest["files"]:
            key = f"{name}:{item['format']}:{item['part']}"
            result = str(root / key.replace(":", "_"))
            jobs.append(dict(item, image=str(root / f"{name}.npy"), result=result))
            results[key] = dict(item, result=result, name=name)
        results[name] = dict(model=model, image=image, log=log, manifest=manifest)
    job_file = root / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    proc = subprocess.run(
        [sys.executable, "-c", CHECKER, str(job_file)],
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


def _check(exported, key):
    item = exported[key]
    case = exported[item["name"]]
    with np.load(item["result"] + ".npz") as data:
        got = [data[f"arr_{i}"] for i in range(len(data.files))]
    want = deploy.eager_outputs(case["model"], case["image"], item["part"])
    diffs = deploy.compare(got, want, item["outputs"])
    assert max(diffs.values()) < TOLERANCE, diffs
    info = json.loads(Path(item["result"] + ".json").read_text())
    assert info["standalone"], "the checker imported plainmamba or detectron2"
    return dict(zip(item["outputs"], got)), info


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_torchscript_matches_eager(exported, name):
    outputs, _ = _check(exported, f"{name}:torchscript:model")
    if name in DETECTORS:
        assert len(outputs["scores"]) > 0, "no detections to compare"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_onnx_matches_eager(exported, name):
    outputs, info = _check(exported, f"{name}:onnx:model")
    # Standard operators only (no custom domain), at the opset the tool promises.
    assert info["domains"] == ["ai.onnx"], info
    assert info["opset"] >= 17
    if name in DETECTORS:
        assert len(outputs["scores"]) > 0, "no detections to compare"
        assert set(outputs) >= {"pred_boxes", "scores", "pred_classes"}
    if name == "mask_rcnn":
        assert outputs["pred_masks"].shape[1:] == (1, 28, 28)


@pytest.mark.slow
def test_onnx_backbone_fpn_matches_eager(exported):
    """``--parts backbone_fpn``: the adapter and FPN alone, image in, p2..p6 out."""
    outputs, info = _check(exported, "mask_rcnn:onnx:backbone_fpn")
    assert info["domains"] == ["ai.onnx"]
    assert sorted(outputs) == ["p2", "p3", "p4", "p5", "p6"]


@pytest.mark.slow
def test_cli_switches_paths_and_checks(exported):
    log = exported["cls"]["log"]
    assert "selective scan -> 'chunked'" in log
    assert log.count(" ok") == 2, log  # model.ts and model.onnx, each checked against eager
    assert {f["format"] for f in exported["cls"]["manifest"]["files"]} == {"torchscript", "onnx"}


# --------------------------------------------------------------------------------------------
# Requests refused before any work: one clear error each, nothing written.
# --------------------------------------------------------------------------------------------


def _refused(tmp_path, capsys, *args):
    out = tmp_path / "out"
    code = _tool().main(["--output", str(out), *map(str, args)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists(), "a refused request wrote files"
    assert err.startswith("error: ") and err.count("error:") == 1, err
    assert "Traceback" not in err
    return err


CLS = CASES["cls"][0]


def test_scripting_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "--config-file", CLS, "--export-method", "scripting")
    assert "scripting is not supported" in err and "--export-method tracing" in err


def test_unknown_format_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "--config-file", CLS, "--format", "caffe2")
    assert "torchscript, onnx" in err


def test_missing_onnx_packages_name_the_install(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    err = _refused(tmp_path, capsys, "--config-file", CLS, "--format", "onnx")
    assert "onnxruntime" in err and "pip install -e .[deploy]" in err


def test_unknown_config_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "--config-file", "quickstart/no_such_model.py")
    assert "no config 'quickstart/no_such_model.py'" in err


def test_config_that_does_not_build_is_refused(tmp_path, capsys):
    err = _refused(tmp_path, capsys, "--config-file", CLS, "--opts", "model.backbone.depth=-1")
    assert "does not build" in err


def test_missing_weights_are_refused(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    err = _refused(
        tmp_path, capsys, "--config-file", CLS, "--opts", f"train.init_checkpoint={missing}"
    )
    assert "does not exist" in err


def test_weights_that_do_not_load_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"backbone.pos_embed": torch.zeros(3)}}, bad)
    err = _refused(tmp_path, capsys, "--config-file", CLS, "--opts", f"train.init_checkpoint={bad}")
    assert "cannot load weights" in err


# --------------------------------------------------------------------------------------------
# The exportable scan path beyond tests/ops/test_zigzag_scan.py's cases.
# --------------------------------------------------------------------------------------------


def test_chunked_scan_survives_strong_decays():
    """Steps that forget the state almost entirely (delta * A down to about -600): the clamped
    factors stay finite and the result still matches the reference."""
    g = torch.Generator().manual_seed(0)
    b, h, w, e, n = 2, 5, 7, 8, 16
    length = h * w
    args = dict(
        u=torch.randn(b, length, e, generator=g),
        delta=torch.randn(b, length, e, generator=g) * 8 + 3,
        A=-torch.exp(torch.randn(e, n, generator=g) + 2.5),
        B=torch.randn(b, length, n, generator=g),
        C=torch.randn(b, length, n, generator=g),
        D=torch.randn(e, generator=g),
        direction_Bs=torch.randn(5, n, generator=g) * 0.1,
        delta_bias=torch.randn(e, generator=g),
        hw=(h, w),
    )
    want = zigzag_scan_ref(**args)
    got = zigzag_scan_chunked(**args)
    assert bool(torch.isfinite(got).all())
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
