"""Fixtures every test shares; plain helpers live in ``tests/helpers.py``."""

from pathlib import Path

import pytest
import torch

from helpers import FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert (FIXTURES / "official_tiny_cls.pt").is_file(), f"fixtures missing under {FIXTURES}"
    return FIXTURES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
