"""Data sets, dataset mappers and augmentations for training PlainMamba models with Detectron2."""

# Imported first: it makes Detectron2's load_coco_json name the file of a broken annotation JSON.
from . import coco  # noqa: F401
from .cls_mapper import (
    RELEASED_RANDAUGMENT,
    ClassificationMapper,
    build_classification_train_loader,
)
from .resumable import (
    ResumableBatchStream,
    build_resumable_train_loader,
    derive_seed,
    seed_all_rngs,
    seeded_rngs,
)
from .paths import datasets_root
from .samplers import ResumableTrainingSampler
from .sem_seg import SemSegLabelReader
from .mapper import (
    ImageReadError,
    SafeDatasetMapper,
    read_label_map,
    sanitize_annotations,
    to_8bit,
)
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
from .classification import (
    classification_dataset,
    create_lmdb_dataset,
    default_imagenet_root,
    imagenet_class_labels,
    list_class_folders,
    load_annotation_list,
    load_image_folder,
    load_lmdb,
    read_class_file,
    read_classification_image,
    read_lmdb_metadata,
    register_classification_dataset,
    register_imagenet,
)
from .cls_shapes import (
    CLS_SHAPE_CLASSES,
    default_shapes_cls_root,
    make_shapes_classification,
    register_shapes_classification,
)
from .transforms import (
    CV2ResizeTransform,
    PhotoMetricDistortion,
    PhotoMetricTransform,
    ResizeByRatioRange,
    mmcv_rescale_size,
)

__all__ = [
    "ClassificationMapper",
    "RELEASED_RANDAUGMENT",
    "ResumableBatchStream",
    "ResumableTrainingSampler",
    "build_resumable_train_loader",
    "derive_seed",
    "seed_all_rngs",
    "seeded_rngs",
    "build_classification_train_loader",
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
    "read_label_map",
    "sanitize_annotations",
    "to_8bit",
    "shapes_dataset",
    "shapes_semseg_dataset",
    "CLS_SHAPE_CLASSES",
    "classification_dataset",
    "datasets_root",
    "create_lmdb_dataset",
    "default_imagenet_root",
    "default_shapes_cls_root",
    "imagenet_class_labels",
    "list_class_folders",
    "load_annotation_list",
    "load_image_folder",
    "load_lmdb",
    "make_shapes_classification",
    "read_class_file",
    "read_classification_image",
    "read_lmdb_metadata",
    "register_classification_dataset",
    "register_imagenet",
    "register_shapes_classification",
]
