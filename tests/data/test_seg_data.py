"""Semantic-segmentation data: MMSeg-style augmentations, label checks, shapes set, ADE20K prep."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from helpers import REPO
from plainmamba.data import (
    SEG_SHAPE_CLASSES,
    CV2ResizeTransform,
    ImageReadError,
    PhotoMetricDistortion,
    PhotoMetricTransform,
    ResizeByRatioRange,
    SafeDatasetMapper,
    make_shapes_semseg,
    mmcv_rescale_size,
    register_shapes_semseg,
    shapes_semseg_dataset,
)

PREPARE = REPO / "datasets" / "prepare_ade20k_sem_seg.py"
SMALL = dict(num_train=6, num_val=3, seed=5)


def _resized_hw(h, w, **kw):
    tfm = ResizeByRatioRange(**kw).get_transform(np.zeros((h, w, 3), np.uint8))
    assert isinstance(tfm, CV2ResizeTransform)
    return tfm.new_h, tfm.new_w


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "old_wh, scale, expected",
    [
        # factor min(2048/640, 512/480) = 1.0667: 640 * 1.0667 = 682.67 -> 683.
        ((640, 480), (2048, 512), (683, 512)),
        ((480, 640), (2048, 512), (512, 683)),
        # The long edge binds: factor 2048/3000, 500 * 0.68267 = 341.3 -> 341.
        ((3000, 500), (2048, 512), (2048, 341)),
        ((500, 3000), (512, 2048), (341, 2048)),
        # Half rounds up (int(x + 0.5)), not to even and not down: 5 * 0.5 = 2.5 -> 3.
        ((5, 4), (100, 2), (3, 2)),
        # Upscaling: factor min(2048/100, 512/50) = 10.24.
        ((100, 50), (2048, 512), (1024, 512)),
    ],
)
def test_mmcv_rescale_size_hand_cases(old_wh, scale, expected):
    assert mmcv_rescale_size(old_wh, scale)[0] == expected


def test_resize_hand_cases_and_scale_truncation():
    # Ratio 0.75: box (1536, 384); factor min(1536/500, 384/333) = 384/333; 500 * it = 576.58.
    assert _resized_hw(333, 500, ratio_range=(0.75, 0.75)) == (384, 577)
    assert _resized_hw(500, 333, ratio_range=(0.75, 0.75)) == (577, 384)
    # MMSeg truncates the box: 512 * 0.99 = 506.88 -> 506 (rounding would give 507).
    assert _resized_hw(1000, 1000, ratio_range=(0.99, 0.99)) == (506, 506)
    # ratio_range=None is the single-scale (test-time) resize.
    assert _resized_hw(480, 640, ratio_range=None) == (512, 683)


@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (123, 911), (911, 123), (64, 64)])
@pytest.mark.parametrize("ratio", [0.5, 0.83, 1.0, 1.61, 2.0])
def test_resize_obeys_long_and_short_limits(hw, ratio):
    h, w = hw
    new_h, new_w = _resized_hw(h, w, img_scale=(2048, 512), ratio_range=(ratio, ratio))
    box_long, box_short = int(2048 * ratio), int(512 * ratio)
    assert max(new_h, new_w) <= box_long and min(new_h, new_w) <= box_short
    # As large as fits: one of the limits is reached.
    assert max(new_h, new_w) == box_long or min(new_h, new_w) == box_short
    # Orientation and aspect ratio kept (to rounding).
    assert (new_h >= new_w) == (h >= w)
    assert abs(new_w / new_h - w / h) <= 1.0 / min(new_h, new_w) * (1 + w / h)


def test_resize_random_ratio_stays_in_range_and_is_seeded():
    aug = ResizeByRatioRange()
    image = np.zeros((300, 400, 3), np.uint8)
    np.random.seed(1)
    sizes = [aug.get_transform(image) for _ in range(200)]
    np.random.seed(1)
    again = [aug.get_transform(image) for _ in range(200)]
    assert [(t.new_h, t.new_w) for t in sizes] == [(t.new_h, t.new_w) for t in again]
    shorts = [min(t.new_h, t.new_w) for t in sizes]
    # Short edge 512 * r for this aspect ratio, r in [0.5, 2.0].
    assert 256 <= min(shorts) < 300 and 950 < max(shorts) <= 1024


def test_resize_interpolation_matches_opencv():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    label = np.kron(rng.choice([0, 3, 7, 255], size=(5, 7)), np.ones((8, 8), int))[:37, :53]
    label = label.astype(np.uint8)
    for new_hw in [(75, 107), (18, 26), (37, 90)]:
        tfm = CV2ResizeTransform(37, 53, *new_hw)
        ref_img = cv2.resize(image, new_hw[::-1], interpolation=cv2.INTER_LINEAR)
        ref_lbl = cv2.resize(label, new_hw[::-1], interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(tfm.apply_image(image), ref_img)
        out = tfm.apply_segmentation(label)
        assert out.dtype == np.uint8 and np.array_equal(out, ref_lbl)
        assert set(np.unique(out)) <= {0, 3, 7, 255}
        # dtypes OpenCV cannot resize (int64 labels) take the same nearest rule.
        wide = tfm.apply_segmentation(label.astype(np.int64))
        assert wide.dtype == np.int64 and np.array_equal(wide, ref_lbl)
    # Upscaling by nearest keeps every value.
    up = CV2ResizeTransform(37, 53, 75, 107).apply_segmentation(label)
    assert set(np.unique(up)) == set(np.unique(label))
    # A single-channel image keeps its channel axis.
    assert CV2ResizeTransform(37, 53, 20, 30).apply_image(image[..., :1]).shape == (20, 30, 1)


# ------------------------------------------------------------------ composition


_PALETTE = np.array(
    [[20, 20, 20], [200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40], [240, 240, 240]],
    np.uint8,
)


def _block_pair(rng, h=150, w=211, block=25):
    """An image whose colour encodes its label (blocks of classes 0..4 and 255)."""
    grid = rng.choice([0, 1, 2, 3, 4, 255], size=(h // block + 1, w // block + 1))
    label = np.kron(grid, np.ones((block, block), int))[:h, :w].astype(np.uint8)
    image = _PALETTE[np.where(label == 255, 5, label)]
    return image, label


def _interior(label):
    """Pixels at least two pixels inside a region of one label, edges of the array excluded.

    Bilinear leaves their colour exact. Two, not one: OpenCV's nearest rule (MMCV's, so ours)
    samples floor(i * scale) while bilinear centres on (i + 0.5) * scale - 0.5, so labels sit
    up to half an output pixel off the image when upscaling, as in MMSegmentation.
    """
    kernel = np.ones((5, 5), np.uint8)
    lo = cv2.erode(label, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    hi = cv2.dilate(label, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=255)
    return lo == hi


def test_composition_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    augs = T.AugmentationList(
        [
            ResizeByRatioRange(img_scale=(512, 128), ratio_range=(0.5, 2.0)),
            T.RandomCrop_CategoryAreaConstraint("absolute", (96, 96), 0.75, 255),
            T.RandomFlip(prob=0.5),
        ]
    )
    np.random.seed(0)
    flips = 0
    for _ in range(12):
        image, label = _block_pair(rng)
        aug_input = T.AugInput(image, sem_seg=label)
        tfms = augs(aug_input)
        img_out, lbl_out = aug_input.image, aug_input.sem_seg
        # The crop is 96 x 96 unless the resized image is smaller (ratio 0.5: 64 rows).
        assert img_out.shape[:2] == lbl_out.shape and max(lbl_out.shape) == 96
        assert img_out.dtype == np.uint8 and lbl_out.dtype == np.uint8
        assert set(np.unique(lbl_out)) <= {0, 1, 2, 3, 4, 255}
        flips += any(isinstance(t, T.HFlipTransform) for t in tfms)
        inner = _interior(lbl_out)
        assert inner.mean() > 0.2
        expected = _PALETTE[np.where(lbl_out == 255, 5, lbl_out)]
        assert np.array_equal(img_out[inner], expected[inner])
    assert 0 < flips < 12


# ---------------------------------------------------------- photometric distortion


def test_photometric_distortion_image_only_and_seeded():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(41, 67, 3), dtype=np.uint8)
    label = rng.integers(0, 150, size=(41, 67), dtype=np.uint8)
    aug = PhotoMetricDistortion()

    def run(seed):
        np.random.seed(seed)
        aug_input = T.AugInput(image.copy(), sem_seg=label.copy())
        T.AugmentationList([aug])(aug_input)
        return aug_input.image, aug_input.sem_seg

    changed = 0
    for seed in range(20):
        out, lbl = run(seed)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.array_equal(lbl, label)
        assert np.array_equal(out, run(seed)[0])
        changed += not np.array_equal(out, image)
    assert changed >= 15  # all four steps skipped has probability 1/16
    assert not np.array_equal(run(0)[0], run(1)[0])
    # The geometry is untouched.
    tfm = aug.get_transform(image)
    coords = np.array([[3.0, 4.0]])
    assert np.array_equal(tfm.apply_coords(coords.copy()), coords)


def test_photometric_distortion_draws_every_step_both_ways():
    aug = PhotoMetricDistortion()
    image = np.zeros((4, 4, 3), np.uint8)
    np.random.seed(0)
    tfms = [aug.get_transform(image) for _ in range(200)]
    for field in ("brightness", "contrast", "saturation", "hue"):
        values = [getattr(t, field) for t in tfms]
        assert 60 < sum(v is None for v in values) < 140, field
    assert {t.contrast_first for t in tfms} == {False, True}
    assert all(-32 <= t.brightness <= 32 for t in tfms if t.brightness is not None)
    assert all(0.5 <= t.contrast <= 1.5 for t in tfms if t.contrast is not None)
    assert {t.hue for t in tfms if t.hue is not None} <= set(range(-18, 18))


def test_photometric_steps():
    px = np.array([[[100, 250, 0]]], np.uint8)
    # Brightness: float add, clip, truncate (110.7 -> 110).
    out = PhotoMetricTransform(brightness=10.7).apply_image(px)
    assert out.tolist() == [[[110, 255, 10]]]
    assert PhotoMetricTransform(contrast=1.5).apply_image(px).tolist() == [[[150, 255, 0]]]
    # Saturation 0 leaves grey; hue +60 (120 degrees) turns red into green in either order.
    grey = PhotoMetricTransform(saturation=0.0).apply_image(np.array([[[200, 40, 90]]], np.uint8))
    assert len(set(grey[0, 0].tolist())) == 1
    red_rgb = np.array([[[255, 0, 0]]], np.uint8)
    assert PhotoMetricTransform(hue=60).apply_image(red_rgb).tolist() == [[[0, 255, 0]]]
    red_bgr = np.array([[[0, 0, 255]]], np.uint8)
    bgr = PhotoMetricTransform(hue=60, image_format="BGR").apply_image(red_bgr)
    assert bgr.tolist() == [[[0, 255, 0]]]
    # Hue wraps around 180: -30 from red (0) is 150, i.e. 300 degrees, magenta.
    assert PhotoMetricTransform(hue=-30).apply_image(red_rgb).tolist() == [[[255, 0, 255]]]
    # Contrast before or after the HSV steps is a different image.
    img = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    first = PhotoMetricTransform(contrast=1.4, saturation=1.4, contrast_first=True)
    last = PhotoMetricTransform(contrast=1.4, saturation=1.4, contrast_first=False)
    assert not np.array_equal(first.apply_image(img), last.apply_image(img))
    with pytest.raises(ValueError, match="uint8"):
        PhotoMetricTransform(brightness=1.0).apply_image(img.astype(np.float32))


# ---------------------------------------------------------- ADE20K label shift


def _run_prepare(*args):
    return subprocess.run(
        [sys.executable, str(PREPARE), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_prepare_ade20k_shifts_labels_and_is_idempotent(tmp_path):
    ade = tmp_path / "ADEChallengeData2016" / "annotations"
    src = np.array([[0, 1, 150], [2, 0, 75]], np.uint8)
    for split, name in (("training", "ADE_train_00000001.png"), ("validation", "v.png")):
        (ade / split).mkdir(parents=True)
        Image.fromarray(src).save(ade / split / name)
    res = _run_prepare("--root", str(tmp_path), "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "2 converted, 0 up to date, 0 failed" in res.stdout

    out_dir = tmp_path / "ADEChallengeData2016" / "annotations_detectron2"
    out = np.asarray(Image.open(out_dir / "training" / "ADE_train_00000001.png"))
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 0, 149], [1, 255, 74]]
    assert sorted(os.listdir(out_dir / "validation")) == ["v.png"]

    mtime = (out_dir / "validation" / "v.png").stat().st_mtime_ns
    res = _run_prepare("--root", str(tmp_path), "--workers", "1")
    assert res.returncode == 0 and "0 converted, 2 up to date" in res.stdout
    assert (out_dir / "validation" / "v.png").stat().st_mtime_ns == mtime
    # A newer input is converted again.
    later = (out_dir / "validation" / "v.png").stat().st_mtime + 10
    os.utime(ade / "validation" / "v.png", (later, later))
    res = _run_prepare("--root", str(tmp_path), "--workers", "1")
    assert "1 converted, 1 up to date" in res.stdout


@pytest.mark.slow
def test_prepare_ade20k_names_missing_folder(tmp_path):
    res = _run_prepare("--root", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    expected = os.path.join("nowhere", "ADEChallengeData2016", "annotations", "training")
    assert expected in res.stderr and "ADEChallengeData2016.zip" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------- generated shapes


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_seg")
    make_shapes_semseg(root, **SMALL)
    return root


def test_seg_shapes_deterministic_and_valid(seg_root, tmp_path):
    ref = make_shapes_semseg(seg_root, **SMALL)
    other = make_shapes_semseg(tmp_path / "again", **SMALL)
    values, sizes = set(), set()
    for split in ("train", "val"):
        names = sorted(os.listdir(ref[f"{split}_labels"]))
        assert len(names) == SMALL[f"num_{split}"]
        assert names == sorted(os.listdir(ref[f"{split}_images"]))
        for name in names:
            img = np.asarray(Image.open(os.path.join(ref[f"{split}_images"], name)))
            lbl = np.asarray(Image.open(os.path.join(ref[f"{split}_labels"], name)))
            assert img.dtype == lbl.dtype == np.uint8 and img.ndim == 3 and lbl.ndim == 2
            assert img.shape[:2] == lbl.shape
            assert 96 <= min(lbl.shape) and max(lbl.shape) <= 160
            sizes.update(lbl.shape)
            values.update(np.unique(lbl).tolist())
            again = os.path.join(other[f"{split}_labels"], name)
            assert np.array_equal(lbl, np.asarray(Image.open(again)))
            again_img = os.path.join(other[f"{split}_images"], name)
            assert np.array_equal(img, np.asarray(Image.open(again_img)))
    assert values <= set(range(len(SEG_SHAPE_CLASSES))) | {255}
    assert 255 in values and 0 in values and len(values) >= 4
    assert any(s % 32 for s in sizes)

    label_file = os.path.join(ref["train_labels"], "train_00000.png")
    mtime = os.stat(label_file).st_mtime_ns
    make_shapes_semseg(seg_root, **SMALL)
    assert os.stat(label_file).st_mtime_ns == mtime
    changed = make_shapes_semseg(tmp_path / "again", **dict(SMALL, seed=6))
    new = np.asarray(Image.open(os.path.join(changed["train_labels"], "train_00000.png")))
    old = np.asarray(Image.open(label_file))
    assert new.shape != old.shape or not np.array_equal(new, old)


def test_seg_shapes_fill_marks_the_class():
    """Circles and rings are filled solid, squares striped and triangles speckled, each in two
    tones of the shape's colour, so that a pixel's class also shows in its neighbourhood."""
    from plainmamba.data.seg_shapes import _fill

    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    colour = (200, 40, 90)
    for kind, patterned in (
        ("circle", False),
        ("ring", False),
        ("square", True),
        ("triangle", True),
    ):
        pixels = _fill(kind, np.random.default_rng(0), mask, colour)
        assert pixels.shape == (int(mask.sum()), 3)
        tones, counts = np.unique(pixels, axis=0, return_counts=True)
        assert any(np.array_equal(t, colour) for t in tones), kind
        if not patterned:
            assert len(tones) == 1, kind
            continue
        assert len(tones) == 2 and counts.min() >= 0.3 * counts.sum(), (kind, counts)
        # the two tones differ clearly (a light colour gets a darker second tone)
        assert np.abs(tones[0] - tones[1]).max() >= 60, tones


def test_seg_shapes_register_and_load(seg_root, tmp_path):
    names = register_shapes_semseg(seg_root, prefix="seg_test")
    assert names == ("seg_test_train", "seg_test_val")
    assert register_shapes_semseg(seg_root, prefix="seg_test") == names
    meta = MetadataCatalog.get("seg_test_train")
    assert list(meta.stuff_classes) == list(SEG_SHAPE_CLASSES)
    # one fixed, distinct RGB colour a class, so ground truth and prediction match in drawings
    colors = [tuple(c) for c in meta.stuff_colors]
    assert len(set(colors)) == len(SEG_SHAPE_CLASSES)
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors)
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"

    dicts = DatasetCatalog.get("seg_test_val")
    assert len(dicts) == SMALL["num_val"]
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        assert os.path.basename(d["sem_seg_file_name"]) == stem + ".png"
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["sem_seg_file_name"])
    with pytest.raises(ValueError, match="seg_test_train"):
        register_shapes_semseg(tmp_path / "elsewhere", prefix="seg_test")

    train = shapes_semseg_dataset(seg_root, "train", prefix="seg_test", **SMALL)
    assert len(train) == SMALL["num_train"]
    with pytest.raises(ValueError, match="split"):
        shapes_semseg_dataset(seg_root, "test", prefix="seg_test", **SMALL)


# ---------------------------------------------------------- mapper label checks


def _seg_mapper(**kw):
    cfg = L(SafeDatasetMapper)(
        is_train=True,
        augmentations=[T.RandomFlip(prob=1.0)],
        image_format="RGB",
        **kw,
    )
    return instantiate(cfg)


def _pair(tmp_path, label, image_hw=None):
    h, w = image_hw or label.shape
    image = tmp_path / "img.png"
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(image)
    label_path = tmp_path / "lbl.png"
    Image.fromarray(label.astype(np.uint8)).save(label_path)
    return {"file_name": str(image), "sem_seg_file_name": str(label_path)}


def test_mapper_label_size_mismatch_names_both_files(tmp_path):
    d = _pair(tmp_path, np.zeros((40, 50)), image_hw=(41, 50))
    for kw in ({}, {"sem_seg_num_classes": 150}):
        with pytest.raises(ValueError) as info:
            _seg_mapper(**kw)(d)
        msg = str(info.value)
        assert d["file_name"] in msg and d["sem_seg_file_name"] in msg
        assert "40x50" in msg and "41x50" in msg


def test_mapper_label_values_out_of_range(tmp_path):
    label = np.zeros((30, 40))
    label[3, 4], label[5, 6], label[7, 8] = 200, 255, 149
    d = _pair(tmp_path, label)
    with pytest.raises(ValueError) as info:
        _seg_mapper(sem_seg_num_classes=150)(d)
    msg = str(info.value)
    # Only the offending value is listed; 149 and the ignore value 255 are fine.
    assert d["sem_seg_file_name"] in msg and "[200]" in msg and "[0, 150)" in msg
    # Without the number of classes only the size is checked.
    assert _seg_mapper()(d)["sem_seg"].max() == 255
    # Ignore values other than 255 are honoured.
    label[3, 4] = 0
    label[5, 6] = 254
    d = _pair(tmp_path, label)
    assert _seg_mapper(sem_seg_num_classes=150, ignore_label=254)(d)["sem_seg"].max() == 254
    with pytest.raises(ValueError, match="255"):
        _seg_mapper(sem_seg_num_classes=150)(d)


def test_mapper_missing_label_file(tmp_path):
    d = _pair(tmp_path, np.zeros((20, 20)))
    d["sem_seg_file_name"] = str(tmp_path / "labels" / "missing.png")
    with pytest.raises(ImageReadError) as info:
        _seg_mapper(sem_seg_num_classes=150)(d)
    assert info.value.path == d["sem_seg_file_name"]
    assert d["sem_seg_file_name"] in str(info.value) and "label map" in str(info.value)


def test_mapper_maps_valid_pairs(seg_root):
    names = register_shapes_semseg(seg_root, prefix="seg_test")
    mapper = instantiate(
        L(SafeDatasetMapper)(
            is_train=True,
            augmentations=[
                ResizeByRatioRange(img_scale=(256, 96), ratio_range=(0.5, 2.0)),
                T.RandomCrop_CategoryAreaConstraint("absolute", (64, 64), 0.75, 255),
                T.RandomFlip(),
                PhotoMetricDistortion(),
            ],
            image_format="RGB",
            sem_seg_num_classes=len(SEG_SHAPE_CLASSES),
        )
    )
    np.random.seed(0)
    for d in DatasetCatalog.get(names[0]):
        out = mapper(d)
        assert out["sem_seg"].dtype == torch.long
        assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
        assert out["sem_seg"].shape == out["image"].shape[1:]
        assert max(out["sem_seg"].shape) <= 64
        values = set(out["sem_seg"].unique().tolist())
        assert values <= set(range(len(SEG_SHAPE_CLASSES))) | {255}
        assert "sem_seg_file_name" not in out
