"""Drawing and bookkeeping shared by the generated shapes data sets.

:mod:`~plainmamba.data.shapes` (detection), :mod:`~plainmamba.data.seg_shapes` (semantic
segmentation) and :mod:`~plainmamba.data.cls_shapes` (classification) draw their images with these
helpers. Every function that draws takes a ``numpy.random.Generator`` and consumes its numbers in a
fixed order, so a data set is a pure function of its generation arguments and seed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CIRCLE_VERTICES",
    "MIN_CONTRAST",
    "contrasting_colour",
    "cross_outline",
    "disc_mask",
    "finished_with",
    "make_once_per_machine",
    "plain_background",
    "polygon_mask",
    "shape_outline",
    "textured_background",
    "write_json_atomic",
]

# Vertices of a circle drawn as a polygon.
CIRCLE_VERTICES = 32
# Minimum RGB distance between a shape's colour and every background colour it may sit on.
MIN_CONTRAST = 120.0


def plain_background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list]:
    """An HxWx3 uint8 gradient or noise background and the colours a shape must contrast with."""
    base = rng.uniform(0, 255, size=3)
    if rng.random() < 0.5:
        # A gentle linear gradient; the end colour stays near the start so one shape colour can
        # contrast with the whole of it.
        end = np.clip(base + rng.uniform(-50, 50, size=3), 0, 255)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        img = base[None, None, :] * (1 - t[..., None]) + end[None, None, :] * t[..., None]
        refs = [base, end]
    else:
        std = rng.uniform(5, 25)
        img = base[None, None, :] + rng.normal(0, std, size=(h, w, 3))
        # Noise spreads the background by about 2 std either way; demand contrast with that too.
        refs = [np.clip(base + s * 2 * std, 0, 255) for s in (-1.0, 0.0, 1.0)]
    return np.clip(img, 0, 255).round().astype(np.uint8), refs


def textured_background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list]:
    """A gradient, noise, stripe or checkerboard background (a quarter each) and the colours a
    shape must contrast with."""
    kind = rng.integers(4)
    if kind < 2:
        return plain_background(rng, h, w)
    a = rng.uniform(0, 255, size=3)
    b = np.clip(a + rng.uniform(-90, 90, size=3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 2:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        # Soft stripes: a sinusoid between the two colours.
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * t / period)
    else:
        cell = int(rng.integers(6, 20))
        mix = ((xx // cell + yy // cell) % 2).astype(np.float64)
    img = a[None, None, :] * (1 - mix[..., None]) + b[None, None, :] * mix[..., None]
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8), [a, b, (a + b) / 2]


def contrasting_colour(
    rng: np.random.Generator, refs: Sequence[np.ndarray], min_contrast: float = MIN_CONTRAST
) -> tuple[int, int, int]:
    """A random RGB colour at least ``min_contrast`` away from every colour in ``refs``."""
    for _ in range(100):
        c = rng.uniform(0, 255, size=3)
        if all(np.linalg.norm(c - r) >= min_contrast for r in refs):
            return tuple(int(v) for v in c.round())
    # Rare fallback: the complement of the mean background is far from it in every channel.
    mean = np.mean(refs, axis=0)
    return tuple(int(v) for v in np.where(mean < 128, 255, 0))


def shape_outline(kind: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a ``"circle"`` of diameter ``size`` (``CIRCLE_VERTICES`` of them, not
    rotated), or a ``"square"`` / ``"triangle"`` of side ``size`` turned by ``angle``."""
    if kind == "circle":
        n, angle, r = CIRCLE_VERTICES, 0.0, size / 2
    elif kind == "square":
        n, r = 4, size / math.sqrt(2)
    elif kind == "triangle":
        n, r = 3, size / math.sqrt(3)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    t = angle + np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def cross_outline(cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """The 12 vertices of a plus sign ``size`` wide with arms a third of that, turned by
    ``angle``."""
    a, b = size / 6, size / 2
    pts = np.array(
        [(a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
        + [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a)]
    )
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def polygon_mask(
    h: int, w: int, outline: np.ndarray, holes: Iterable[np.ndarray] = ()
) -> np.ndarray:
    """A boolean HxW mask of the polygon ``outline`` (N, 2) with the polygons ``holes`` cut out,
    rasterised by PIL."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in np.asarray(outline).tolist()], fill=255)
    for hole in holes:
        draw.polygon([tuple(p) for p in np.asarray(hole).tolist()], fill=0)
    return np.asarray(canvas) > 0


def disc_mask(h: int, w: int, cx: float, cy: float, r: float, hole: float = 0.0) -> np.ndarray:
    """A boolean HxW mask of the disc of radius ``r`` at (``cx``, ``cy``), a ring when
    ``hole > 0`` (the radius of the hole), rasterised by PIL's ellipse."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    if hole > 0:
        draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=0)
    return np.asarray(canvas, dtype=bool)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as json to ``path`` through a temporary file and a rename, so that an
    interrupted run never leaves a half-written file that looks finished."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def finished_with(meta_path: str | os.PathLike, args: dict) -> bool:
    """Whether ``meta_path`` (the marker a generator writes last) records exactly ``args``."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text()) == args
    except ValueError:
        return False


def make_once_per_machine(
    make: Callable[..., dict], root: str | os.PathLike, split: str, caller: str, **kwargs
) -> None:
    """Run a data-set generator on the first process of each machine; the others wait for it."""
    from detectron2.utils import comm

    if split not in ("train", "val"):
        raise ValueError(f"{caller}: split must be 'train' or 'val', got {split!r}")
    if comm.get_local_rank() == 0:
        make(root, **kwargs)
    comm.synchronize()
