"""Entry points silence exactly the known third-party warnings (plainmamba/known_warnings.py)."""

import ast
import subprocess
import sys

import pytest

from helpers import REPO

# Each line makes one of the known third-party warnings happen.
TRIGGERS = """
import detectron2.modeling, timm, torch
from detectron2.config import LazyConfig
cfg = LazyConfig.load("tests/configs/toy_regression.py")
LazyConfig.save(cfg, sys.argv[1])
torch.meshgrid(torch.arange(2), torch.arange(2))
"""

ENTRY_POINTS = [
    "tools/analyze_model.py",
    "tools/benchmark.py",
    "tools/convert_official_checkpoint.py",
    "tools/create_lmdb_dataset.py",
    "tools/lazyconfig_train_net.py",
    "tools/print_param_groups.py",
    "tools/deploy/export_model.py",
    "projects/demo/demo.py",
    "projects/quickstart/quickstart.py",
    "projects/quickstart/shapes_detection.py",
    "projects/quickstart/shapes_segmentation.py",
    "projects/quickstart/shapes_classification.py",
]


def _warnings_printed(silence: bool, tmp_path) -> str:
    head = "import sys\n"
    if silence:
        head += "from plainmamba.known_warnings import silence_known_warnings\n"
        head += "silence_known_warnings()\n"
    code = head + TRIGGERS + "import warnings\nwarnings.warn('still shown', UserWarning)\n"
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(tmp_path / "cfg.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.slow
def test_known_warnings_are_silenced_and_others_still_show(tmp_path):
    loud = _warnings_printed(False, tmp_path)
    for text in ("torch.jit.script` is deprecated", "pkg_resources is deprecated", "meshgrid"):
        assert text in loud, f"the trigger for {text!r} no longer warns; update KNOWN_WARNINGS"
    quiet = _warnings_printed(True, tmp_path)
    assert "Warning" in quiet and "still shown" in quiet, quiet
    assert quiet.count("Warning") == 1, quiet


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_points_silence_before_importing_detectron2(path):
    tree = ast.parse((REPO / path).read_text())
    order = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            if getattr(node.value.func, "id", None) == "silence_known_warnings":
                order.append("silence")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n.split(".")[0] in {"detectron2", "timm", "torch", "demo_utils"} for n in names):
                order.append("import")
    assert "silence" in order, f"{path} does not call silence_known_warnings()"
    assert order.index("silence") < (order.index("import") if "import" in order else len(order))
