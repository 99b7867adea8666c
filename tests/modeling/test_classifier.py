"""The classification meta-architecture on Detectron2-style inputs."""

import pytest
import torch

from plainmamba.modeling import ImageClassifier, PlainMamba
from plainmamba.solver import NO_WEIGHT_DECAY, get_param_groups


def tiny_classifier(num_classes=4):
    backbone = PlainMamba(embed_dim=32, depth=2, num_stem_convs=0, dwconv_layers=[])
    return ImageClassifier(backbone=backbone, num_classes=num_classes)


def test_eval_returns_logits_for_uint8_and_float():
    model = tiny_classifier().eval()
    img = torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8)
    with torch.no_grad():
        a = model([{"image": img}, {"image": img}])
        b = model([{"image": img.float()}])
    assert len(a) == 2 and a[0]["logits"].shape == (4,)
    torch.testing.assert_close(a[0]["logits"], b[0]["logits"])


@pytest.mark.slow
def test_training_loss_falls():
    """A few AdamW steps on two fixed images with different labels: the loss must drop."""
    model = tiny_classifier().train()
    g = torch.Generator().manual_seed(0)
    batch = [
        {"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), "label": i}
        for i in (0, 3)
    ]
    opt = torch.optim.AdamW(get_param_groups(model, weight_decay=0.05), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(batch)["loss_cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_soft_labels():
    model = tiny_classifier().train()
    img = torch.zeros(3, 32, 32)
    loss = model([{"image": img, "soft_label": torch.tensor([0.7, 0.1, 0.1, 0.1])}])["loss_cls"]
    assert loss.item() > 0


def test_no_decay_groups():
    model = tiny_classifier()
    groups = get_param_groups(model, weight_decay=0.05)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        expect_exempt = (
            leaf in NO_WEIGHT_DECAY or leaf == "bias" or ".norm." in name or "ln1" in name
            or ".stem.1." in name
        )  # fmt: skip
        assert (id(p) in no_decay) == expect_exempt, name


@pytest.mark.parametrize(
    "inputs,match",
    [
        ([{"image": torch.zeros(1, 32, 32)}], r"input 0: expected a \(3, H, W\) image"),
        ([{"image": torch.full((3, 32, 32), float("nan")), "file_name": "a.jpg"}], "a.jpg.*NaN"),
        ([{"image": torch.zeros(3, 8, 32)}], "smaller than one 16x16 patch"),
        ([{"image": torch.zeros(3, 32, 32)}, {"image": torch.zeros(3, 48, 32)}], "one size"),
        ([{"label": 1}], "missing 'image'"),
    ],
)
def test_bad_inputs(inputs, match):
    with pytest.raises(ValueError, match=match):
        tiny_classifier().eval()(inputs)


def test_bad_label():
    with pytest.raises(ValueError, match="label 9 outside"):
        tiny_classifier().train()([{"image": torch.zeros(3, 32, 32), "label": 9}])
