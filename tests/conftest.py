import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Outputs of the released modules (copied from ../shared/fixtures; see tests/fixtures/README.md).
FIXTURES = Path(os.environ.get("PLAINMAMBA_FIXTURES", REPO / "tests" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert (FIXTURES / "official_tiny_cls.pt").is_file(), f"fixtures missing under {FIXTURES}"
    return FIXTURES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def run_script(args, data_root, timeout=600):
    """Run a repository script on the CPU with its own data root; returns (exit code, output)."""
    import subprocess
    import sys

    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr
