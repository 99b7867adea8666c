"""The released modules' outputs (tests/fixtures) reproduced by every scan path on this machine."""

import pytest
import torch

from helpers import build_tiny, rel_err
from plainmamba.ops import available_impls

IMPLS = [name for name in available_impls() if name in ("ref", "numba", "mamba")]


@pytest.fixture(scope="module")
def cls_fixture(fixtures_dir):
    return torch.load(fixtures_dir / "official_tiny_cls.pt", weights_only=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_released_classifier_outputs(cls_fixture, impl):
    model = build_tiny(cls_fixture["config"], cls_fixture["num_classes"], impl)
    model.load_state_dict(cls_fixture["state_dict"], strict=True)
    device = "cuda" if impl == "mamba" else "cpu"
    model.to(device)
    assert len(cls_fixture["cases"]) == 3
    for case in cls_fixture["cases"]:
        x = case["input"].to(device)
        with torch.no_grad():
            tokens, maps = model.backbone.forward_features(x)
            logits = model.head(tokens)
        size = tuple(x.shape[-2:])
        assert rel_err(tokens.cpu(), case["tokens"]) < 1e-4, size
        assert list(maps) == ["layer1", "layer3"]
        for got, want in zip(maps.values(), case["features"], strict=True):
            assert got.shape == want.shape
            assert rel_err(got.cpu(), want) < 1e-4, size
        assert rel_err(logits.cpu(), case["logits"]) < 1e-4, size


def test_classifier_meta_arch_on_detectron2_inputs(cls_fixture):
    """The same logits through Detectron2-style inputs (0-255 RGB, normalised inside)."""
    model = build_tiny(cls_fixture["config"], cls_fixture["num_classes"], None)
    model.load_state_dict(cls_fixture["state_dict"])
    case = cls_fixture["cases"][2]
    raw = case["input"][0] * model.pixel_std + model.pixel_mean
    with torch.no_grad():
        out = model([{"image": raw}])
    assert rel_err(out[0]["logits"], case["logits"][0]) < 1e-4
