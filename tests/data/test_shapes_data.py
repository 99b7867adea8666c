"""The generated shapes data set is valid COCO, and SafeDatasetMapper survives bad images and boxes."""

import json
import math
import pickle

import numpy as np
import pytest
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO

from plainmamba.data import (
    SHAPE_CLASSES,
    ImageReadError,
    SafeDatasetMapper,
    make_shapes_coco,
    register_shapes,
)

# pycocotools decode trips a harmless numpy 2 copy-keyword DeprecationWarning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(num_train=12, num_val=10, seed=3)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_coco(root, **SMALL)
    return root


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_generation_is_deterministic_and_idempotent(shapes_root, tmp_path):
    other = make_shapes_coco(tmp_path / "again", **SMALL)
    ref = make_shapes_coco(shapes_root, **SMALL)
    for key in ("train_json", "val_json"):
        assert _load(other[key]) == _load(ref[key])
    # Same images pixel for pixel, not just the same json.
    name = _load(ref["train_json"])["images"][0]["file_name"]
    a = np.asarray(Image.open(f"{ref['train_dir']}/{name}"))
    b = np.asarray(Image.open(f"{other['train_dir']}/{name}"))
    assert np.array_equal(a, b)

    # A second call with the same arguments reuses the files; new arguments regenerate them.
    mtime = (shapes_root / "annotations" / "instances_train.json").stat().st_mtime_ns
    make_shapes_coco(shapes_root, **SMALL)
    assert (shapes_root / "annotations" / "instances_train.json").stat().st_mtime_ns == mtime
    changed = make_shapes_coco(tmp_path / "again", **dict(SMALL, seed=4))
    assert _load(changed["train_json"]) != _load(ref["train_json"])
    assert _load(tmp_path / "again" / "meta.json")["seed"] == 4


@pytest.mark.parametrize("split", ["train", "val"])
def test_json_is_valid_coco(shapes_root, split):
    paths = make_shapes_coco(shapes_root, **SMALL)
    coco = COCO(paths[f"{split}_json"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert coco.getCatIds() == [1, 2, 3]
    assert len(coco.imgs) == SMALL[f"num_{split}"]
    assert len(coco.anns) > 0

    empty = [i for i in coco.imgs if not coco.getAnnIds(imgIds=[i])]
    assert len(empty) >= 1

    sizes = set()
    for img in coco.imgs.values():
        with Image.open(f"{paths[f'{split}_dir']}/{img['file_name']}") as im:
            assert im.size == (img["width"], img["height"])
            assert im.mode == "RGB"
        sizes.update((img["width"], img["height"]))
        assert 96 <= img["width"] <= 160 and 96 <= img["height"] <= 160
    assert any(s % 32 for s in sizes)

    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in ann["bbox"])
        assert w > 0 and h > 0 and ann["area"] > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)
        (poly,) = ann["segmentation"]
        assert len(poly) >= 6 and len(poly) % 2 == 0
        # The mask pycocotools rasterises from the polygon is the one whose area was recorded.
        assert coco.annToMask(ann).sum() == ann["area"]
        xs, ys = poly[0::2], poly[1::2]
        assert [x, y, w, h] == pytest.approx([min(xs), min(ys), max(xs) - x, max(ys) - y])

    # Shapes stand out from the background: mean colours inside and outside the masks differ.
    for img_id, img in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        if not anns:
            continue
        with Image.open(f"{paths[f'{split}_dir']}/{img['file_name']}") as im:
            pixels = np.asarray(im, dtype=np.float64)
        union = np.zeros(pixels.shape[:2], bool)
        for ann in anns:
            union |= coco.annToMask(ann).astype(bool)
        background = pixels[~union].mean(0)
        for ann in anns:
            inside = pixels[coco.annToMask(ann).astype(bool)].mean(0)
            assert np.linalg.norm(inside - background) > 60


def test_register_twice_and_catalog_keeps_empty_images(shapes_root, tmp_path):
    names = register_shapes(shapes_root, prefix="shapes_test")
    assert names == ("shapes_test_train", "shapes_test_val")
    assert register_shapes(shapes_root, prefix="shapes_test") == names

    meta = MetadataCatalog.get("shapes_test_train")
    assert list(meta.thing_classes) == list(SHAPE_CLASSES)
    assert meta.evaluator_type == "coco"

    dicts = DatasetCatalog.get("shapes_test_val")
    assert len(dicts) == SMALL["num_val"]
    assert any(len(d["annotations"]) == 0 for d in dicts)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}
    # Loading set thing_classes from the json; a second registration must still be accepted.
    assert register_shapes(shapes_root, prefix="shapes_test") == names

    with pytest.raises(ValueError, match="shapes_test_train"):
        register_shapes(tmp_path / "elsewhere", prefix="shapes_test")


def _mapper(**kw):
    cfg = L(SafeDatasetMapper)(
        is_train=True,
        augmentations=[T.RandomFlip(prob=1.0)],
        image_format="RGB",
        use_instance_mask=True,
        **kw,
    )
    return instantiate(cfg)


def _image_dict(tmp_path, annotations, h=101, w=133):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return {
        "file_name": str(path),
        "height": h,
        "width": w,
        "image_id": 1,
        "annotations": annotations,
    }


def _anno(bbox, segmentation=None, mode=BoxMode.XYWH_ABS, category_id=1, **kw):
    x, y, w, h = bbox
    if segmentation is None:
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return dict(
        bbox=list(bbox), bbox_mode=mode, category_id=category_id, segmentation=segmentation, **kw
    )


def test_mapper_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "missing.png"
    d = {"file_name": str(missing), "height": 10, "width": 10, "annotations": []}
    with pytest.raises(ImageReadError, match="missing.png") as info:
        _mapper()(d)
    assert str(missing) in str(info.value) and info.value.path == str(missing)
    assert isinstance(info.value, OSError)
    # DataLoader workers pickle the error; the path must survive the trip.
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is ImageReadError and again.path == str(missing)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_mapper_corrupt_file_names_path(tmp_path, kind):
    d = _image_dict(tmp_path, [])
    path = tmp_path / "img.png"
    if kind == "garbage":
        path.write_bytes(b"this is not a png\x00\xff" * 50)
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        _mapper()(d)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None
    assert type(info.value.__cause__).__name__ in str(info.value)


def test_mapper_keeps_only_valid_annotations(tmp_path):
    good = _anno([10.0, 10.0, 30.0, 20.0])
    good_xyxy = _anno([50.0, 40.0, 90.0, 80.0], mode=BoxMode.XYXY_ABS, category_id=2)
    good_xyxy["segmentation"] = [[50, 40, 90, 40, 90, 80], [1, 2]]  # one bad polygon among good
    annotations = [
        good,
        good_xyxy,
        _anno([5.0, 5.0, 0.0, 10.0]),  # zero width
        _anno([5.0, 5.0, 10.0, -3.0]),  # negative height
        _anno([60.0, 40.0, 50.0, 80.0], mode=BoxMode.XYXY_ABS),  # x1 < x0
        _anno([float("nan"), 5.0, 10.0, 10.0]),  # NaN box
        _anno([5.0, 5.0, float("inf"), 10.0]),  # infinite box
        _anno([5.0, 5.0, 10.0, 10.0], segmentation=[[5, 5, 15, 15]]),  # 2-point polygon
        _anno([5.0, 5.0, 10.0, 10.0], segmentation=[]),  # empty segmentation
        _anno([5.0, 5.0, 10.0, 10.0], segmentation=[[]]),  # empty polygon
        _anno([5.0, 5.0, 10.0, 10.0], iscrowd=1),  # crowd, dropped as Detectron2 does
    ]
    out = _mapper()(_image_dict(tmp_path, annotations))
    inst = out["instances"]
    assert len(inst) == 2
    assert inst.gt_classes.tolist() == [1, 2]
    assert len(inst.gt_masks) == 2
    assert [len(p) for p in inst.gt_masks.polygons] == [1, 1]
    boxes = inst.gt_boxes.tensor
    assert bool(boxes.isfinite().all()) and bool(((boxes[:, 2:] - boxes[:, :2]) > 0).all())
    # Horizontally flipped: x0' = w - x1.
    assert boxes[0].tolist() == pytest.approx([133 - 40, 10, 133 - 10, 30])
    assert out["image"].shape == (3, 101, 133)


@pytest.mark.parametrize("recompute_boxes", [False, True])
@pytest.mark.parametrize("all_invalid", [False, True])
def test_mapper_image_without_annotations(tmp_path, recompute_boxes, all_invalid):
    annotations = [_anno([1.0, 1.0, 0.0, 0.0])] if all_invalid else []
    out = _mapper(recompute_boxes=recompute_boxes)(_image_dict(tmp_path, annotations))
    inst = out["instances"]
    assert len(inst) == 0
    assert inst.gt_boxes.tensor.shape == (0, 4)
    assert len(inst.gt_classes) == 0 and len(inst.gt_masks) == 0
    assert inst.image_size == (101, 133)


def test_mapper_checks_image_size(tmp_path):
    d = _image_dict(tmp_path, [])
    d["height"] = 100
    with pytest.raises(ValueError, match="img.png"):
        _mapper()(d)


def test_mapper_on_generated_data(shapes_root):
    names = register_shapes(shapes_root, prefix="shapes_test")
    mapper = _mapper(recompute_boxes=True)
    for d in DatasetCatalog.get(names[0]):
        out = mapper(d)
        assert len(out["instances"]) == len(d["annotations"])
        assert out["image"].shape[1:] == (d["height"], d["width"])


def test_shared_drawing_helpers():
    """The three generated sets draw with one module's helpers, and those behave as documented."""
    import inspect

    from plainmamba.data import cls_shapes, seg_shapes, shapes, shapes_draw

    for module in (shapes, seg_shapes, cls_shapes):
        source = inspect.getsource(module)
        assert "from .shapes_draw import" in source
        for helper in ("def _background", "def _outline", "def _shape_colour", "def _write_json"):
            assert helper not in source, (module.__name__, helper)

    rng = np.random.default_rng(0)
    pixels, refs = shapes_draw.textured_background(rng, 37, 51)
    assert pixels.shape == (37, 51, 3) and pixels.dtype == np.uint8 and len(refs) >= 2
    colour = np.array(shapes_draw.contrasting_colour(rng, refs))
    assert all(np.linalg.norm(colour - r) >= shapes_draw.MIN_CONTRAST - 1 for r in refs)

    square = shapes_draw.shape_outline("square", 20.0, 20.0, 10.0, 0.3)
    assert square.shape == (4, 2)
    assert np.allclose(np.linalg.norm(square[1] - square[0]), 10.0)
    assert shapes_draw.shape_outline("circle", 0, 0, 4, 1.0).shape == (
        shapes_draw.CIRCLE_VERTICES,
        2,
    )
    assert shapes_draw.cross_outline(0, 0, 6, 0).shape == (12, 2)
    with pytest.raises(ValueError, match="hexagon"):
        shapes_draw.shape_outline("hexagon", 0, 0, 1, 0)

    full = shapes_draw.polygon_mask(40, 40, square)
    holed = shapes_draw.polygon_mask(40, 40, square, holes=[square * 0.5 + 10])
    assert 80 <= full.sum() <= 130 and holed.sum() < full.sum()
    disc = shapes_draw.disc_mask(40, 40, 20, 20, 10)
    ring = shapes_draw.disc_mask(40, 40, 20, 20, 10, hole=5)
    assert abs(disc.sum() - math.pi * 100) < 40 and not ring[20, 20] and disc[20, 20]


def test_finished_marker(tmp_path):
    from plainmamba.data.shapes_draw import finished_with, write_json_atomic

    meta = tmp_path / "meta.json"
    assert not finished_with(meta, {"seed": 0})
    write_json_atomic(meta, {"seed": 0})
    assert finished_with(meta, {"seed": 0}) and not finished_with(meta, {"seed": 1})
    assert not list(tmp_path.glob("*.tmp"))
    meta.write_text("{not json")
    assert not finished_with(meta, {"seed": 0})
