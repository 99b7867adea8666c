"""Bad data that used to give a silent wrong result or a bare traceback (docs/input_checks.md)."""

import contextlib
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json, register_coco_instances
from PIL import Image

from helpers import REPO
from plainmamba.data import ImageReadError, SafeDatasetMapper
from plainmamba.data.classification import (
    create_lmdb_dataset,
    load_image_folder,
    load_lmdb,
    read_classification_image,
    register_classification_dataset,
)

# pycocotools decode trips a harmless numpy 2 copy-keyword DeprecationWarning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _images(folder: Path, count: int, seed: int, ext: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"{i}.{ext}")


@contextlib.contextmanager
def _warnings_of(name: str):
    """Messages of the warnings logger ``name`` logs meanwhile.

    A handler on the logger itself, not pytest's log capture: Detectron2's setup_logger (run by
    in-process training tests) stops the "plainmamba" loggers from propagating to the root.
    """
    messages: list = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def clean_catalog():
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


# ------------------------------------------------------------------------------------- LMDB


def _jpeg_lmdb(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for c, name in enumerate(("cat", "dog")):
        _images(root / name, 2, seed=c, ext="jpg")
    path = tmp_path / "db.lmdb"
    create_lmdb_dataset(load_image_folder(root), path, ["cat", "dog"])
    return path


def test_lmdb_checksum_catches_flipped_bytes(tmp_path):
    path = _jpeg_lmdb(tmp_path)
    records = load_lmdb(path)
    victim = records[1]
    source = (tmp_path / "images" / victim["key"]).read_bytes()
    data_file = path / "data.mdb"
    raw = data_file.read_bytes()
    assert source in raw
    # Flip bits in the entropy-coded data, away from markers: the JPEG still decodes.
    flipped = bytearray(source)
    changed = 0
    for i in range(len(source) // 2, len(source) - 4):
        if changed == 4:
            break
        if 0x10 < flipped[i] < 0xF0 and flipped[i - 1] != 0xFF:
            flipped[i] ^= 0x08
            changed += 1
    with Image.open(io.BytesIO(bytes(flipped))) as img:
        img.load()  # decodes: without a checksum nothing would notice
    # Every copy: a copy-on-write B-tree may keep an older page holding the same value.
    data_file.write_bytes(raw.replace(source, bytes(flipped)))

    with pytest.raises(ImageReadError) as info:
        read_classification_image(victim)
    message = str(info.value)
    assert str(path.resolve()) in message and victim["key"] in message and "CRC" in message
    read_classification_image(records[0])  # the other records are intact

    # An LMDB written before checksums existed still reads, with one warning.
    old = _jpeg_lmdb(tmp_path / "old")
    with lmdb.open(str(old)) as env, env.begin(write=True) as txn:
        assert txn.delete(b"__crc32__")
    with _warnings_of("plainmamba.data.classification") as messages:
        first = load_lmdb(old)
        load_lmdb(old)
    warned = [m for m in messages if "checksums" in m]
    assert len(warned) == 1 and str(old.resolve()) in warned[0]
    assert "crc32" not in first[0]
    assert read_classification_image(first[0]).size == (32, 24)


def _damage_btree_pages(path: Path) -> int:
    """Clear the page-type flags of every branch and leaf page of an LMDB's data file."""
    data_file = path / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    page_size = 4096
    pgno, damaged = 2, 0  # pages 0 and 1 are the meta pages
    while (pgno + 1) * page_size <= len(raw):
        flags = struct.unpack_from("<H", raw, pgno * page_size + 10)[0]
        if flags & 0x04:  # overflow: its continuation pages carry no header
            pgno += max(1, struct.unpack_from("<I", raw, pgno * page_size + 12)[0])
            continue
        if flags & 0x03:
            struct.pack_into("<H", raw, pgno * page_size + 10, 0)
            damaged += 1
        pgno += 1
    data_file.write_bytes(bytes(raw))
    return damaged


def test_lmdb_damaged_page_names_the_database(tmp_path):
    path = _jpeg_lmdb(tmp_path)
    records = load_lmdb(path)
    assert _damage_btree_pages(path) > 0
    with pytest.raises(ImageReadError) as info:
        read_classification_image(records[0])
    message = str(info.value)
    assert str(path.resolve()) in message and records[0]["key"] in message
    assert "CorruptedError" in message
    with pytest.raises(ValueError, match=re.escape(str(path.resolve())) + ".*damaged"):
        load_lmdb(path)


# ------------------------------------------------------------- 16-bit label maps and images


def _seg_mapper(**kw):
    return instantiate(
        L(SafeDatasetMapper)(
            is_train=True, augmentations=[T.RandomFlip(prob=0.0)], image_format="RGB", **kw
        )
    )


def _seg_pair(tmp_path: Path, label: np.ndarray) -> dict:
    h, w = label.shape
    image = tmp_path / "img.png"
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(image)
    label_path = tmp_path / "lbl.png"
    Image.fromarray(label).save(label_path)
    return {"file_name": str(image), "sem_seg_file_name": str(label_path), "height": h, "width": w}


def test_16bit_label_map_is_read_at_its_depth(tmp_path):
    label = np.zeros((12, 16), np.uint16)
    label[2, 3], label[4, 5], label[6, 7] = 300, 255, 4
    d = _seg_pair(tmp_path, label)
    with pytest.raises(ValueError) as info:
        _seg_mapper(sem_seg_num_classes=5)(d)
    message = str(info.value)
    assert d["sem_seg_file_name"] in message and "[300]" in message
    assert "[0, 5)" in message and "ignore value 255" in message
    # Without the number of classes values beyond 8 bits are refused too.
    with pytest.raises(ValueError, match=re.escape(d["sem_seg_file_name"]) + ".*300"):
        _seg_mapper()(d)

    label[2, 3] = 3
    out = _seg_mapper(sem_seg_num_classes=5)(_seg_pair(tmp_path, label))
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label.astype(np.int64))

    # A palette label map holds class indices (as the evaluator reads them), not colours.
    indices = np.zeros((12, 16), np.uint8)
    indices[:, 8:] = 2
    d = _seg_pair(tmp_path, indices)
    img = Image.fromarray(indices, "P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    img.save(d["sem_seg_file_name"])
    out = _seg_mapper(sem_seg_num_classes=5)(d)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), indices.astype(np.int64))


def test_16bit_grayscale_image_is_scaled(tmp_path):
    ramp = np.linspace(0, 65535, 12 * 16).reshape(12, 16).astype(np.uint16)
    d = _seg_pair(tmp_path, np.zeros((12, 16), np.uint8))
    Image.fromarray(ramp).save(d["file_name"])
    expected = np.round(ramp / 257.0).astype(np.uint8)
    image = _seg_mapper()(d)["image"].numpy()
    for channel in image:
        np.testing.assert_array_equal(channel, expected)
    rgb = np.asarray(read_classification_image({"file_name": d["file_name"], "label": 0}))
    np.testing.assert_array_equal(rgb[..., 0], expected)

    floats = tmp_path / "float.tif"
    Image.fromarray(ramp.astype(np.float32)).save(floats)
    with pytest.raises(ImageReadError, match=re.escape(str(floats))):
        read_classification_image({"file_name": str(floats), "label": 0})


# ---------------------------------------------------------------- classification folders


def test_empty_class_folders_do_not_shift_labels(tmp_path, clean_catalog):
    train, val = tmp_path / "train", tmp_path / "val"
    for c in ("a", "b", "d"):
        _images(train / c, 2, seed=ord(c))
        _images(val / c, 1, seed=ord(c) + 100)
    (val / "c").mkdir()  # empty, between classes: used to shift d from 2 to 3
    (train / "0_first").mkdir()  # empty, first: used to shift every label by one

    with _warnings_of("plainmamba.data.classification") as messages:
        assert {r["image_id"].split("/")[0]: r["label"] for r in load_image_folder(val)} == {
            "a": 0,
            "b": 1,
            "d": 2,
        }
    assert any(str(val / "c") in m for m in messages)

    clean_catalog.extend(["t_chk_train", "t_chk_val"])
    register_classification_dataset("t_chk_train", train)
    register_classification_dataset("t_chk_val", val, classes_from="t_chk_train")
    with _warnings_of("plainmamba.data.classification") as messages:
        assert sorted({r["label"] for r in DatasetCatalog.get("t_chk_train")}) == [0, 1, 2]
        labels = {r["image_id"].split("/")[0]: r["label"] for r in DatasetCatalog.get("t_chk_val")}
    assert labels == {"a": 0, "b": 1, "d": 2}
    assert MetadataCatalog.get("t_chk_val").class_ids == ["a", "b", "d"]
    assert MetadataCatalog.get("t_chk_train").num_classes == 3
    assert any(str(train / "0_first") in m for m in messages)
    assert any(str(val / "c") in m for m in messages)

    # A val class with images that train lacks stops the loading of train, before training.
    _images(val / "e", 1, seed=9)
    with pytest.raises(ValueError) as info:
        DatasetCatalog.get("t_chk_train")
    message = str(info.value)
    assert str(train) in message and str(val) in message and ": e." in message


@pytest.mark.slow
def test_lmdb_tool_checks_train_and_val_classes(tmp_path):
    root = tmp_path / "imagenet"
    for c in ("a", "b"):
        _images(root / "train" / c, 1, seed=ord(c))
        _images(root / "val" / c, 1, seed=ord(c))
    (root / "train" / "0_empty").mkdir()
    _images(root / "val" / "z", 1, seed=3)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "create_lmdb_dataset.py"), "--imagenet-root", root],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in log, log
    assert str(root / "train" / "0_empty") in log and "warning" in log
    assert re.search(re.escape(str(root / "val")) + ".*" + re.escape(str(root / "train")), log)
    assert log.rstrip().endswith(": z"), log
    assert not (root / "lmdb" / "train.lmdb").exists()


# ---------------------------------------------------------------------------------- COCO


def _coco(tmp_path: Path, annotations: list) -> Path:
    images = []
    for i in (1, 2):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "height": 20, "width": 30})
    for k, ann in enumerate(annotations, 1):
        ann.update(id=k, category_id=1, iscrowd=0, area=50.0)
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}
        )
    )
    return path


def test_empty_segmentation_is_dropped_with_a_warning(tmp_path):
    square = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]
    path = _coco(
        tmp_path,
        [
            {"image_id": 1, "bbox": [5.0, 5.0, 10.0, 10.0], "segmentation": []},
            {"image_id": 2, "bbox": [5.0, 5.0, 10.0, 10.0], "segmentation": square},
            {"image_id": 2, "bbox": [1.0, 1.0, 4.0, 4.0], "segmentation": []},
        ],
    )
    dicts = load_coco_json(str(path), str(tmp_path))
    mapper = instantiate(
        L(SafeDatasetMapper)(
            is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True
        )
    )
    with _warnings_of("plainmamba.data.mapper") as messages:
        batch = [mapper(d) for d in dicts]
    # Mask R-CNN needs gt_masks on every image of a batch ("Cannot find field 'gt_masks'").
    assert all(b["instances"].has("gt_masks") for b in batch)
    assert [len(b["instances"]) for b in batch] == [0, 1]
    warned = [m for m in messages if "dropped" in m]
    assert len(warned) == 2
    assert str(tmp_path / "im1.png") in warned[0] and "usable mask" in warned[0]
    assert str(tmp_path / "im2.png") in warned[1]


def test_truncated_annotation_json_names_the_file(tmp_path, clean_catalog):
    path = _coco(tmp_path, [{"image_id": 1, "bbox": [5.0, 5.0, 10.0, 10.0], "segmentation": []}])
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    clean_catalog.append("t_chk_truncated")
    register_coco_instances("t_chk_truncated", {}, str(path), str(tmp_path))
    with pytest.raises(json.JSONDecodeError) as info:
        DatasetCatalog.get("t_chk_truncated")
    assert str(path) in str(info.value) and "line 1 column" in str(info.value)
