"""Data sets, dataset mappers and augmentations for training PlainMamba models with Detectron2."""

from .sem_seg import SemSegLabelReader
from .mapper import ImageReadError, SafeDatasetMapper, sanitize_annotations
from .seg_shapes import (
    SEG_IGNORE_LABEL,
    SEG_SHAPE_CLASSES,
    default_shapes_semseg_root,
    make_shapes_semseg,
    register_shapes_semseg,
    shapes_semseg_dataset,
)
from .shapes import (
    SHAPE_CLASSES,
    default_shapes_root,
    make_shapes_coco,
    register_shapes,
    shapes_dataset,
)
from .transforms import (
    CV2ResizeTransform,
    PhotoMetricDistortion,
    PhotoMetricTransform,
    ResizeByRatioRange,
    mmcv_rescale_size,
)

__all__ = [
    "SemSegLabelReader",
    "CV2ResizeTransform",
    "ImageReadError",
    "PhotoMetricDistortion",
    "PhotoMetricTransform",
    "ResizeByRatioRange",
    "SEG_IGNORE_LABEL",
    "SEG_SHAPE_CLASSES",
    "SHAPE_CLASSES",
    "SafeDatasetMapper",
    "default_shapes_root",
    "default_shapes_semseg_root",
    "make_shapes_coco",
    "make_shapes_semseg",
    "mmcv_rescale_size",
    "register_shapes",
    "register_shapes_semseg",
    "sanitize_annotations",
    "shapes_dataset",
    "shapes_semseg_dataset",
]
