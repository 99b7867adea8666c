"""`make demo` as a user runs it, with and without converted weights."""

import json
import subprocess
import sys

import torch

from conftest import REPO

SCRIPT = REPO / "projects" / "quickstart" / "quickstart.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_quickstart_prints_shapes_params_and_time():
    proc = run()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "backbone 7.36 M" in out
    assert "layer23  (1, 192, 14, 19)" in out and "logits   (1, 1000)" in out
    assert "ms per image" in out


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
