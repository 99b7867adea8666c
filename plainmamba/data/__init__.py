"""Data sets and dataset mappers for training PlainMamba detectors with Detectron2."""

from .mapper import ImageReadError, SafeDatasetMapper, sanitize_annotations
from .shapes import (
    SHAPE_CLASSES,
    default_shapes_root,
    make_shapes_coco,
    register_shapes,
    shapes_dataset,
)

__all__ = [
    "ImageReadError",
    "SHAPE_CLASSES",
    "SafeDatasetMapper",
    "make_shapes_coco",
    "default_shapes_root",
    "shapes_dataset",
    "register_shapes",
    "sanitize_annotations",
]
