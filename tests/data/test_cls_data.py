"""The classification data layer: image folders, LMDB packing and reading, the generated shapes."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from helpers import REPO

from plainmamba.data import ImageReadError
from plainmamba.data.classification import (
    create_lmdb_dataset,
    load_annotation_list,
    load_image_folder,
    load_lmdb,
    read_class_file,
    read_classification_image,
    read_lmdb_metadata,
    register_classification_dataset,
    register_imagenet,
)
from plainmamba.data.cls_shapes import (
    CLS_SHAPE_CLASSES,
    make_shapes_classification,
    register_shapes_classification,
)

TOOL = REPO / "tools" / "create_lmdb_dataset.py"
# Created in this order on purpose: sorted order differs.
CLASSES = ("b_dog", "a_cat", "c_fish")


def _run_tool(*args):
    proc = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    return proc.returncode, proc.stdout + proc.stderr


def _write_tree(root: Path, rng: np.random.Generator, classes=CLASSES, per_class=3) -> None:
    """A small class-folder tree of mixed formats, modes and sizes (one nested folder)."""
    for c, name in enumerate(classes):
        folder = root / name
        (folder / "nested").mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(9, 40, size=2))
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
            kind = (c * per_class + i) % 5
            if kind == 0:
                img.save(folder / f"{name}_{i}.png")
            elif kind == 1:
                img.save(folder / f"{name}_{i}.JPEG", quality=90)
            elif kind == 2:
                img.convert("L").save(folder / "nested" / f"{name}_{i}.jpg")
            elif kind == 3:
                rgba = img.convert("RGBA")
                rgba.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
                rgba.save(folder / f"{name}_{i}.png")
            else:
                img.convert("P").save(folder / f"{name}_{i}.png")
        (folder / "notes.txt").write_text("not an image")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    _write_tree(root, np.random.default_rng(1))
    return root


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.mark.slow
def test_cli_round_trip(tmp_path):
    root = tmp_path / "imagenet"
    _write_tree(root / "train", np.random.default_rng(2))
    # val lacks a class: it must still use train's class order.
    _write_tree(root / "val", np.random.default_rng(3), classes=("c_fish", "a_cat"), per_class=2)
    rc, out = _run_tool("--imagenet-root", root, "--verify")
    assert rc == 0, out
    assert "wrote 9 images of 3 classes" in out and "wrote 4 images of 3 classes" in out

    order = sorted(CLASSES)
    modes = set()
    for split, count in (("train", 9), ("val", 4)):
        path = root / "lmdb" / f"{split}.lmdb"
        assert read_lmdb_metadata(path) == {
            "format": "plainmamba-cls-lmdb-v1",
            "count": count,
            "class_names": order,
        }
        records = load_lmdb(path)
        assert len(records) == count
        # Raw bytes first, through a handle of our own: py-lmdb allows one open per process.
        with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
            stored = {r["key"]: txn.get(r["key"].encode()) for r in records}
        for r in records:
            src = root / split / r["image_id"]
            assert r["file_name"] == f"{path.resolve()}::{r['key']}"
            assert r["label"] == order.index(r["image_id"].split("/")[0])
            assert stored[r["key"]] == src.read_bytes()
            with Image.open(src) as ref:
                modes.add(ref.mode)
                expected = np.asarray(ref.convert("RGB"))
            np.testing.assert_array_equal(_pixels(read_classification_image(r)), expected)
            folder_record = {"file_name": str(src), "label": r["label"]}
            np.testing.assert_array_equal(
                _pixels(read_classification_image(folder_record)), expected
            )
    assert modes == {"RGB", "L", "RGBA", "P"}


def test_class_index_from_folders_and_class_file(tree, tmp_path):
    records = load_image_folder(tree)
    assert len(records) == 9
    order = sorted(CLASSES)
    for r in records:
        assert Path(r["file_name"]).is_file() and os.path.isabs(r["file_name"])
        assert r["label"] == order.index(r["image_id"].split("/")[0])
    assert any("/nested/" in r["image_id"] for r in records)
    assert {Path(r["file_name"]).suffix for r in records} == {".png", ".JPEG", ".jpg"}

    class_file = tmp_path / "classes.txt"
    class_file.write_text("# label order\nc_fish  a fish\n\nb_dog\na_cat the cat\nd_extra\n")
    names = read_class_file(class_file)
    assert names == ["c_fish", "b_dog", "a_cat", "d_extra"]
    for r in load_image_folder(tree, names):
        assert r["label"] == names.index(r["image_id"].split("/")[0])

    with pytest.raises(ValueError, match="b_dog"):
        load_image_folder(tree, ["a_cat", "c_fish"])
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (4, 4)).save(loose / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match=re.escape(str(loose)) + ".*one folder per class"):
        load_image_folder(loose)

    ann = tmp_path / "train.txt"
    ann.write_text("b_dog/b_dog_0.png 1\nc_fish/with space.png 2\n")
    listed = load_annotation_list(tree, ann)
    assert [(r["image_id"], r["label"]) for r in listed] == [
        ("b_dog/b_dog_0.png", 1),
        ("c_fish/with space.png", 2),
    ]
    assert listed[0]["file_name"] == str(tree.resolve() / "b_dog" / "b_dog_0.png")

    # Tiny initial map and one image per transaction: the map has to grow several times.
    out = tmp_path / "x.lmdb"
    assert create_lmdb_dataset(records, out, order, map_size=1 << 15, commit_every=1, verify=True)
    assert [(r["image_id"], r["label"]) for r in load_lmdb(out)] == [
        (r["image_id"], r["label"]) for r in records
    ]
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        create_lmdb_dataset(records, out, order)


def test_bad_records_and_files(tree, tmp_path):
    records = load_image_folder(tree)
    path = tmp_path / "db.lmdb"
    create_lmdb_dataset(records, path, sorted(CLASSES))
    lmdb_records = load_lmdb(path)
    victim = lmdb_records[4]
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(victim["key"].encode(), b"\x89PNG garbage" * 10)
    env.close()
    with pytest.raises(ImageReadError) as info:
        read_classification_image(victim)
    assert str(path.resolve()) in str(info.value) and victim["key"] in str(info.value)
    # The other records are unaffected.
    read_classification_image(lmdb_records[3])

    missing = dict(lmdb_records[0], key="a_cat/missing.png")
    with pytest.raises(
        ImageReadError, match=re.escape(f"a_cat/missing.png' in LMDB {path.resolve()}")
    ):
        read_classification_image(missing)

    truncated = tree / "a_cat" / "truncated.jpg"
    good_jpeg = next(r["file_name"] for r in records if r["file_name"].endswith(".JPEG"))
    truncated.write_bytes(Path(good_jpeg).read_bytes()[:200])
    with pytest.raises(ImageReadError, match=re.escape(str(truncated))):
        read_classification_image({"file_name": str(truncated), "label": 0})
    with pytest.raises(ImageReadError, match="nothere.png"):
        read_classification_image({"file_name": str(tree / "nothere.png"), "label": 0})

    with pytest.raises(FileNotFoundError, match="nope.lmdb"):
        load_lmdb(tmp_path / "nope.lmdb")
    not_lmdb = tmp_path / "plain"
    not_lmdb.mkdir()
    (not_lmdb / "data.mdb").write_bytes(b"not an lmdb at all" * 100)
    with pytest.raises(ValueError, match=re.escape(str(not_lmdb))):
        load_lmdb(not_lmdb)

    # Packing: the full check catches the truncated JPEG; on_bad leaves it out.
    with pytest.raises(ImageReadError, match=re.escape(str(truncated))):
        create_lmdb_dataset(
            load_image_folder(tree), tmp_path / "t.lmdb", sorted(CLASSES), full_decode=True
        )
    bad = []
    n = create_lmdb_dataset(
        load_image_folder(tree),
        tmp_path / "t.lmdb",
        sorted(CLASSES),
        full_decode=True,
        on_bad=lambda r, e: bad.append(r["file_name"]),
    )
    assert n == 9 and bad == [str(truncated)]
    assert len(load_lmdb(tmp_path / "t.lmdb")) == 9


def test_released_lmdb_with_annotation_list(tree, tmp_path):
    # The released tool's layout: base-name keys, a "total" key, no labels.
    records = load_image_folder(tree)
    path = tmp_path / "released"
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for r in records:
            txn.put(os.path.basename(r["file_name"]).encode(), Path(r["file_name"]).read_bytes())
        txn.put(b"total", str(len(records)).encode())
    with pytest.raises(ValueError, match="released PlainMamba tool.*ann_file"):
        load_lmdb(path)
    ann = tmp_path / "train.txt"
    ann.write_text("".join(f"{r['image_id']} {r['label']}\n" for r in records))
    got = load_lmdb(path, ann)
    assert [(g["key"], g["label"]) for g in got] == [
        (os.path.basename(r["file_name"]), r["label"]) for r in records
    ]
    for g, r in zip(got, records):
        np.testing.assert_array_equal(
            np.asarray(read_classification_image(g)), np.asarray(read_classification_image(r))
        )


@pytest.mark.slow
def test_cli_bad_image_fails_with_path(tree, tmp_path):
    garbage = tree / "b_dog" / "broken.jpg"
    garbage.write_bytes(b"this is no jpeg" * 20)
    out = tmp_path / "bad.lmdb"
    rc, log = _run_tool("--image-folder", tree, "--output", out)
    assert rc != 0 and str(garbage) in log and "Traceback" not in log, log
    assert not out.exists()
    rc, log = _run_tool("--image-folder", tree, "--output", out, "--skip-bad")
    assert rc == 0 and "skipped 1 unreadable image" in log and str(garbage) in log, log
    assert len(load_lmdb(out)) == 9
    rc, log = _run_tool("--image-folder", tmp_path / "absent", "--output", out)
    assert rc == 1 and "absent" in log and "Traceback" not in log, log


class _LmdbSet(torch.utils.data.Dataset):
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        img = read_classification_image(self.records[i])
        return self.records[i]["label"], int(np.asarray(img).sum()), os.getpid()


def test_lmdb_through_dataloader_workers(tree, tmp_path):
    path = tmp_path / "db.lmdb"
    create_lmdb_dataset(load_image_folder(tree), path, sorted(CLASSES))
    records = load_lmdb(path) * 3
    # Open the environment in the parent first, so that the workers inherit a cached handle.
    sums = [int(np.asarray(read_classification_image(r)).sum()) for r in records]
    loader = torch.utils.data.DataLoader(
        _LmdbSet(records), batch_size=None, num_workers=2, shuffle=False
    )
    got = list(loader)
    assert [g[0] for g in got] == [r["label"] for r in records]
    assert [g[1] for g in got] == sums
    assert os.getpid() not in {g[2] for g in got}


@pytest.fixture
def clean_catalog():
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_shapes_classification(tmp_path, clean_catalog):
    root = tmp_path / "shapes_cls"
    info = make_shapes_classification(root, "train", num_images=20, image_size=32)
    make_shapes_classification(root, "val", num_images=11, image_size=32)
    assert info["class_names"] == list(CLS_SHAPE_CLASSES)
    for split, n in (("train", 20), ("val", 11)):
        folder = load_image_folder(root / split, CLS_SHAPE_CLASSES)
        packed = load_lmdb(root / "lmdb" / f"{split}.lmdb")
        counts = np.bincount([r["label"] for r in folder], minlength=len(CLS_SHAPE_CLASSES))
        assert counts.sum() == n and counts.max() - counts.min() <= 1
        assert [(r["image_id"], r["label"]) for r in folder] == [
            (r["image_id"], r["label"]) for r in packed
        ]
        for a, b in zip(folder, packed):
            img = read_classification_image(a)
            assert img.size == (32, 32)
            np.testing.assert_array_equal(np.asarray(img), np.asarray(read_classification_image(b)))

    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    start = time.perf_counter()
    make_shapes_classification(root, "train", num_images=20, image_size=32)
    assert time.perf_counter() - start < 0.5
    assert [p.stat().st_mtime_ns for p in sorted(p for p in root.rglob("*") if p.is_file())] == (
        stamps
    )

    # Another seed renders other pixels but keeps the layout.
    other = make_shapes_classification(
        tmp_path / "other", "train", num_images=20, image_size=32, seed=5
    )
    a = load_image_folder(root / "train", CLS_SHAPE_CLASSES)
    b = load_image_folder(other["image_dir"], CLS_SHAPE_CLASSES)
    assert len(a) == len(b)
    assert any(
        not np.array_equal(
            np.asarray(read_classification_image(x)), np.asarray(read_classification_image(y))
        )
        for x, y in zip(a, b)
    )

    # Registration reads nothing; the first load generates the split.
    lazy = tmp_path / "lazy"
    names = register_shapes_classification(
        lazy, "t_cls_shapes", num_train=10, num_val=5, image_size=32
    )
    clean_catalog.extend(names)
    assert names == (
        "t_cls_shapes_train",
        "t_cls_shapes_val",
        "t_cls_shapes_lmdb_train",
        "t_cls_shapes_lmdb_val",
    )
    assert not lazy.exists()
    meta = MetadataCatalog.get("t_cls_shapes_lmdb_val")
    assert meta.thing_classes == list(CLS_SHAPE_CLASSES) and meta.num_classes == 5
    assert meta.evaluator_type == "classification" and meta.format == "lmdb"
    val = DatasetCatalog.get("t_cls_shapes_lmdb_val")
    assert len(val) == 5 and "lmdb" in val[0]
    assert sorted(r["label"] for r in DatasetCatalog.get("t_cls_shapes_val")) == [0, 1, 2, 3, 4]
    assert len(DatasetCatalog.get("t_cls_shapes_train")) == 10
    assert (
        register_shapes_classification(lazy, "t_cls_shapes", num_train=10, num_val=5, image_size=32)
        == names
    )
    with pytest.raises(ValueError, match="already registered"):
        register_shapes_classification(lazy, "t_cls_shapes", num_train=12, num_val=5)


def test_registration(tree, tmp_path, clean_catalog):
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    clean_catalog.extend(["t_cls_folder", "t_cls_lmdb"])
    register_classification_dataset("t_cls_folder", tree)
    assert MetadataCatalog.get("t_cls_folder").get("thing_classes", None) is None
    assert len(DatasetCatalog.get("t_cls_folder")) == 9
    meta = MetadataCatalog.get("t_cls_folder")
    assert meta.class_ids == sorted(CLASSES) and meta.thing_classes == sorted(CLASSES)
    assert meta.num_classes == 3 and meta.evaluator_type == "classification"
    assert register_classification_dataset("t_cls_folder", tree) == "t_cls_folder"
    with pytest.raises(ValueError, match="already registered"):
        register_classification_dataset("t_cls_folder", tree, class_names=sorted(CLASSES))

    # An LMDB with a subset of ImageNet's synsets: labels follow the given 1k order.
    inet = tmp_path / "inet"
    picked = [synsets[7], synsets[5]]
    _write_tree(inet / "train", np.random.default_rng(4), classes=picked, per_class=2)
    create_lmdb_dataset(
        load_image_folder(inet / "train"), inet / "lmdb" / "train.lmdb", sorted(picked)
    )
    register_classification_dataset("t_cls_lmdb", inet / "lmdb" / "train.lmdb", "lmdb", synsets)
    assert sorted({r["label"] for r in DatasetCatalog.get("t_cls_lmdb")}) == [5, 7]

    missing = tmp_path / "absent"
    # Configs loaded by earlier tests registered the ImageNet names under the default root.
    for name in ("imagenet_train", "imagenet_val", "imagenet_lmdb_train", "imagenet_lmdb_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    paths = register_imagenet(missing)
    clean_catalog.extend(paths)
    assert paths["imagenet_lmdb_val"] == str(missing.resolve() / "lmdb" / "val.lmdb")
    meta = MetadataCatalog.get("imagenet_train")
    assert meta.num_classes == 1000 and meta.thing_classes[0] == "tench"
    assert meta.class_ids == list(synsets)
    with pytest.raises(FileNotFoundError, match="absent"):
        DatasetCatalog.get("imagenet_val")
    assert register_imagenet(missing) == paths
    with pytest.raises(ValueError, match="already registered"):
        register_imagenet(inet)
