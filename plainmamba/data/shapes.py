"""A small generated COCO-format instance-segmentation data set of coloured shapes.

The images are deliberately awkward for a detector's input pipeline: their widths and heights are
random (mostly odd, rarely multiples of 32), backgrounds are smooth gradients or noise, and some
images hold no objects at all. Shapes never overlap, so each annotation's polygon is exactly the
shape's visible outline and bbox/area/segmentation agree with the pixels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from .paths import datasets_root
from .shapes_draw import (
    contrasting_colour,
    finished_with,
    make_once_per_machine,
    plain_background,
    shape_outline,
    write_json_atomic,
)

__all__ = ["SHAPE_CLASSES", "make_shapes_coco", "register_shapes"]

SHAPE_CLASSES = ("circle", "square", "triangle")

# Bump when the rendering changes, so that an old data set on disk is not mistaken for a new one.
_FORMAT_VERSION = 1
_PLACEMENT_TRIES = 60


def _split_paths(root: Path) -> dict:
    ann = root / "annotations"
    return {
        "train_json": ann / "instances_train.json",
        "val_json": ann / "instances_val.json",
        "train_dir": root / "train",
        "val_dir": root / "val",
    }


def _boxes_touch(a: tuple, b: tuple, gap: float = 2.0) -> bool:
    return not (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def _place_shapes(rng: np.random.Generator, h: int, w: int, count: int) -> list[tuple]:
    """Up to ``count`` non-overlapping (category_index, vertices) pairs, all inside the image."""
    short = min(h, w)
    placed: list[tuple] = []
    boxes: list[tuple] = []
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            cat = int(rng.integers(len(SHAPE_CLASSES)))
            size = rng.uniform(0.15, 0.45) * short
            angle = rng.uniform(0, 2 * math.pi)
            pts = shape_outline(SHAPE_CLASSES[cat], 0.0, 0.0, size, angle)
            lo, hi = pts.min(0), pts.max(0)
            # Keep one pixel clear of the border so rasterised masks never touch the edge.
            cx = rng.uniform(1 - lo[0], w - 1 - hi[0])
            cy = rng.uniform(1 - lo[1], h - 1 - hi[1])
            pts = pts + np.array([cx, cy])
            box = (*pts.min(0), *pts.max(0))
            if not any(_boxes_touch(box, b) for b in boxes):
                placed.append((cat, pts))
                boxes.append(box)
                break
    return placed


def _render_split(
    split: str,
    out_dir: Path,
    rng: np.random.Generator,
    num: int,
    min_size: int,
    max_size: int,
    max_shapes: int,
    empty_fraction: float,
) -> dict:
    n_empty = int(round(empty_fraction * num))
    if empty_fraction > 0 and num >= 10:
        n_empty = max(n_empty, 1)
    n_empty = min(n_empty, num)
    empty = set(rng.choice(num, size=n_empty, replace=False).tolist()) if n_empty else set()

    images, annotations = [], []
    for i in range(num):
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        pixels, refs = plain_background(rng, h, w)
        image_id = i + 1
        file_name = f"{split}_{i:05d}.png"
        shapes = (
            [] if i in empty else _place_shapes(rng, h, w, int(rng.integers(1, max_shapes + 1)))
        )
        for cat, pts in shapes:
            flat = [round(float(v), 2) for v in pts.reshape(-1)]
            # Paint exactly the pixels pycocotools (and so Detectron2 and COCO evaluation)
            # rasterises from the polygon, so the image, the mask and the area all agree.
            rle = mask_utils.frPyObjects([flat], h, w)
            with warnings.catch_warnings():
                # pycocotools' decode trips a numpy 2 copy-keyword DeprecationWarning.
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = mask_utils.decode(rle)[..., 0].astype(bool)
            pixels[mask] = contrasting_colour(rng, refs)
            # The bbox bounds the polygon as stored (rounded), so it is exactly tight.
            x0, y0 = np.reshape(flat, (-1, 2)).min(0)
            x1, y1 = np.reshape(flat, (-1, 2)).max(0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat + 1,
                    "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [flat],
                }
            )
        Image.fromarray(pixels, "RGB").save(out_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    return {
        "info": {"description": f"PlainMamba generated shapes, {split} split"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
    }


def make_shapes_coco(
    root: str | Path,
    num_train: int = 160,
    num_val: int = 40,
    min_size: int = 96,
    max_size: int = 160,
    max_shapes: int = 4,
    empty_fraction: float = 0.05,
    seed: int = 0,
) -> dict:
    """Generate (or reuse) the shapes data set under ``root``; return its json and image paths.

    Writes ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json`` in COCO
    instances format. Deterministic given the arguments; a finished data set generated with the
    same arguments is reused without rendering anything.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    if max_shapes < 1 or num_train < 0 or num_val < 0:
        raise ValueError("max_shapes must be >= 1 and num_train/num_val >= 0")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")

    root = Path(root).resolve()
    paths = _split_paths(root)
    args = {
        "format_version": _FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "min_size": min_size,
        "max_size": max_size,
        "max_shapes": max_shapes,
        "empty_fraction": empty_fraction,
        "seed": seed,
    }
    meta_path = root / "meta.json"
    result = {k: str(v) for k, v in paths.items()}
    if (
        paths["train_json"].is_file()
        and paths["val_json"].is_file()
        and finished_with(meta_path, args)
    ):
        return result

    # meta.json marks a finished data set, so it goes first and is written again last.
    meta_path.unlink(missing_ok=True)
    paths["train_json"].parent.mkdir(parents=True, exist_ok=True)
    # Independent streams per split, so changing num_train leaves the val split unchanged.
    train_ss, val_ss = np.random.SeedSequence(seed).spawn(2)
    for split, num, ss in (("train", num_train, train_ss), ("val", num_val, val_ss)):
        out_dir = paths[f"{split}_dir"]
        out_dir.mkdir(parents=True, exist_ok=True)
        # Drop images of an earlier, different generation so the folder matches the json.
        for old in out_dir.glob(f"{split}_*.png"):
            old.unlink()
        coco = _render_split(
            split,
            out_dir,
            np.random.default_rng(ss),
            num,
            min_size,
            max_size,
            max_shapes,
            empty_fraction,
        )
        write_json_atomic(paths[f"{split}_json"], coco)
    write_json_atomic(meta_path, args)
    return result


def register_shapes(root: str | Path, prefix: str = "shapes") -> tuple[str, str]:
    """Register ``{prefix}_train`` and ``{prefix}_val`` from ``root`` with Detectron2.

    Registering the same root again is a no-op; registering a different root under a name that
    is already taken raises ``ValueError``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    root = Path(root).resolve()
    paths = _split_paths(root)
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        json_file = str(paths[f"{split}_json"])
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("json_file", None)
            if registered != json_file:
                raise ValueError(
                    f"dataset '{name}' is already registered with json_file={registered!r}; "
                    f"cannot register it again with {json_file!r} (choose another prefix)"
                )
        else:
            # A list, not the tuple: load_coco_json sets thing_classes to a list and Metadata
            # refuses a value that compares unequal to the one already set.
            register_coco_instances(
                name,
                {"thing_classes": list(SHAPE_CLASSES)},
                json_file,
                str(paths[f"{split}_dir"]),
            )
        names.append(name)
    return names[0], names[1]


def default_shapes_root() -> Path:
    """``$DETECTRON2_DATASETS/shapes`` (Detectron2's data-set root variable), else ``datasets/shapes``."""
    return datasets_root() / "shapes"


def shapes_dataset(
    root: str | Path, split: str, prefix: str = "shapes", filter_empty: bool = False, **kwargs
) -> list:
    """Dataset dicts of a shapes split, generating the data first if needed.

    For LazyConfig data loaders. In a distributed run only the first process of each machine
    writes the files; the others wait for it. ``kwargs`` go to :func:`make_shapes_coco`.
    """
    from detectron2.data import get_detection_dataset_dicts

    make_once_per_machine(make_shapes_coco, root, split, "shapes_dataset", **kwargs)
    names = register_shapes(root, prefix)
    return get_detection_dataset_dicts(names[split == "val"], filter_empty=filter_empty)
