"""Data sets and dataset mappers for training PlainMamba detectors with Detectron2."""

from .mapper import ImageReadError, SafeDatasetMapper, sanitize_annotations
from .shapes import SHAPE_CLASSES, make_shapes_coco, register_shapes

__all__ = [
    "ImageReadError",
    "SHAPE_CLASSES",
    "SafeDatasetMapper",
    "make_shapes_coco",
    "register_shapes",
    "sanitize_annotations",
]
