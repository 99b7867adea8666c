"""`make demo` as a user runs it, with and without converted weights."""

import json
import math
import subprocess
import sys

import pytest
import torch

from helpers import REPO
from plainmamba.model_zoo import ZOO

SCRIPT = REPO / "projects" / "quickstart" / "quickstart.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


@pytest.mark.slow
def test_quickstart_prints_shapes_params_and_time():
    proc = run()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    counted = ZOO["ImageNet/plainmamba_l1_300e.py"].measured["params_m"]
    assert f"backbone {counted:.2f} M" in out
    assert "layer23  (1, 192, 14, 19)" in out and "logits   (1, 1000)" in out
    assert "ms per image" in out


@pytest.mark.slow
def test_quickstart_with_weights_and_bad_image(tmp_path, fixtures_dir):
    keys = json.loads((fixtures_dir / "official_keys.json").read_text())["cls_L1"]
    state = {k: torch.randn(v) if v else torch.tensor(1) for k, v in keys.items()}
    ckpt = tmp_path / "l1.pth"
    torch.save({"state_dict": state}, ckpt)
    proc = run("--weights", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    assert "top-5" in proc.stdout
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    proc = run("--image", str(bad))
    assert proc.returncode == 2 and "broken.png" in proc.stderr


@pytest.mark.parametrize("max_iter", [100, 750])
def test_detection_schedule_follows_max_iter(max_iter):
    """The documented short run, ``shapes_detection.py train.max_iter=100``, failed with
    "Milestone must be smaller than total number of updates": the milestone is now a fraction."""
    from detectron2.config import instantiate

    from plainmamba.engine import check_args, default_train_argument_parser

    config = REPO / "configs" / "quickstart" / "mask_rcnn_plainmamba_adapter_tiny_shapes.py"
    argv = ["--config-file", str(config), f"train.max_iter={max_iter}"]
    cfg = check_args(default_train_argument_parser().parse_args(argv))
    schedule = instantiate(cfg.lr_multiplier)
    # Detectron2's LRMultiplier reads the schedule at iteration / train.max_iter.
    lr = [schedule(i / max_iter) for i in range(max_iter)]
    warmup = math.ceil(max_iter / 12)  # 63 of 750 iterations
    assert lr[0] == pytest.approx(0.01) and lr[warmup] == 1.0
    assert lr.index(0.1) == math.ceil(max_iter * 3 / 4)  # 563 of 750
