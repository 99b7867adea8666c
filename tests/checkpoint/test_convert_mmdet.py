"""Released MMDetection Mask R-CNN / RetinaNet checkpoints convert to Detectron2 names and order."""

import json
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.proposal_generator.rpn import StandardRPNHead
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
)
from torch import nn

from helpers import BN, NUM_CLASSES, REPO, materialize, mmdet_keys, released
from plainmamba.checkpoint import (
    CheckpointError,
    PlainMambaCheckpointer,
    convert_mmdet_detector,
    detect_mmdet_kind,
    infer_arch,
    is_mmdet_detector,
    mmdet_to_d2_anchor_permutation,
)

TOOL = str(REPO / "tools" / "convert_official_checkpoint.py")
ADAPTER = {
    "spm",
    "level_embed",
    "interactions",
    "up",
    "ad_norm1",
    "ad_norm2",
    "ad_norm3",
    "ad_norm4",
}


@pytest.fixture(scope="module")
def official_keys():
    return json.loads((REPO / "tests" / "fixtures" / "official_keys.json").read_text())


@pytest.fixture(scope="module")
def backbone_l1(official_keys):
    keys = official_keys["det_backbone_L1"]
    return keys, keys["backbone.pos_embed"][-1]


@pytest.fixture(scope="module")
def mask_rcnn_state(backbone_l1):
    return materialize(mmdet_keys("mask_rcnn", *backbone_l1), seed=1)


@pytest.fixture(scope="module")
def retinanet_state(backbone_l1):
    return materialize(mmdet_keys("retinanet", *backbone_l1), seed=2)


# ------------------------------------------------------------------------ expected target names
def d2_name(kind, key):
    """The Detectron2 key of a released key, written out independently of the converter."""
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        if rest.split(".")[0] in ADAPTER:
            return "backbone.bottom_up." + rest
        return "backbone.bottom_up.trunk." + rest
    conv_bn = {"conv.weight": "weight", **{f"bn.{p}": f"norm.{p}" for p in BN}}
    conv_bias = {"conv.weight": "weight", "conv.bias": "bias"}
    first_level = 2 if kind == "mask_rcnn" else 3
    m = re.fullmatch(r"neck\.(lateral|fpn)_convs\.(\d)\.(.+)", key)
    if m:
        i, param = int(m[2]), conv_bn[m[3]]
        if m[1] == "fpn" and kind == "retinanet" and i >= 3:
            return f"backbone.top_block.p{i + 3}.{param}"
        role = "lateral" if m[1] == "lateral" else "output"
        return f"backbone.fpn_{role}{i + first_level}.{param}"
    plain = {
        "rpn_head.rpn_conv": "proposal_generator.rpn_head.conv",
        "rpn_head.rpn_cls": "proposal_generator.rpn_head.objectness_logits",
        "rpn_head.rpn_reg": "proposal_generator.rpn_head.anchor_deltas",
        "roi_head.bbox_head.shared_fcs.0": "roi_heads.box_head.fc1",
        "roi_head.bbox_head.fc_cls": "roi_heads.box_predictor.cls_score",
        "roi_head.bbox_head.fc_reg": "roi_heads.box_predictor.bbox_pred",
        "roi_head.mask_head.upsample": "roi_heads.mask_head.deconv",
        "roi_head.mask_head.conv_logits": "roi_heads.mask_head.predictor",
        "bbox_head.retina_cls": "head.cls_score",
        "bbox_head.retina_reg": "head.bbox_pred",
    }
    module, param = key.rsplit(".", 1)
    if module in plain:
        return f"{plain[module]}.{param}"
    m = re.fullmatch(r"roi_head\.bbox_head\.shared_convs\.(\d)\.(.+)", key)
    if m:
        return f"roi_heads.box_head.conv{int(m[1]) + 1}.{conv_bn[m[2]]}"
    m = re.fullmatch(r"roi_head\.mask_head\.convs\.(\d)\.(.+)", key)
    if m:
        return f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{conv_bias[m[2]]}"
    m = re.fullmatch(r"bbox_head\.(cls|reg)_convs\.(\d)\.(.+)", key)
    if m:
        subnet = "cls_subnet" if m[1] == "cls" else "bbox_subnet"
        return f"head.{subnet}.{2 * int(m[2])}.{conv_bias[m[3]]}"
    raise AssertionError(f"test table lacks {key}")


def sub_dict(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def anchor_blocks(value, num_anchors=9):
    return value.reshape(num_anchors, -1, *value.shape[1:])


# ------------------------------------------------------------------------------------ the tests
def test_detect_kind(mask_rcnn_state, retinanet_state, official_keys):
    assert detect_mmdet_kind(mask_rcnn_state) == "mask_rcnn"
    assert detect_mmdet_kind(retinanet_state) == "retinanet"
    assert is_mmdet_detector(mask_rcnn_state) and is_mmdet_detector(retinanet_state)
    classifier = {k: torch.zeros(1) for k in official_keys["cls_L1"]}
    assert not is_mmdet_detector(classifier)
    with pytest.raises(CheckpointError, match=r"cls\.pth: .*classification.*'head\.fc\.'"):
        detect_mmdet_kind(classifier, source="cls.pth")
    faster = {k: v for k, v in mask_rcnn_state.items() if "mask_head" not in k}
    with pytest.raises(CheckpointError, match="without a mask head"):
        detect_mmdet_kind(faster)


def test_mask_rcnn_names_and_values(mask_rcnn_state):
    out = convert_mmdet_detector(released(mask_rcnn_state), source="maskrcnn.pth")
    expected = {d2_name("mask_rcnn", k): v for k, v in mask_rcnn_state.items()}
    assert len(expected) == len(mask_rcnn_state)  # the target names are distinct
    assert sorted(out) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(out[name], value), name
    assert out["backbone.fpn_lateral2.norm.num_batches_tracked"].dtype == torch.int64
    assert infer_arch(out) == "L1"
    # no parameters of the adapter land in the trunk and vice versa
    assert "backbone.bottom_up.trunk.layers.0.mamba.A_log" in out
    assert "backbone.bottom_up.interactions.0.injector.gamma" in out
    assert "backbone.bottom_up.level_embed" in out and "backbone.bottom_up.up.weight" in out


def test_retinanet_names_values_and_anchor_permutation(retinanet_state):
    out = convert_mmdet_detector(released(retinanet_state), kind="retinanet")
    expected = {d2_name("retinanet", k): v for k, v in retinanet_state.items()}
    assert sorted(out) == sorted(expected)
    predictors = {"head.cls_score.weight", "head.cls_score.bias"}
    predictors |= {"head.bbox_pred.weight", "head.bbox_pred.bias"}
    for name, value in expected.items():
        if name not in predictors:
            assert torch.equal(out[name], value), name
    perm = mmdet_to_d2_anchor_permutation()
    assert perm != list(range(9))
    for name in predictors:
        got, src = anchor_blocks(out[name]), anchor_blocks(expected[name])
        assert got.shape[1] == (NUM_CLASSES if "cls" in name else 4)
        for a in range(9):
            assert torch.equal(got[a], src[perm[a]]), (name, a)


def mmdet_base_anchors(base_size, scales, ratios):
    """MMDetection v2 ``gen_single_level_base_anchors`` (scale_major=True, center 0), as (w, h)."""
    scales, ratios = torch.tensor(scales), torch.tensor(ratios)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (base_size * h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([ws, hs], dim=1)


def d2_cell_anchors_wh(sizes, ratios, stride):
    gen = DefaultAnchorGenerator(
        sizes=[sizes], aspect_ratios=[ratios], strides=[stride], offset=0.0
    )
    cell = next(iter(gen.cell_anchors))  # BufferList has no indexing
    return torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], dim=1), gen


def test_anchor_orders_semantically():
    # RetinaNet at stride 8: octave_base_scale 4, 3 scales per octave, ratios 0.5 / 1 / 2.
    octave = [2 ** (i / 3) for i in range(3)]
    mmdet = mmdet_base_anchors(8, [4 * s for s in octave], [0.5, 1.0, 2.0])
    d2, _ = d2_cell_anchors_wh([32 * s for s in octave], [0.5, 1.0, 2.0], 8)
    perm = mmdet_to_d2_anchor_permutation(num_scales=3, num_ratios=3)
    assert sorted(perm) == list(range(9))
    torch.testing.assert_close(d2, mmdet[perm], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(d2, mmdet, rtol=1e-3)  # the orders really differ
    # RPN: one size (scales [8] at stride 4 -> 32) and 3 ratios: the same order in both.
    mmdet = mmdet_base_anchors(4, [8.0], [0.5, 1.0, 2.0])
    d2, _ = d2_cell_anchors_wh([32], [0.5, 1.0, 2.0], 4)
    assert mmdet_to_d2_anchor_permutation(1, 3) == [0, 1, 2]
    torch.testing.assert_close(d2, mmdet, rtol=1e-5, atol=1e-4)


def test_retinanet_head_predicts_the_same_per_anchor(retinanet_state):
    """Run the released head (written out with MMDetection's layout) and the converted
    Detectron2 ``RetinaNetHead``: every (anchor box, class) gets the same score and deltas."""
    state = retinanet_state
    out = convert_mmdet_detector(released(state))
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=256)], num_classes=80, num_anchors=9, conv_dims=[256] * 4
    )
    head.load_state_dict(sub_dict(out, "head."), strict=True)
    x = torch.randn(1, 256, 3, 4)
    with torch.no_grad():
        logits, deltas = head([x])
        d2_scores = permute_to_N_HWA_K(logits[0], NUM_CLASSES)[0]
        d2_deltas = permute_to_N_HWA_K(deltas[0], 4)[0]

        def tower(branch, pred):
            y = x
            for k in range(4):
                p = f"bbox_head.{branch}_convs.{k}.conv."
                y = F.relu(F.conv2d(y, state[p + "weight"], state[p + "bias"], padding=1))
            return F.conv2d(y, state[pred + ".weight"], state[pred + ".bias"], padding=1)

        # AnchorHead.loss_single / _get_bboxes: permute(0, 2, 3, 1).reshape(-1, channels)
        mm_scores = tower("cls", "bbox_head.retina_cls").permute(0, 2, 3, 1).reshape(-1, 80)
        mm_deltas = tower("reg", "bbox_head.retina_reg").permute(0, 2, 3, 1).reshape(-1, 4)

    octave = [2 ** (i / 3) for i in range(3)]
    wh = mmdet_base_anchors(8, [4 * s for s in octave], [0.5, 1.0, 2.0])
    base = torch.cat([-wh / 2, wh / 2], dim=1)
    # single_level_grid_priors: x varies fastest, then y; anchors innermost.
    ys, xs = torch.meshgrid(torch.arange(3) * 8.0, torch.arange(4) * 8.0, indexing="ij")
    shifts = torch.stack([xs.reshape(-1), ys.reshape(-1)] * 2, dim=1)
    mm_anchors = (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)
    _, gen = d2_cell_anchors_wh([32 * s for s in octave], [0.5, 1.0, 2.0], 8)
    d2_anchors = gen([x])[0].tensor

    assert d2_anchors.shape == mm_anchors.shape == (3 * 4 * 9, 4)
    match = torch.cdist(d2_anchors, mm_anchors, p=1).argmin(dim=1)
    torch.testing.assert_close(d2_anchors, mm_anchors[match], rtol=1e-5, atol=1e-3)
    assert sorted(match.tolist()) == list(range(len(match)))
    torch.testing.assert_close(d2_scores, mm_scores[match], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d2_deltas, mm_deltas[match], rtol=1e-5, atol=1e-5)


class _Stages(Backbone):
    """Stand-in for the adapter: only its output shapes matter to the FPN's parameter names."""

    def __init__(self, channels, strides):
        super().__init__()
        self._shapes = {f"s{s}": ShapeSpec(channels=channels, stride=s) for s in strides}

    def output_shape(self):
        return self._shapes

    def forward(self, x):
        raise NotImplementedError("only the names are checked")


def test_names_fit_detectron2_modules(mask_rcnn_state, retinanet_state, backbone_l1):
    embed_dim = backbone_l1[1]
    mask = convert_mmdet_detector(released(mask_rcnn_state))
    retina = convert_mmdet_detector(released(retinanet_state))

    def fits(module, state, prefix):
        sub = sub_dict(state, prefix)
        assert sub, prefix
        module.load_state_dict(sub, strict=True)  # raises on missing/unexpected keys or shapes

    fits(
        FastRCNNConvFCHead(
            ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[256] * 4,
            fc_dims=[1024],
            conv_norm="BN",
        ),
        mask,
        "roi_heads.box_head.",
    )
    fits(
        FastRCNNOutputLayers(
            ShapeSpec(channels=1024),
            box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
            num_classes=NUM_CLASSES,
        ),
        mask,
        "roi_heads.box_predictor.",
    )
    fits(
        MaskRCNNConvUpsampleHead(
            ShapeSpec(channels=256, height=14, width=14),
            num_classes=NUM_CLASSES,
            conv_dims=[256] * 5,
        ),
        mask,
        "roi_heads.mask_head.",
    )
    fits(StandardRPNHead(in_channels=256, num_anchors=3), mask, "proposal_generator.rpn_head.")
    fits(
        RetinaNetHead(
            input_shape=[ShapeSpec(channels=256)],
            num_classes=NUM_CLASSES,
            num_anchors=9,
            conv_dims=[256] * 4,
        ),
        retina,
        "head.",
    )

    def fpn_part(state):
        return {k: v for k, v in state.items() if k.startswith("backbone.fpn_")}

    fpn = FPN(
        bottom_up=_Stages(embed_dim, [4, 8, 16, 32]),
        in_features=["s4", "s8", "s16", "s32"],
        out_channels=256,
        norm="BN",
        top_block=LastLevelMaxPool(),
    )
    fits(fpn, fpn_part(mask), "backbone.")
    fpn = FPN(
        bottom_up=_Stages(embed_dim, [8, 16, 32]),
        in_features=["s8", "s16", "s32"],
        out_channels=256,
        norm="BN",
    )
    fits(fpn, fpn_part(retina), "backbone.")
    # P6 / P7: Detectron2 Conv2d + norm, like the FPN's own convs (the brief's top-block names).
    for level in ("p6", "p7"):
        conv = Conv2d(256, 256, 3, stride=2, padding=1, bias=False, norm=get_norm("BN", 256))
        fits(conv, retina, f"backbone.top_block.{level}.")


def test_unknown_and_missing_keys(mask_rcnn_state, retinanet_state):
    extra = dict(mask_rcnn_state)
    extra["roi_head.bbox_head.fc_extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        convert_mmdet_detector(released(extra), source="odd.pth")
    text = str(err.value)
    assert "odd.pth" in text and "roi_head.bbox_head.fc_extra.weight" in text and "(1)" in text

    many = dict(retinanet_state)
    many.update({f"neck.extra.{i:02d}": torch.zeros(1) for i in range(15)})
    with pytest.raises(CheckpointError, match=r"\(15\): \['neck.extra.00'.*and 5 more"):
        convert_mmdet_detector(released(many), source="many.pth")

    # a conv bias next to a norm has no Detectron2 counterpart: refused, not dropped
    biased = dict(mask_rcnn_state)
    biased["neck.lateral_convs.0.conv.bias"] = torch.zeros(256)
    with pytest.raises(CheckpointError, match=r"neck\.lateral_convs\.0\.conv\.bias"):
        convert_mmdet_detector(released(biased))

    short = {k: v for k, v in mask_rcnn_state.items() if k != "rpn_head.rpn_reg.bias"}
    with pytest.raises(CheckpointError, match=r"short\.pth: mask_rcnn .*rpn_head\.rpn_reg\.bias"):
        convert_mmdet_detector(released(short), source="short.pth")

    with pytest.raises(CheckpointError, match="asked for a mask_rcnn checkpoint, but it holds a"):
        convert_mmdet_detector(released(retinanet_state), kind="mask_rcnn")


def test_ema_and_module_prefix_are_handled(retinanet_state):
    state = {"module." + k: v for k, v in retinanet_state.items()}
    state["ema_backbone_pos_embed"] = torch.zeros(1)
    out = convert_mmdet_detector(released(state))
    assert sorted(out) == sorted(d2_name("retinanet", k) for k in retinanet_state)


@pytest.mark.slow
def test_classification_checkpoint_as_detector(official_keys, tmp_path):
    classifier = released(materialize(official_keys["cls_L1"]))
    with pytest.raises(CheckpointError, match=r"cls\.pth: asked for a mask_rcnn checkpoint.*"):
        convert_mmdet_detector(classifier, kind="mask_rcnn", source="cls.pth")
    src = tmp_path / "cls.pth"
    torch.save(classifier, src)
    proc = subprocess.run(
        [sys.executable, TOOL, str(src), str(tmp_path / "out.pth"), "--task", "mask_rcnn"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "asked for a mask_rcnn checkpoint" in proc.stderr
    assert "classification" in proc.stderr and "'head.fc.'" in proc.stderr
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.slow
def test_cli_converts_detectors(mask_rcnn_state, retinanet_state, tmp_path):
    src = tmp_path / "maskrcnn_l1.pth"
    torch.save(released(mask_rcnn_state), src)
    dst = tmp_path / "d2" / "maskrcnn_l1_d2.pth"
    proc = subprocess.run(
        [sys.executable, TOOL, str(src), str(dst)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "mask_rcnn" in proc.stdout and "PlainMamba-L1" in proc.stdout
    written = torch.load(dst, map_location="cpu", weights_only=True)
    assert set(written) == {"model", "__author__"}
    expected = convert_mmdet_detector(released(mask_rcnn_state))
    assert sorted(written["model"]) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(written["model"][name], value), name

    # --config-file checks the result: a classifier config does not take a detector
    src = tmp_path / "retinanet_l1.pth"
    torch.save(released(retinanet_state), src)
    cfg = REPO / "configs" / "ImageNet" / "plainmamba_l1_300e.py"
    args = [str(src), str(tmp_path / "r.pth"), "--task", "retinanet", "--config-file", str(cfg)]
    proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "does not fit the model" in proc.stderr and "PlainMamba-L1" in proc.stderr
    assert "not in model" in proc.stderr and "'backbone.bottom_up." in proc.stderr
    assert not (tmp_path / "r.pth").exists()


def _holder(state):
    """A module whose state dict has exactly the keys and shapes of ``state`` (zeros)."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_buffer(leaf, torch.zeros_like(value))
    return root


def test_checkpointer_reads_released_detector(retinanet_state, tmp_path):
    path = tmp_path / "released_retinanet.pth"
    torch.save(released(retinanet_state), path)
    expected = convert_mmdet_detector(released(retinanet_state))
    model = _holder(expected)
    PlainMambaCheckpointer(model).load(str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name

    extra = dict(retinanet_state)
    extra["bbox_head.retina_iou.weight"] = torch.zeros(1)
    torch.save(released(extra), path)
    with pytest.raises(CheckpointError, match=r"bbox_head\.retina_iou\.weight"):
        PlainMambaCheckpointer(_holder(expected)).load(str(path))
