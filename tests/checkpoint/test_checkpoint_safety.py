"""Loading a checkpoint never runs code: every load route refuses a pickle payload, while released
files whose ``meta`` holds classes of packages that are not installed still convert."""

import builtins
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import REPO, run_script
from plainmamba.checkpoint import (
    CheckpointError,
    PlainMambaCheckpointer,
    UnsafeCheckpointError,
    convert_official_classification,
    load_official_file,
)
from plainmamba.checkpoint.safe_pickle import (
    InertObject,
    RefusedGlobalError,
    restricted_pickle_load,
)

TOY_CONFIG = REPO / "tests" / "configs" / "toy_regression.py"
DETECTOR = "quickstart/mask_rcnn_plainmamba_adapter_tiny_shapes.py"
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")


class Payload:
    """Unpickling this calls ``os.system`` (a pickle's ``REDUCE``), which touches ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Call:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _toy_state():
    torch.manual_seed(0)
    return nn.Linear(8, 1).state_dict()


def _poisoned_pth(tmp_path, marker, name="poisoned.pth"):
    """A real checkpoint of the toy model with one poisoned extra entry."""
    path = tmp_path / name
    torch.save({"model": _toy_state(), "notes": {"x": Payload(marker)}}, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The same file runs its payload when trusted: the refusals below are the loader's doing."""
    marker = tmp_path / "ran"
    path = _poisoned_pth(tmp_path, marker)
    PlainMambaCheckpointer(nn.Linear(8, 1), trusted=True).load(str(path))
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        Call(os.system, "touch {marker}"),
        Call(builtins.eval, "__import__('os').system('touch {marker}')"),
        Call(builtins.exec, "open('{marker}', 'w').close()"),
        Call(subprocess.call, ["touch", "{marker}"]),
        Call(getattr, Call(builtins.__import__, "os"), "system"),
    ],
    ids=["os.system", "eval", "exec", "subprocess", "getattr"],
)
def test_restricted_unpickler_refuses_calls(tmp_path, payload):
    marker = tmp_path / "ran"
    payload.args = tuple(
        a.format(marker=marker) if isinstance(a, str) else
        [x.format(marker=marker) for x in a] if isinstance(a, list) else a
        for a in payload.args
    )  # fmt: skip
    data = pickle.dumps({"model": {"w": np.ones(2)}, "x": payload}, protocol=2)
    with pytest.raises(RefusedGlobalError):
        restricted_pickle_load(__import__("io").BytesIO(data))
    assert not marker.exists()


def _uninstalled_module_release(tmp_path, state):
    """A released-layout file whose ``meta`` holds instances of a module that is then removed."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_mmcv_for_test.py").write_text(
        "class ConfigDict(dict):\n    pass\n\n"
        "class Runner:\n    def __init__(self):\n        self.epoch = 300\n"
    )
    sys.path.insert(0, str(mod_dir))
    try:
        import fake_mmcv_for_test as mod

        meta = {
            "config": mod.ConfigDict(model=mod.ConfigDict(type="PlainMamba"), lr=1e-3),
            "runner": mod.Runner(),
            "hook_msgs": {"best_score": np.float64(0.5), "scores": np.arange(3)},
            "epoch": 300,
        }
        path = tmp_path / "released.pth"
        torch.save({"state_dict": state, "meta": meta}, path)
    finally:
        sys.path.remove(str(mod_dir))
        sys.modules.pop("fake_mmcv_for_test", None)
        (mod_dir / "fake_mmcv_for_test.py").unlink()
    return path


def test_released_meta_from_uninstalled_packages_is_inert_data(tmp_path):
    state = {"backbone.w": torch.randn(3, 2), "head.fc.bias": torch.randn(4)}
    path = _uninstalled_module_release(tmp_path, state)
    ckpt = load_official_file(str(path))
    config = ckpt["meta"]["config"]
    assert isinstance(config, InertObject) and config["lr"] == 1e-3
    assert type(config).__qualname__ == "fake_mmcv_for_test.ConfigDict"
    assert ckpt["meta"]["runner"].state == {"epoch": 300}
    assert ckpt["meta"]["hook_msgs"]["best_score"] == 0.5
    assert "fake_mmcv_for_test" not in sys.modules  # looked at, never imported
    converted = convert_official_classification(ckpt, source=str(path))
    assert torch.equal(converted["backbone.w"], state["backbone.w"])


@pytest.mark.slow
def test_converter_tool(tmp_path, fixtures_dir):
    """The command-line converter: a released file with foreign ``meta`` converts in a process
    that never saw its module; a poisoned one exits 2 naming the file and the global."""
    fixture = torch.load(fixtures_dir / "official_tiny_cls.pt", weights_only=True)
    state = {k: v for k, v in fixture["state_dict"].items()}
    good = _uninstalled_module_release(tmp_path, state)
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "meta": {"x": Payload(marker)}}, bad)
    script = REPO / "tools" / "convert_official_checkpoint.py"

    config = ["--config-file", REPO / "tests" / "configs" / "cls_fixture_eval.py"]
    code, out = run_script([script, good, tmp_path / "good_d2.pth", *config], tmp_path)
    assert code == 0, out
    assert (tmp_path / "good_d2.pth").is_file()

    code, out = run_script([script, bad, tmp_path / "bad_d2.pth"], tmp_path)
    assert code == 2, out
    assert f"error: {bad}: refused to unpickle: it calls posix.system" in out
    assert "Traceback" not in out
    assert not marker.exists() and not (tmp_path / "bad_d2.pth").exists()

    code, out = run_script([script, good, tmp_path], tmp_path)  # a folder as output
    assert code == 2 and "is a folder" in out and "Traceback" not in out, out


def test_checkpointer_refuses_pth_and_pkl(tmp_path):
    marker = tmp_path / "ran"
    pth = _poisoned_pth(tmp_path, marker)
    pkl = tmp_path / "poisoned.pkl"
    state = {k: v.numpy() for k, v in _toy_state().items()}
    with open(pkl, "wb") as f:
        pickle.dump({"model": state, "__author__": "x", "extra": Payload(marker)}, f)
    for path in (pth, pkl):
        with pytest.raises(UnsafeCheckpointError, match=f"{path}: refused to unpickle"):
            PlainMambaCheckpointer(nn.Linear(8, 1)).load(str(path))
    assert not marker.exists()


def test_checkpointer_reads_safe_pkl(tmp_path):
    """Detectron2 model-zoo ``.pkl`` (NumPy weights) and Caffe2 ``blobs`` files still load."""
    state = {k: v.numpy() for k, v in _toy_state().items()}
    for name, data in {
        "d2.pkl": {"model": state, "__author__": "Detectron2"},
        "caffe2.pkl": {"blobs": dict(state, **{"weight_momentum": np.zeros(8)})},
    }.items():
        with open(tmp_path / name, "wb") as f:
            pickle.dump(data, f)
        model = nn.Linear(8, 1)
        PlainMambaCheckpointer(model).load(str(tmp_path / name))
        assert np.array_equal(model.weight.detach().numpy(), state["weight"]), name


def test_model_zoo_get_refuses(tmp_path):
    from plainmamba import model_zoo

    marker = tmp_path / "ran"
    path = tmp_path / "poisoned.pth"
    torch.save({"model": {}, "x": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle"):
        model_zoo.get(DETECTOR, weights=str(path))
    assert not marker.exists()


def _train_net(*args):
    cmd = [sys.executable, str(REPO / "tools" / "lazyconfig_train_net.py")]
    cmd += ["--config-file", str(TOY_CONFIG), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_net_init_checkpoint_and_resume_refuse(tmp_path):
    marker = tmp_path / "ran"
    bad = _poisoned_pth(tmp_path, marker)
    proc = _train_net("--eval-only", f"train.init_checkpoint={bad}", f"train.output_dir={tmp_path}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and f"error: {bad}: refused to unpickle" in log, log[-3000:]
    assert "Traceback" not in log

    out = tmp_path / "run"
    out.mkdir()
    _poisoned_pth(out, marker, name="model_0000009.pth")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    proc = _train_net("--resume", f"train.output_dir={out}", "train.max_iter=20")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "model_0000009.pth: refused to unpickle" in log, log[-3000:]
    assert "Starting training" not in log
    assert not marker.exists()


@pytest.mark.slow
def test_demo_refuses(tmp_path):
    from PIL import Image

    marker = tmp_path / "ran"
    bad = tmp_path / "poisoned.pth"
    torch.save({"model": {}, "x": Payload(marker)}, bad)
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (120, 130, 140)).save(image)
    code, out = run_script(
        [
            REPO / "projects" / "demo" / "demo.py",
            "--config-file",
            DETECTOR,
            "--input",
            image,
            "--output",
            tmp_path / "vis",
            "--opts",
            f"train.init_checkpoint={bad}",
        ],
        tmp_path,
    )
    assert code == 2 and f"{bad}: refused to unpickle" in out, out[-3000:]
    assert not marker.exists() and not (tmp_path / "vis").exists()


def test_error_is_one_line_and_names_the_global(tmp_path):
    path = _poisoned_pth(tmp_path, tmp_path / "ran")
    with pytest.raises(CheckpointError) as info:
        load_official_file(str(path))
    message = str(info.value)
    assert "\n" not in message and "posix.system" in message and "--trust-checkpoint" in message
    json.dumps(message)  # plain text, printable as is
