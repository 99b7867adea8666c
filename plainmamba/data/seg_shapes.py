"""A small generated semantic-segmentation data set of shapes on textured backgrounds.

Each pixel is labelled background, circle, square, triangle or ring. A shape's colour is random
and backgrounds are gradients, noise, stripes or checkerboards, so a model has to use shape,
fill and context, not a colour lookup. Each class has its own fill, in two tones of the shape's
colour: circles and rings are solid, squares striped (period 8-12 px, any angle) and
triangles speckled (2 x 2-px blocks of random tone). With the outline as the only cue, a small
model trained from scratch for a few CPU minutes labelled most shapes one class (a pixel can
tell a triangle from a square only from context as wide as the shape); the fill gives each
pixel a local cue, as the appearance of real classes does. Shapes may overlap (later ones cover
earlier ones) and rings show the background through their hole. As in ADE20K, some pixels are
unlabelled: a thin band of the ignore value 255 runs along the outline of some shapes. Image
sizes are random and mostly odd.

The layout is Detectron2's ``load_sem_seg`` one: ``images/{train,val}/<name>.png`` and
``labels/{train,val}/<name>.png`` (uint8 label maps).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .paths import datasets_root
from .shapes_draw import (
    contrasting_colour,
    disc_mask,
    finished_with,
    make_once_per_machine,
    polygon_mask,
    shape_outline,
    textured_background,
    write_json_atomic,
)

__all__ = [
    "SEG_SHAPE_CLASSES",
    "SEG_IGNORE_LABEL",
    "default_shapes_semseg_root",
    "make_shapes_semseg",
    "register_shapes_semseg",
    "shapes_semseg_dataset",
]

SEG_SHAPE_CLASSES = ("background", "circle", "square", "triangle", "ring")
SEG_IGNORE_LABEL = 255

# Bump when the rendering changes, so that an old data set on disk is not mistaken for a new one.
_FORMAT_VERSION = 3
_MAX_SHAPES = 4
# Share of shapes whose outline is marked unlabelled.
_IGNORE_BORDER_PROB = 0.5


def _split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    return root / "images" / split, root / "labels" / split


def _shape_mask(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A boolean HxW mask of one shape placed fully inside the image."""
    short = min(h, w)
    size = rng.uniform(0.2, 0.55) * short
    angle = rng.uniform(0, 2 * math.pi)
    # Centre so the circumscribed circle stays one pixel inside the image.
    if kind in ("circle", "ring"):
        radius = size / 2
    else:
        radius = size / math.sqrt(3 if kind == "triangle" else 2)
    cx = rng.uniform(1 + radius, max(w - 1 - radius, 1 + radius))
    cy = rng.uniform(1 + radius, max(h - 1 - radius, 1 + radius))
    if kind == "circle":
        return disc_mask(h, w, cx, cy, size / 2)
    if kind == "ring":
        return disc_mask(h, w, cx, cy, size / 2, hole=size / 2 * rng.uniform(0.4, 0.65))
    return polygon_mask(h, w, shape_outline(kind, cx, cy, size, angle))


def _fill(kind: str, rng: np.random.Generator, mask: np.ndarray, colour: tuple) -> np.ndarray:
    """The (N, 3) float colours of the ``mask`` pixels of a shape of class ``kind``: solid for
    circles and rings, stripes for squares, speckle for triangles."""
    base = np.asarray(colour, np.float64)
    # The second tone: darker for a light colour, lighter for a dark one.
    other = np.where(base > 127, base * 0.45, base + (255 - base) * 0.55)
    ys, xs = np.nonzero(mask)
    if kind == "square":
        angle = rng.uniform(0, math.pi)
        # Coarse next to the triangles' 2-px speckle: stripes of 4-7 px and speckle took a third
        # of each other's pixels in the quick start (GETTING_STARTED.md).
        period = rng.uniform(8, 12)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        mix = np.sin(2 * math.pi * t / period) > 0
    elif kind == "triangle":
        # Speckle: each 2x2 block of pixels takes one of the two tones at random.
        blocks = rng.random((mask.shape[0] // 2 + 1, mask.shape[1] // 2 + 1)) < 0.5
        mix = blocks[ys // 2, xs // 2]
    else:
        mix = np.zeros(len(ys), bool)
    return np.where(mix[:, None], other[None, :], base[None, :])


def _render_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    pixels, refs = textured_background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    ignore = np.zeros((h, w), bool)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(int(rng.integers(1, _MAX_SHAPES + 1))):
        cls = int(rng.integers(1, len(SEG_SHAPE_CLASSES)))
        mask = _shape_mask(SEG_SHAPE_CLASSES[cls], rng, h, w)
        if not mask.any():
            continue
        colour = contrasting_colour(rng, refs)
        fill = _fill(SEG_SHAPE_CLASSES[cls], rng, mask, colour)
        fill += rng.normal(0, 6, size=fill.shape)
        pixels[mask] = np.clip(fill, 0, 255).round().astype(np.uint8)
        label[mask] = cls
        # A shape drawn on top relabels what it covers, including an earlier ignore band.
        ignore &= ~mask
        if rng.random() < _IGNORE_BORDER_PROB:
            m8 = mask.astype(np.uint8)
            band = cv2.dilate(m8, kernel).astype(bool) & ~cv2.erode(m8, kernel).astype(bool)
            ignore |= band
    label[ignore] = SEG_IGNORE_LABEL
    return pixels, label


def _render_split(
    split: str, root: Path, rng: np.random.Generator, num: int, min_size: int, max_size: int
) -> None:
    image_dir, label_dir = _split_dirs(root, split)
    for d in (image_dir, label_dir):
        d.mkdir(parents=True, exist_ok=True)
        # Drop files of an earlier, different generation so the folders hold exactly this one.
        for old in d.glob(f"{split}_*.png"):
            old.unlink()
    for i in range(num):
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        pixels, label = _render_pair(rng, h, w)
        name = f"{split}_{i:05d}.png"
        Image.fromarray(pixels, "RGB").save(image_dir / name, compress_level=1)
        Image.fromarray(label, "L").save(label_dir / name, compress_level=1)


def make_shapes_semseg(
    root: str | Path,
    num_train: int = 120,
    num_val: int = 60,
    min_size: int = 96,
    max_size: int = 160,
    seed: int = 0,
) -> dict:
    """Generate (or reuse) the segmentation shapes under ``root``; return its folders.

    Writes ``root/images/{train,val}/*.png`` (RGB) and ``root/labels/{train,val}/*.png`` (uint8,
    values ``0..len(SEG_SHAPE_CLASSES)-1`` and 255). Deterministic given the arguments; a
    finished data set generated with the same arguments is reused without rendering anything.
    Returns ``{"train_images", "train_labels", "val_images", "val_labels"}`` as strings.
    """
    if not 8 <= min_size <= max_size:
        raise ValueError(f"need 8 <= min_size <= max_size, got {min_size}, {max_size}")
    if num_train < 1 or num_val < 1:
        # load_sem_seg refuses an empty folder.
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")

    root = Path(root).resolve()
    result = {}
    for split in ("train", "val"):
        image_dir, label_dir = _split_dirs(root, split)
        result[f"{split}_images"], result[f"{split}_labels"] = str(image_dir), str(label_dir)
    args = {
        "format_version": _FORMAT_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "min_size": min_size,
        "max_size": max_size,
        "seed": seed,
    }
    meta_path = root / "meta.json"
    if all(Path(d).is_dir() for d in result.values()) and finished_with(meta_path, args):
        return result

    # meta.json marks a finished data set, so it goes first and is written again last.
    root.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    # Independent streams per split, so changing num_train leaves the val split unchanged.
    train_ss, val_ss = np.random.SeedSequence(seed).spawn(2)
    for split, num, ss in (("train", num_train, train_ss), ("val", num_val, val_ss)):
        _render_split(split, root, np.random.default_rng(ss), num, min_size, max_size)
    write_json_atomic(meta_path, args)
    return result


def register_shapes_semseg(root: str | Path, prefix: str = "shapes_seg") -> tuple[str, str]:
    """Register ``{prefix}_train`` and ``{prefix}_val`` from ``root`` with Detectron2.

    Dicts come from Detectron2's ``load_sem_seg``; metadata holds ``stuff_classes``,
    ``stuff_colors`` (fixed), ``ignore_label=255`` and ``evaluator_type="sem_seg"``. Registering
    the same root again is a no-op; registering a different root under a name that is already
    taken raises ``ValueError``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_sem_seg
    from detectron2.utils.colormap import colormap

    root = Path(root).resolve()
    # Fixed colours (Detectron2's palette, as the demo draws them), so that ground truth and
    # prediction drawn side by side show a class in the same colour.
    colors = colormap(rgb=True, maximum=255)[: len(SEG_SHAPE_CLASSES)].astype(int).tolist()
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        image_dir, label_dir = (str(p) for p in _split_dirs(root, split))
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("sem_seg_root", None)
            if registered != label_dir:
                raise ValueError(
                    f"dataset '{name}' is already registered with sem_seg_root={registered!r}; "
                    f"cannot register it again with {label_dir!r} (choose another prefix)"
                )
        else:
            DatasetCatalog.register(
                name,
                lambda x=image_dir, y=label_dir: load_sem_seg(y, x, gt_ext="png", image_ext="png"),
            )
            MetadataCatalog.get(name).set(
                stuff_classes=list(SEG_SHAPE_CLASSES),
                stuff_colors=colors,
                image_root=image_dir,
                sem_seg_root=label_dir,
                evaluator_type="sem_seg",
                ignore_label=SEG_IGNORE_LABEL,
            )
        names.append(name)
    return names[0], names[1]


def default_shapes_semseg_root() -> Path:
    """``$DETECTRON2_DATASETS/shapes_seg``, else ``datasets/shapes_seg``."""
    return datasets_root() / "shapes_seg"


def shapes_semseg_dataset(
    root: str | Path, split: str, prefix: str = "shapes_seg", **kwargs
) -> list[dict]:
    """Dataset dicts of a segmentation-shapes split, generating the data first if needed.

    For LazyConfig data loaders. In a distributed run only the first process of each machine
    writes the files; the others wait for it. ``kwargs`` go to :func:`make_shapes_semseg`.
    """
    from detectron2.data import DatasetCatalog

    make_once_per_machine(make_shapes_semseg, root, split, "shapes_semseg_dataset", **kwargs)
    names = register_shapes_semseg(root, prefix)
    return DatasetCatalog.get(names[split == "val"])
