"""plainmamba.model_zoo: every config loads and builds, names resolve (also from a regular,
non-editable install), errors name the alternatives, weights load strictly."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from helpers import REPO
from plainmamba import model_zoo
from plainmamba.checkpoint import CheckpointError

CONFIGS = model_zoo.list_configs()
PUBLISHED = {
    "ImageNet": ["plainmamba_l1_300e.py", "plainmamba_l2_300e.py", "plainmamba_l3_300e.py"],
    "COCO": [
        f"{kind}_plainmamba_adapter_l{n}_1x.py"
        for kind in ("mask_rcnn", "retinanet")
        for n in "123"
    ],
    "ADE20K": [f"upernet_plainmamba_l{n}_160k.py" for n in "123"],
}


def test_list_covers_the_published_configs_and_no_building_blocks():
    for folder, names in PUBLISHED.items():
        for name in names:
            assert f"{folder}/{name}" in CONFIGS
    assert not any(c.startswith("common/") for c in CONFIGS)
    on_disk = {
        os.path.relpath(os.path.join(d, f), REPO / "configs")
        for d, _, files in os.walk(REPO / "configs")
        for f in files
        if f.endswith(".py") and "common" not in d
    }
    assert set(CONFIGS) == on_disk
    # Every config with published figures is a real config.
    assert set(model_zoo.ZOO) <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_builds(name):
    cfg = model_zoo.get_config(name)
    assert "model" in cfg
    model = model_zoo.get(name, device="cpu")
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    info = model_zoo.entry(name)
    if info is not None and "params_m" in info.published:
        counted = model.backbone if info.params_of == "backbone" else model
        params = sum(p.numel() for p in counted.parameters()) / 1e6
        # All within 2% of the paper but RetinaNet-L2 (3.2% over, see GETTING_STARTED.md).
        assert abs(params / info.published["params_m"] - 1) < 0.04, (name, params)


def test_config_file_paths_and_prefixes():
    path = model_zoo.get_config_file("configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py")
    assert path == model_zoo.get_config_file("COCO/mask_rcnn_plainmamba_adapter_l1_1x.py")
    assert os.path.isfile(path)
    assert os.path.realpath(path) == str(
        REPO / "configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py"
    )
    assert os.path.dirname(os.path.dirname(path)) == str(model_zoo.configs_root())


def test_unknown_config_lists_close_matches_first():
    with pytest.raises(model_zoo.ConfigNotFoundError) as info:
        model_zoo.get_config("COCO/mask_rcnn_l1.py")
    message = str(info.value)
    close, rest = message.split("Closest matches:")[1].split("Other configs:")
    assert "COCO/mask_rcnn_plainmamba_adapter_l1_1x.py" in close
    assert "ImageNet/plainmamba_l1_300e.py" in rest
    listed = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    assert sorted(listed) == CONFIGS  # every config is named once
    with pytest.raises(model_zoo.ConfigNotFoundError, match="Available configs"):
        model_zoo.get("common/optim.py")  # a building block, not a model


def test_entry_says_where_trained_weights_come_from():
    info = model_zoo.entry("COCO/mask_rcnn_plainmamba_adapter_l2_1x.py")
    assert info.has_trained_weights
    url = (
        "https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/detection/maskrcnn/l2_1x.pth"
    )
    assert url in info.weights_source
    tiny = model_zoo.entry("quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py")
    assert not tiny.has_trained_weights and "make demo" in tiny.weights_source
    with pytest.raises(model_zoo.WeightsNotAvailableError, match="make demo"):
        model_zoo.get("quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py", trained=True)


def test_weights_load_strictly_from_converted_and_released_files(tmp_path):
    name = "quickstart/plainmamba_tiny_cls_shapes.py"
    source = model_zoo.get(name, device="cpu")
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in source.state_dict().items()
    }
    converted = tmp_path / "converted.pth"
    torch.save({"model": state}, converted)
    released = tmp_path / "released.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 300}}, released)  # MMClassification layout
    for path in (converted, released):
        model = model_zoo.get(name, trained=True, weights=str(path))
        assert not model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_zoo.get(name, weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("head.")}}, wrong)
    with pytest.raises(CheckpointError, match="missing in checkpoint"):
        model_zoo.get(name, weights=str(wrong))


def test_configs_resolve_from_a_regular_install(tmp_path):
    """Build a wheel (the configs are package data behind the configs symlink), install it
    unzipped elsewhere, and load a config whose relative imports reach configs/common."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "setup.py", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    shutil.copytree(REPO / "plainmamba", src / "plainmamba", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    assert os.path.islink(src / "plainmamba" / "model_zoo" / "configs")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(target)
    assert "plainmamba/model_zoo/configs/COCO/mask_rcnn_plainmamba_adapter_l1_1x.py" in names
    assert "plainmamba/model_zoo/configs/common/models/plainmamba_adapter.py" in names
    script = (
        "import plainmamba, sys\n"
        "from plainmamba import model_zoo\n"
        "cfg = model_zoo.get_config('COCO/mask_rcnn_plainmamba_adapter_l2_1x.py')\n"
        "print(plainmamba.__file__)\n"
        "print(model_zoo.get_config_file('ADE20K/upernet_plainmamba_l1_160k.py'))\n"
        "print(cfg.model.backbone.bottom_up.trunk.embed_dim, len(model_zoo.list_configs()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    package, config, last = proc.stdout.strip().splitlines()
    assert package.startswith(str(target))
    assert config.startswith(str(target)) and os.path.isfile(config)
    assert last == f"384 {len(CONFIGS)}"
