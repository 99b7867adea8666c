"""Released classification checkpoints convert, load strictly, and fail loudly when they don't fit."""

import json
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from helpers import REPO
from plainmamba.checkpoint import (
    CheckpointError,
    PlainMambaCheckpointer,
    check_state_dict,
    convert_official_classification,
    infer_arch,
)


def fake_release(keys, seed=0, ema=False):
    """A released-format checkpoint with every key and shape of ``keys`` and random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        else:
            state[name] = torch.randn(*shape, generator=g)
    ckpt = {"state_dict": dict(state), "meta": {"epoch": 300}}
    if ema:
        for name, value in state.items():
            if value.is_floating_point():
                ckpt["state_dict"]["ema_" + name.replace(".", "_")] = value + 1.0
    return ckpt


@pytest.fixture(scope="module")
def official_keys(fixtures_dir):
    return json.loads((fixtures_dir / "official_keys.json").read_text())


def model_of(n):
    cfg = LazyConfig.load(str(REPO / "configs" / "ImageNet" / f"plainmamba_l{n}_300e.py"))
    return instantiate(cfg.model)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3])
def test_released_keys_convert_and_load(official_keys, tmp_path, n):
    release = fake_release(official_keys[f"cls_L{n}"], seed=n)
    src = tmp_path / f"released_l{n}.pth"
    torch.save(release, src)
    dst = tmp_path / f"l{n}_d2.pth"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "convert_official_checkpoint.py"),
            str(src),
            str(dst),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"PlainMamba-L{n}" in proc.stdout

    model = model_of(n)
    DetectionCheckpointer(model).load(str(dst))
    PlainMambaCheckpointer(model_of(n)).load(str(dst))  # strict: raises on any misfit
    loaded = model.state_dict()
    for name, value in release["state_dict"].items():
        assert torch.equal(loaded[name], value), name
    check_state_dict(model, convert_official_classification(release))


def test_ema_copies(official_keys):
    release = fake_release(official_keys["cls_L1"], ema=True)
    plain = convert_official_classification(release)
    assert not any(k.startswith("ema_") for k in plain)
    ema = convert_official_classification(release, use_ema=True)
    name = "backbone.layers.3.mamba.A_log"
    torch.testing.assert_close(ema[name], plain[name] + 1.0)
    assert torch.equal(ema["backbone.patch_embed.stem.1.num_batches_tracked"], torch.tensor(7))
    with pytest.raises(CheckpointError, match="no ema_"):
        convert_official_classification(fake_release(official_keys["cls_L1"]), use_ema=True)


def test_bare_state_dict_and_arch(official_keys):
    release = fake_release(official_keys["cls_L3"])
    state = convert_official_classification(release["state_dict"])
    assert infer_arch(state) == "L3"


@pytest.mark.slow
def test_wrong_size_names_keys_and_shapes(official_keys):
    state = convert_official_classification(fake_release(official_keys["cls_L1"]))
    with pytest.raises(CheckpointError) as err:
        check_state_dict(model_of(2), state, source="l1.pth")
    text = str(err.value)
    assert "l1.pth" in text and "PlainMamba-L1" in text
    assert "backbone.pos_embed: checkpoint (1, 196, 192), model (1, 196, 384)" in text
    assert "backbone.layers.0.dw.0.weight" in text  # L1-only keys are listed


@pytest.mark.slow
def test_checkpointer_reads_release_directly_and_is_strict(official_keys, tmp_path):
    path = tmp_path / "released.pth"
    torch.save(fake_release(official_keys["cls_L1"]), path)
    model = model_of(1)
    PlainMambaCheckpointer(model).load(str(path))
    with pytest.raises(CheckpointError, match="shape mismatch backbone.pos_embed"):
        PlainMambaCheckpointer(model_of(2)).load(str(path))


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pth: not a readable PyTorch checkpoint"):
        convert_official_classification(str(bad))
    with pytest.raises(CheckpointError, match="missing.pth: no such checkpoint file"):
        convert_official_classification(str(tmp_path / "missing.pth"))
    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['conv1.weight'\]"):
        convert_official_classification(str(other))


@pytest.mark.slow
def test_cli_reports_errors(tmp_path, official_keys):
    src = tmp_path / "l1.pth"
    torch.save(fake_release(official_keys["cls_L1"]), src)
    cfg = REPO / "configs" / "ImageNet" / "plainmamba_l3_300e.py"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_official_checkpoint.py"), str(src),
         str(tmp_path / "out.pth"), "--config-file", str(cfg)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "shape mismatch" in proc.stderr and not (tmp_path / "out.pth").exists()
