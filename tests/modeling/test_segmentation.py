"""ADE20K UperNet: configs, sizes, released keys, head wiring, losses, inference, conversion."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.postprocessing import sem_seg_postprocess
from PIL import Image

from helpers import FIXTURES, REPO
from plainmamba.checkpoint import (
    CheckpointError,
    PlainMambaCheckpointer,
    check_state_dict,
    convert_mmseg_upernet,
    is_mmdet_detector,
    is_mmseg_upernet,
)
from plainmamba.data import SemSegLabelReader
from plainmamba.model_zoo import ZOO
from plainmamba.modeling import (
    EncoderDecoderSegmentor,
    FCNHead,
    ImageClassifier,
    PlainMamba,
    UPerHead,
)
from helpers import conv_module, materialize, plain_layer, released  # MMCV layouts
from helpers import build_tiny, rel_err

ADE_DIR = REPO / "configs" / "ADE20K"
ADE_CONFIGS = sorted(p.stem for p in ADE_DIR.glob("*.py"))
TOOL = str(REPO / "tools" / "convert_official_checkpoint.py")
# Published parameter counts (the model zoo's table), millions.
PUBLISHED_M = {
    name[len("ADE20K/") : -len(".py")]: e.published["params_m"]
    for name, e in ZOO.items()
    if name.startswith("ADE20K/")
}
SIZE = {name: int(name.split("_l")[1][0]) for name in PUBLISHED_M}
_MODELS = {}


def _load(name):
    return LazyConfig.load(str(ADE_DIR / f"{name}.py"))


def _model(name):
    """Each config's model, built once for the tests of this file."""
    if name not in _MODELS:
        _MODELS[name] = instantiate(_load(name).model)
    return _MODELS[name]


@pytest.fixture(scope="module")
def official_keys():
    return json.loads((FIXTURES / "official_keys.json").read_text())


# ------------------------------------------------------------------------------- configs and sizes
def test_every_size_has_a_config():
    assert ADE_CONFIGS == sorted(PUBLISHED_M)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_config_builds_with_the_released_recipe(name):
    cfg = _load(name)
    model = _model(name)
    size = SIZE[name]
    taps = [8, 17, 26, 35] if size == 3 else [5, 11, 17, 23]
    assert model.backbone.out_indices == tuple(taps) and model.backbone.final_norm
    assert model.backbone.drop_path_rate == pytest.approx(0.1 * size)
    assert model.decode_head.in_features == [f"layer{i}" for i in taps]
    assert model.auxiliary_head.in_features == [f"layer{taps[-1]}"]
    assert (model.decode_head.channels, model.auxiliary_head.channels) == (512, 256)
    assert model.auxiliary_head.loss_weight == 0.4 and model.size_divisibility == 32
    assert isinstance(model.decode_head.bottleneck.bn, torch.nn.SyncBatchNorm)
    assert isinstance(model.backbone.patch_embed.stem[1], torch.nn.SyncBatchNorm)  # as released
    assert cfg.optimizer.lr == 6e-5 and cfg.optimizer.params.weight_decay == 0.01
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.dataloader.evaluator.dataset_name == "ade20k_sem_seg_val"  # the test set's
    assert isinstance(instantiate(cfg.dataloader.evaluator.sem_seg_loading_fn), SemSegLabelReader)
    # the pipeline's augmentations build (the data set itself is not needed for that)
    augs = instantiate(cfg.dataloader.train.mapper).augmentations.augs
    assert [type(a).__name__ for a in augs] == [
        "ResizeByRatioRange",
        "RandomCrop_CategoryAreaConstraint",
        "RandomFlip",
        "PhotoMetricDistortion",
    ]
    # poly to 0 over 160k after a linear warmup of 1500 iterations from 1e-6
    sched = instantiate(cfg.lr_multiplier)
    assert cfg.train.max_iter == 160000
    assert sched(0.0) == pytest.approx(1e-6)
    assert sched(1500 / 160000) == pytest.approx(1 - 1500 / 160000)
    assert sched(0.5) == pytest.approx(0.5) and sched(1.0) == pytest.approx(0.0)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_counts(name):
    count = sum(p.numel() for p in _model(name).parameters()) / 1e6
    published = PUBLISHED_M[name]
    assert abs(count - published) / published <= 0.02, f"{name}: {count:.2f} M"


@pytest.mark.parametrize("size", [1, 2, 3])
def test_released_backbone_keys_load(official_keys, size):
    keys = official_keys[f"seg_backbone_L{size}"]
    backbone = instantiate(_load(f"upernet_plainmamba_l{size}_160k").model.backbone)
    state = {k[len("backbone.") :]: torch.zeros(shape) for k, shape in keys.items()}
    # strict: no missing or unexpected keys; load_state_dict also rejects any shape mismatch
    backbone.load_state_dict(state, strict=True)


# ------------------------------------------------------------- every config trains and infers
def _sample(h, w, num_classes=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    target = torch.randint(0, num_classes, (h, w), generator=g)
    target[: h // 4] = 255
    return {"image": image, "sem_seg": target}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_config_trains_and_infers_on_odd_sizes(name):
    model = _model(name).train()
    batch = [_sample(64, 96, seed=1), _sample(50, 83, seed=2)]  # padded to 64 x 96
    losses = model(batch)
    assert sorted(losses) == ["loss_aux", "loss_sem_seg"]
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for param in (
        model.backbone.patch_embed.projection.weight,
        model.backbone.layers[0].mamba.A_log,
        model.decode_head.psp_modules[0][1].conv.weight,
        model.decode_head.lateral_convs[0].conv.weight,
        model.auxiliary_head.convs[0].conv.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    model.eval()
    image = _sample(97, 130)["image"]
    with torch.no_grad():
        out = model([{"image": image, "height": 150, "width": 201}, {"image": image[:, :80]}])
    assert out[0]["sem_seg"].shape == (150, 150, 201)
    assert out[1]["sem_seg"].shape == (150, 80, 130)
    assert all(torch.isfinite(o["sem_seg"]).all() for o in out)


# --------------------------------------------------------- released trunk taps into the heads
def test_fixture_taps_feed_the_segmentor(fixtures_dir):
    """The released tiny trunk's taps (fixture) through UPerHead equal the segmentor's output."""
    data = torch.load(fixtures_dir / "official_tiny_cls.pt", weights_only=True)
    classifier = build_tiny(data["config"], data["num_classes"], None)
    classifier.load_state_dict(data["state_dict"], strict=True)
    trunk = classifier.backbone
    names = trunk.output_shape()
    assert list(names) == ["layer1", "layer3"]
    head = UPerHead(in_features=list(names), in_channels=trunk.embed_dim, channels=16, norm="BN")
    aux = FCNHead(in_features="layer3", in_channels=trunk.embed_dim, channels=8, norm="BN")
    for case, divisibility in ((data["cases"][2], 0), (data["cases"][0], 32)):  # 100x130, 224
        model = EncoderDecoderSegmentor(
            backbone=trunk, decode_head=head, auxiliary_head=aux, size_divisibility=divisibility
        ).eval()
        raw = case["input"] * model.pixel_std + model.pixel_mean
        with torch.no_grad():
            out = model([{"image": im, "height": 61, "width": 77} for im in raw])
            want = head.layers(dict(zip(names, case["features"], strict=True)))
        size = tuple(raw.shape[-2:])
        for got, logits in zip(out, want, strict=True):
            full = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
            expected = sem_seg_postprocess(full[0], size, 61, 77)
            assert got["sem_seg"].shape == (head.num_classes, 61, 77)
            assert rel_err(got["sem_seg"], expected) < 1e-4, size


def _conv_bn_relu(x, state, prefix, padding):
    y = F.conv2d(x, state[f"{prefix}.conv.weight"], padding=padding)
    bn = {p: state[f"{prefix}.bn.{p}"] for p in ("running_mean", "running_var", "weight", "bias")}
    y = F.batch_norm(y, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"])
    return F.relu(y)


def _mmseg_uper_forward(inputs, state, pool_scales):
    """MMSegmentation 0.x ``UPerHead.forward`` in eval mode, written out from its source."""

    def up(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    top = inputs[-1]
    psp = [top] + [
        up(
            _conv_bn_relu(F.adaptive_avg_pool2d(top, s), state, f"psp_modules.{i}.1", 0),
            top.shape[2:],
        )
        for i, s in enumerate(pool_scales)
    ]
    laterals = [_conv_bn_relu(x, state, f"lateral_convs.{i}", 0) for i, x in enumerate(inputs[:-1])]
    laterals.append(_conv_bn_relu(torch.cat(psp, 1), state, "bottleneck", 1))
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + up(laterals[i], laterals[i - 1].shape[2:])
    outs = [
        _conv_bn_relu(laterals[i], state, f"fpn_convs.{i}", 1) for i in range(len(laterals) - 1)
    ]
    outs.append(laterals[-1])
    outs = [outs[0]] + [up(x, outs[0].shape[2:]) for x in outs[1:]]
    fused = _conv_bn_relu(torch.cat(outs, 1), state, "fpn_bottleneck", 1)
    return F.conv2d(fused, state["conv_seg.weight"], state["conv_seg.bias"])


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else
                        torch.randn(t.shape, generator=g) * 0.3)  # fmt: skip


def test_heads_compute_what_mmsegmentation_does():
    """Channel orders of the concatenations and the top-down path, checked on random weights."""
    sizes = [(12, 10), (6, 5), (5, 4), (3, 3)]  # also unequal strides, as in MMSegmentation
    channels = [6, 7, 8, 9]
    head = UPerHead(
        in_features=list("abcd"), in_channels=channels, channels=5, num_classes=4, norm="BN"
    )
    aux = FCNHead(in_features=["d"], in_channels=9, channels=3, num_classes=4, norm="BN")
    _randomise(head, 1)
    _randomise(aux, 2)
    head.eval()
    aux.eval()
    inputs = [torch.randn(2, c, *s) for c, s in zip(channels, sizes)]
    features = dict(zip("abcd", inputs))
    with torch.no_grad():
        got = head.layers(features)
        want = _mmseg_uper_forward(inputs, head.state_dict(), (1, 2, 3, 6))
        aux_got = aux.layers(features)
        aux_state = aux.state_dict()
        aux_want = F.conv2d(
            _conv_bn_relu(inputs[-1], aux_state, "convs.0", 1),
            aux_state["conv_seg.weight"],
            aux_state["conv_seg.bias"],
        )
    assert got.shape == (2, 4, 12, 10) and rel_err(got, want) < 1e-5
    assert rel_err(aux_got, aux_want) < 1e-5


# ------------------------------------------------------------------------------------- losses
def test_ignored_pixels_contribute_no_loss():
    logits = torch.randn(1, 5, 4, 4)
    target = torch.full((1, 8, 8), 255)
    target[0, 3, 6] = 2
    full = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    one_pixel = F.cross_entropy(full[:, :, 3, 6], torch.tensor([2]))
    head = UPerHead(in_features=["a"], in_channels=4, channels=4, num_classes=5, norm="BN")
    per_labelled = UPerHead(
        in_features=["a"], in_channels=4, channels=4, num_classes=5, avg_non_ignore=True
    )
    assert torch.allclose(per_labelled.losses(logits, target)["loss_sem_seg"], one_pixel)
    # MMSegmentation 0.x (as released) averages over all pixels: the ignored ones add zeros
    assert torch.allclose(head.losses(logits, target)["loss_sem_seg"], one_pixel / 64)
    aux = FCNHead(in_features="a", in_channels=4, channels=4, num_classes=5, norm="BN")
    assert torch.allclose(aux.losses(logits, target)["loss_aux"], 0.4 * one_pixel / 64)
    with pytest.raises(ValueError, match="label 7 is neither in"):
        target[0, 0, 0] = 7
        head.losses(logits, target)


def test_label_reader_works_with_numpy_2(tmp_path):
    """SemSegEvaluator's ground-truth reader (Detectron2 0.7's fails with NumPy 2)."""
    labels = np.array([[0, 5, 255], [149, 7, 1]], dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "gt.png")
    got = SemSegLabelReader()(str(tmp_path / "gt.png"), dtype=int)
    assert got.dtype == int and np.array_equal(got, labels)


def test_segmentor_rejects_bad_inputs():
    trunk = PlainMamba(embed_dim=32, depth=2, out_indices=[0, 1])
    head = UPerHead(in_features=["layer0", "layer1"], in_channels=32, channels=8, norm="BN")
    model = EncoderDecoderSegmentor(backbone=trunk, decode_head=head)
    with pytest.raises(ValueError, match="missing 'image'"):
        model([{"sem_seg": torch.zeros(32, 32, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"sem_seg \(30, 32\) does not match the image \(32, 32\)"):
        model([{"image": torch.zeros(3, 32, 32), "sem_seg": torch.zeros(30, 32, dtype=torch.long)}])
    with pytest.raises(ValueError, match="has no 'sem_seg'"):
        model([{"image": torch.zeros(3, 32, 32)}])
    wrong = UPerHead(in_features=["layer0", "layer5"], in_channels=32, channels=8, norm="BN")
    with pytest.raises(ValueError, match="'layer5' is not a backbone output"):
        EncoderDecoderSegmentor(backbone=trunk, decode_head=wrong)
    wide = UPerHead(in_features=["layer0", "layer1"], in_channels=64, channels=8, norm="BN")
    with pytest.raises(ValueError, match="has 32 channels, the head expects 64"):
        EncoderDecoderSegmentor(backbone=trunk, decode_head=wide)


# -------------------------------------------------------------------------- checkpoint conversion
def mmseg_upernet_keys(backbone_keys, embed_dim, num_classes=150):
    """Every key and shape of a released PlainMamba UperNet, per MMSegmentation 0.x."""
    keys = {k: list(v) for k, v in backbone_keys.items()}
    for i in range(4):  # PPM: Sequential(AdaptiveAvgPool2d, ConvModule) per pool scale
        conv_module(keys, f"decode_head.psp_modules.{i}.1", embed_dim, 512, 1, norm=True)
    conv_module(keys, "decode_head.bottleneck", embed_dim + 4 * 512, 512, 3, norm=True)
    for i in range(3):
        conv_module(keys, f"decode_head.lateral_convs.{i}", embed_dim, 512, 1, norm=True)
        conv_module(keys, f"decode_head.fpn_convs.{i}", 512, 512, 3, norm=True)
    conv_module(keys, "decode_head.fpn_bottleneck", 4 * 512, 512, 3, norm=True)
    plain_layer(keys, "decode_head.conv_seg", [num_classes, 512, 1, 1])
    conv_module(keys, "auxiliary_head.convs.0", embed_dim, 256, 3, norm=True)
    plain_layer(keys, "auxiliary_head.conv_seg", [num_classes, 256, 1, 1])
    return keys


@pytest.fixture(scope="module")
def upernet_l1_state(official_keys):
    return materialize(mmseg_upernet_keys(official_keys["seg_backbone_L1"], 192), seed=3)


def test_released_upernet_converts_and_loads(upernet_l1_state, tmp_path):
    assert is_mmseg_upernet(upernet_l1_state) and not is_mmdet_detector(upernet_l1_state)
    state = convert_mmseg_upernet(released(upernet_l1_state), source="l1_upernet.pth")
    assert state.keys() == upernet_l1_state.keys()  # same names: only the prefixes are checked
    model = instantiate(_load("upernet_plainmamba_l1_160k").model)
    check_state_dict(model, state, source="synthetic upernet")  # raises on any misfit
    # the checkpointer reads the released file as it is
    path = tmp_path / "l1_upernet.pth"
    torch.save(released(upernet_l1_state), path)
    PlainMambaCheckpointer(model).load(str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, upernet_l1_state[key]), key


def test_unknown_and_missing_upernet_keys(upernet_l1_state):
    extra = dict(upernet_l1_state)
    extra["decode_head.conv_seg_extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        convert_mmseg_upernet(released(extra), source="odd.pth")
    assert "odd.pth" in str(err.value) and "decode_head.conv_seg_extra.weight" in str(err.value)
    short = {k: v for k, v in upernet_l1_state.items() if k != "auxiliary_head.conv_seg.bias"}
    with pytest.raises(CheckpointError, match=r"short\.pth: .*auxiliary_head\.conv_seg\.bias"):
        convert_mmseg_upernet(released(short), source="short.pth")
    backbone_only = {k: v for k, v in upernet_l1_state.items() if k.startswith("backbone.")}
    with pytest.raises(CheckpointError, match="no decode_head"):
        convert_mmseg_upernet(released(backbone_only), source="bb.pth")


@pytest.mark.slow
def test_cli_detects_and_checks_upernet(upernet_l1_state, tmp_path):
    src = tmp_path / "l1_upernet.pth"
    torch.save(released(upernet_l1_state), src)
    dst = tmp_path / "upernet_l1_d2.pth"
    cfg = ADE_DIR / "upernet_plainmamba_l1_160k.py"
    proc = subprocess.run(
        [sys.executable, TOOL, str(src), str(dst), "--config-file", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "upernet" in proc.stdout and "PlainMamba-L1" in proc.stdout
    written = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    assert written.keys() == upernet_l1_state.keys()


def test_trunk_initialises_from_a_classification_checkpoint(tmp_path):
    trunk_args = dict(embed_dim=32, depth=4, num_stem_convs=1, dwconv_layers=[0])
    classifier = ImageClassifier(backbone=PlainMamba(**trunk_args), num_classes=5)
    trunk = PlainMamba(**trunk_args, out_indices=[1, 3])
    head = UPerHead(in_features=["layer1", "layer3"], in_channels=32, channels=8, norm="BN")
    model = EncoderDecoderSegmentor(backbone=trunk, decode_head=head)
    path = tmp_path / "cls.pth"
    torch.save({"state_dict": classifier.state_dict(), "meta": {}}, path)  # released layout
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PlainMambaCheckpointer(model).load(str(path))
    after = model.state_dict()
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(after[f"backbone.{key}"], value), key
    fresh = [k for k in after if not k.startswith("backbone.") or "norm_layer" in k]
    assert "backbone.norm_layer1.weight" in fresh
    assert all(torch.equal(after[k], before[k]) for k in fresh)  # heads and tap norms untouched
