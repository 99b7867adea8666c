"""COCO detectors: adapter parity, released keys, sizes, and every config trains and evaluates."""

import json
import math

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.events import EventStorage

from helpers import FIXTURES, REPO, run_script
from plainmamba.checkpoint import (
    PlainMambaCheckpointer,
    adapter_key,
    check_state_dict,
    convert_mmdet_detector,
)
from plainmamba.data import ImageReadError, make_shapes_coco, register_shapes
from plainmamba.model_zoo import ZOO
from plainmamba.modeling import ImageClassifier, PlainMamba, PlainMambaAdapter

COCO_DIR = REPO / "configs" / "COCO"
COCO_CONFIGS = sorted(p.stem for p in COCO_DIR.glob("*.py"))
TINY = REPO / "configs" / "quickstart" / "mask_rcnn_plainmamba_adapter_tiny_shapes.py"

# Published parameter counts (the model zoo's table), millions.
PUBLISHED_M = {
    name[len("COCO/") : -len(".py")]: e.published["params_m"]
    for name, e in ZOO.items()
    if name.startswith("COCO/")
}
# RetinaNet-L2 is 41.30 M here: the released L2 config differs from L1's only in the backbone, and
# every size has RetinaNet = Mask R-CNN - 11.9 M (L1 31.21 -> 19.36, L3 79.78 -> 67.86), while the
# published table says 53 -> 40. The published figure does not fit the released structure.
PARAM_TOLERANCE = {"retinanet_plainmamba_adapter_l2_1x": 0.035}


def _load(name):
    return LazyConfig.load(str(COCO_DIR / f"{name}.py"))


def test_every_size_has_both_detectors():
    assert COCO_CONFIGS == sorted(PUBLISHED_M)


def test_adapter_matches_released_fixture(fixtures_dir):
    data = torch.load(fixtures_dir / "official_tiny_adapter.pt", weights_only=True)
    cfg = data["config"]
    assert cfg["add_vit_feature"] and cfg["use_extra_extractor"] and not cfg["final_norm"]
    trunk = PlainMamba(
        embed_dim=cfg["embed_dims"],
        depth=cfg["num_layers"],
        num_stem_convs=cfg["num_convs_patch_embed"],
        dwconv_layers=cfg["layers_with_dwconv"],
        final_norm=False,
    )
    adapter = PlainMambaAdapter(
        trunk,
        cfg["interaction_indexes"],
        conv_inplane=cfg["conv_inplane"],
        n_points=cfg["n_points"],
        deform_num_heads=cfg["deform_num_heads"],
        cffn_ratio=cfg["cffn_ratio"],
        deform_ratio=cfg["deform_ratio"],
    ).eval()
    state = {adapter_key(k[len("backbone.") :]): v for k, v in data["state_dict"].items()}
    adapter.load_state_dict(state, strict=True)
    for case in data["cases"]:
        with torch.no_grad():
            out = adapter(case["input"])
        assert list(out) == ["res2", "res3", "res4", "res5"]
        for (name, got), want in zip(out.items(), case["features"], strict=True):
            assert got.shape == want.shape, name
            rel = ((got - want).abs().max() / want.abs().max()).item()
            assert rel < 1e-4, f"{name} at {tuple(case['input'].shape)}: relative error {rel:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("size", [1, 2, 3])
def test_released_backbone_keys_load(size):
    keys = json.loads((FIXTURES / "official_keys.json").read_text())[f"det_backbone_L{size}"]
    cfg = _load(f"mask_rcnn_plainmamba_adapter_l{size}_1x")
    adapter = instantiate(cfg.model.backbone.bottom_up)
    state = {adapter_key(k[len("backbone.") :]): torch.zeros(shape) for k, shape in keys.items()}
    # strict: no missing or unexpected keys; load_state_dict also rejects any shape mismatch
    adapter.load_state_dict(state, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_counts(name):
    model = instantiate(_load(name).model)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    published = PUBLISHED_M[name]
    tolerance = PARAM_TOLERANCE.get(name, 0.02)
    assert abs(count - published) / published <= tolerance, f"{name}: {count:.2f} M"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mask_rcnn", "retinanet"])
def test_released_detector_converts_into_config(kind):
    from helpers import materialize, mmdet_keys  # synthetic released layouts

    official = json.loads((FIXTURES / "official_keys.json").read_text())["det_backbone_L1"]
    released = materialize(mmdet_keys(kind, official, 192))
    state = convert_mmdet_detector({"state_dict": released}, source=f"synthetic {kind}")
    model = instantiate(_load(f"{kind}_plainmamba_adapter_l1_1x").model)
    check_state_dict(model, state, source=f"synthetic {kind}")  # raises on any misfit


# --- every config trains one step and evaluates, on small odd-sized images -------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_coco(root, num_train=6, num_val=4, empty_fraction=0.25, seed=3)
    names = register_shapes(root, prefix="test_det_shapes")
    return root, names


def _small_run_config(name, names, output_dir):
    cfg = _load(name)
    if name.startswith("mask_rcnn"):
        cfg.model.roi_heads.num_classes = 3
        # fewer sampled RoIs and proposals: same architecture, CPU-sized step
        cfg.model.roi_heads.batch_size_per_image = 64
        cfg.model.proposal_generator.post_nms_topk = (200, 100)
    else:
        cfg.model.num_classes = 3
    for split in (cfg.dataloader.train, cfg.dataloader.test):
        split.mapper.augmentations[0].short_edge_length = 100
        split.mapper.augmentations[0].max_size = 150
        split.num_workers = 0
    cfg.dataloader.test.dataset.names = names[1]
    cfg.dataloader.evaluator.dataset_name = names[1]
    cfg.dataloader.evaluator.output_dir = str(output_dir)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", COCO_CONFIGS)
def test_config_trains_and_evaluates(name, shapes, tmp_path):
    _, names = shapes
    cfg = _small_run_config(name, names, tmp_path)
    model = instantiate(cfg.model)
    mapper = instantiate(cfg.dataloader.train.mapper)
    dicts = DatasetCatalog.get(names[0])
    empty = next(d for d in dicts if not d["annotations"])
    full = next(d for d in dicts if d["annotations"])
    batch = [mapper(full), mapper(empty)]
    assert len(batch[1]["instances"]) == 0
    assert any(s % 32 for b in batch for s in b["image"].shape[-2:])  # padded by the model

    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grad = model.backbone.bottom_up.trunk.patch_embed.projection.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    assert "bbox" in results
    assert ("segm" in results) == name.startswith("mask_rcnn")


def test_missing_image_fails_with_its_path(shapes, tmp_path):
    _, names = shapes
    cfg = _small_run_config("mask_rcnn_plainmamba_adapter_l1_1x", names, tmp_path)
    mapper = instantiate(cfg.dataloader.train.mapper)
    record = dict(DatasetCatalog.get(names[0])[0], file_name=str(tmp_path / "gone.png"))
    with pytest.raises(ImageReadError, match="gone.png"):
        mapper(record)


# --- the small shapes detector: backbone init, multi-process training ------------------------


def test_trunk_initialises_from_a_classification_checkpoint(tmp_path):
    cfg = LazyConfig.load(str(TINY))
    detector = instantiate(cfg.model)
    trunk_cfg = dict(cfg.model.backbone.bottom_up.trunk)
    trunk_cfg.pop("_target_")
    trunk_cfg.update(final_norm=True)
    classifier = ImageClassifier(backbone=PlainMamba(**trunk_cfg), num_classes=5)
    # released layout: an MMClassification file with a state_dict
    path = tmp_path / "cls.pth"
    torch.save({"state_dict": classifier.state_dict(), "meta": {}}, path)
    before = detector.backbone.bottom_up.spm.fc1.weight.clone()
    PlainMambaCheckpointer(detector).load(str(path))
    for key, value in classifier.backbone.state_dict().items():
        if key.startswith("ln1"):
            continue
        got = detector.backbone.bottom_up.trunk.state_dict()[key]
        assert torch.equal(got, value), key
    assert torch.equal(detector.backbone.bottom_up.spm.fc1.weight, before)  # adapter untouched


@pytest.mark.slow
def test_tiny_detector_trains_on_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    code, log = run_script(
        [
            "tools/lazyconfig_train_net.py",
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            "--config-file",
            TINY,
            f"train.output_dir={out}",
            "train.max_iter=4",
            "train.checkpointer.period=2",
            "train.eval_period=4",
            "train.log_period=1",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
        ],
        tmp_path / "data",
    )
    assert code == 0, log[-4000:]
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert max(m["iteration"] for m in metrics if "total_loss" in m) == 3
    assert losses and all(math.isfinite(v) for v in losses)
    # evaluation ran over the gathered predictions of both ranks
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert "on 2 devices" in log


# --- the detectors check their input as the classifier and the segmentor do ------------------


def _small_retinanet():
    cfg = _load("retinanet_plainmamba_adapter_l1_1x")
    cfg.model.backbone.bottom_up.trunk.update(embed_dim=64, depth=4, dwconv_layers=[])
    cfg.model.backbone.bottom_up.update(
        interaction_indexes=[[0, 1], [2, 3]], conv_inplane=16, deform_num_heads=4
    )
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def every_model():
    """Both detectors (small), a classifier and a segmentor: all take Detectron2-style input."""
    from plainmamba.modeling import EncoderDecoderSegmentor, UPerHead

    trunk = PlainMamba(embed_dim=32, depth=2, out_indices=[0, 1])
    head = UPerHead(in_features=["layer0", "layer1"], in_channels=32, channels=8, norm="BN")
    return {
        "mask_rcnn": instantiate(LazyConfig.load(str(TINY)).model),
        "retinanet": _small_retinanet(),
        "classifier": ImageClassifier(backbone=PlainMamba(embed_dim=32, depth=2), num_classes=3),
        "segmentor": EncoderDecoderSegmentor(backbone=trunk, decode_head=head),
    }


SHAPE = r"input 0: expected a \(3, H, W\) image, got shape "


@pytest.mark.parametrize(
    "batch,match",
    [
        ([{"image": torch.zeros(1, 64, 64)}], SHAPE + r"\(1, 64, 64\)"),
        ([{"image": torch.zeros(64, 64)}], SHAPE + r"\(64, 64\)"),
        (
            [{"image": torch.zeros(4, 64, 64), "file_name": "x.png"}],
            r"input 0 \(x\.png\): expected",
        ),
        ([{"image": torch.full((3, 64, 64), float("nan"))}], "NaN or infinite"),
        ([{"file_name": "x.png"}], r"input 0 \(x\.png\): missing 'image' tensor"),
        ([], "expects a non-empty list of dicts with an 'image', got an empty list"),
    ],
    ids=["1-channel", "2-D", "4-channel", "nan", "no-image", "empty-batch"],
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_models_reject_bad_images_alike(every_model, batch, match, mode):
    """Detectron2's detectors alone returned 100 detections for a 1-channel or 2-D image."""
    for name, model in every_model.items():
        getattr(model, mode)()
        with EventStorage(0), pytest.raises(ValueError, match=match):
            model(batch)
