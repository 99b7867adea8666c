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
