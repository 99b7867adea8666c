"""A small generated image-classification data set: one shape per image, classified by form.

Every image holds exactly one circle, ring, square, triangle or cross of random size, position
and a small tilt (triangles point up or down), in a light random colour on a dark, noisy
background of random hue. Colour says nothing about the class, so a model has to learn shapes;
the fixed light-on-dark contrast keeps the set learnable by a small model in a few hundred CPU
steps (with free contrast and rotation even a small CNN stayed at chance for 400 steps). Classes
are balanced.

Each split is written twice, as a class-folder tree ``root/<split>/<class>/<split>_<i>.png`` and
as ``root/lmdb/<split>.lmdb`` (through :func:`~plainmamba.data.classification.create_lmdb_dataset`,
same bytes), so both data paths of the classification trainer can be exercised on a CPU.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .classification import (
    create_lmdb_dataset,
    load_image_folder,
    register_classification_dataset,
)
from .paths import datasets_root
from .shapes_draw import (
    cross_outline,
    finished_with,
    make_once_per_machine,
    polygon_mask,
    shape_outline,
    write_json_atomic,
)

__all__ = [
    "CLS_SHAPE_CLASSES",
    "default_shapes_cls_root",
    "make_shapes_classification",
    "register_shapes_classification",
]

CLS_SHAPE_CLASSES = ("circle", "ring", "square", "triangle", "cross")

# Bump when the rendering or layout changes, so an old data set on disk is not taken for new.
_FORMAT_VERSION = 3
_DEFAULT_COUNTS = {"train": 2000, "val": 400}
_SPLIT_INDEX = {"train": 0, "val": 1}
_PIXEL_NOISE = 4.0
_MAX_TILT = math.radians(15)


def default_shapes_cls_root() -> Path:
    """``$DETECTRON2_DATASETS/shapes_cls``, else ``datasets/shapes_cls``."""
    return datasets_root() / "shapes_cls"


def _shape_mask(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A boolean ``size`` x ``size`` mask of one shape of class ``kind``, inside the image."""
    # Small tilts only: with free rotation and sizes a few-hundred-step CPU run cannot learn the set.
    angle = rng.uniform(-_MAX_TILT, _MAX_TILT) + (
        math.pi if kind == "triangle" and rng.random() < 0.5 else 0.0
    )
    if kind in ("circle", "ring"):
        pts = shape_outline("circle", 0.0, 0.0, 1.0, 0.0)
    elif kind == "cross":
        pts = cross_outline(0.0, 0.0, 1.0, angle)
    else:
        pts = shape_outline(kind, 0.0, 0.0, 1.0, angle)
    # Scale by the bounding box, not the side, so a rotated square still fits the image.
    span = (pts.max(0) - pts.min(0)).max()
    scale = rng.uniform(0.55, 0.85) * (size - 3) / span
    pts = pts * scale
    lo, hi = pts.min(0), pts.max(0)
    # One pixel of margin keeps the whole outline visible.
    shift = np.array(
        [rng.uniform(1 - lo[0], size - 2 - hi[0]), rng.uniform(1 - lo[1], size - 2 - hi[1])]
    )
    holes = []
    if kind == "ring":
        # The hole shows the background, so a ring is not just a differently coloured disc.
        holes.append(
            shape_outline("circle", shift[0], shift[1], scale * rng.uniform(0.45, 0.6), 0.0)
        )
    return polygon_mask(size, size, pts + shift, holes)


def _render(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    # A light shape on a dark background (random hues in both): colour stays uninformative, but
    # the fixed luminance contrast lets a small model learn shapes in a few hundred steps.
    dark = rng.uniform(0, 90, size=3)
    pixels = dark[None, None, :] + rng.normal(0, rng.uniform(2, 12), size=(size, size, 3))
    mask = _shape_mask(kind, rng, size)
    pixels[mask] = rng.uniform(160, 255, size=3)
    noisy = pixels + rng.normal(0, _PIXEL_NOISE, size=pixels.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def make_shapes_classification(
    root: str | os.PathLike,
    split: str,
    num_images: int | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> dict:
    """Generate (or reuse) one split of the classification shapes under ``root``.

    Writes ``root/<split>/<class>/<split>_<i>.png`` and ``root/lmdb/<split>.lmdb`` holding the
    same files, then ``root/meta_<split>.json``, which marks the split finished. Deterministic
    given the arguments; a finished split made with the same arguments is reused untouched.
    ``num_images`` defaults to 2000 (train) / 400 (val) and is spread evenly over the classes
    (the first ``num_images % 5`` classes get one more). Returns ``{"image_dir", "lmdb",
    "num_images", "class_names"}``.
    """
    if split not in _SPLIT_INDEX:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    num = _DEFAULT_COUNTS[split] if num_images is None else int(num_images)
    if num < len(CLS_SHAPE_CLASSES):
        raise ValueError(f"num_images must be >= {len(CLS_SHAPE_CLASSES)}, got {num}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")

    root = Path(root).resolve()
    image_dir, lmdb_path = root / split, root / "lmdb" / f"{split}.lmdb"
    result = {
        "image_dir": str(image_dir),
        "lmdb": str(lmdb_path),
        "num_images": num,
        "class_names": list(CLS_SHAPE_CLASSES),
    }
    args = {
        "format_version": _FORMAT_VERSION,
        "split": split,
        "num_images": num,
        "image_size": image_size,
        "seed": seed,
    }
    meta_path = root / f"meta_{split}.json"
    if image_dir.is_dir() and lmdb_path.is_dir() and finished_with(meta_path, args):
        return result

    # The marker goes first and comes back last, so an interrupted run is redone next time.
    meta_path.unlink(missing_ok=True)
    for old in (image_dir, lmdb_path):
        if old.exists():
            shutil.rmtree(old)
    # One stream per split, so that changing one split's count leaves the other unchanged.
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_INDEX[split]]))
    labels = rng.permutation(np.arange(num) % len(CLS_SHAPE_CLASSES))
    for kind in CLS_SHAPE_CLASSES:
        (image_dir / kind).mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(labels.tolist()):
        kind = CLS_SHAPE_CLASSES[label]
        Image.fromarray(_render(rng, kind, image_size), "RGB").save(
            image_dir / kind / f"{split}_{i:05d}.png", compress_level=1
        )
    records = load_image_folder(image_dir, CLS_SHAPE_CLASSES)
    create_lmdb_dataset(
        records, lmdb_path, CLS_SHAPE_CLASSES, map_size=64 << 20, commit_every=4096, overwrite=True
    )
    write_json_atomic(meta_path, args)
    return result


# Generation arguments of each registered prefix, to tell a repeat from a conflict.
_REGISTERED: dict[str, tuple] = {}


def register_shapes_classification(
    root: str | os.PathLike | None = None,
    prefix: str = "cls_shapes",
    *,
    num_train: int | None = None,
    num_val: int | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> tuple[str, str, str, str]:
    """Register ``{prefix}_train``, ``{prefix}_val`` (folders) and ``{prefix}_lmdb_train``,
    ``{prefix}_lmdb_val`` (LMDBs) under ``root`` (default :func:`default_shapes_cls_root`).

    Only names and metadata are registered; the files are generated by the first load of a
    split (on the first process of each machine; the others wait), so configs may call this at
    import time. Registering the same arguments again is a no-op; others raise ``ValueError``.
    """
    root = Path(root if root is not None else default_shapes_cls_root()).resolve()
    args = (str(root), num_train, num_val, image_size, seed)
    if _REGISTERED.get(prefix, args) != args:
        raise ValueError(
            f"shapes classification '{prefix}' is already registered with (root, num_train, "
            f"num_val, image_size, seed)={_REGISTERED[prefix]}; cannot register {args}"
        )
    names = []
    for fmt, tag in (("folder", ""), ("lmdb", "lmdb_")):
        for split, num in (("train", num_train), ("val", num_val)):
            make = functools.partial(
                make_shapes_classification,
                split=split,
                num_images=num,
                image_size=image_size,
                seed=seed,
            )
            prepare = functools.partial(
                make_once_per_machine, make, root, split, "register_shapes_classification"
            )
            path = root / split if fmt == "folder" else root / "lmdb" / f"{split}.lmdb"
            names.append(
                register_classification_dataset(
                    f"{prefix}_{tag}{split}",
                    path,
                    fmt=fmt,
                    class_names=CLS_SHAPE_CLASSES,
                    prepare=prepare,
                )
            )
    _REGISTERED[prefix] = args
    return tuple(names)
