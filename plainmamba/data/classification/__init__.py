"""Image-classification data sets: class-folder trees, annotation lists and LMDB files.

Three sources give the same kind of record, a dict with ``file_name``, ``label`` (int) and
``image_id``:

* an image folder, ``root/<class_dir>/**/<image>`` (torchvision's ``ImageFolder`` layout);
* an annotation list, ``relative/path.JPEG label`` per line (MMClassification's ``meta/*.txt``,
  which the released PlainMamba recipe used);
* an LMDB written by :func:`create_lmdb_dataset` (or ``tools/create_lmdb_dataset.py``); its records
  also carry ``lmdb`` (the database path) and ``key``.

:func:`read_classification_image` turns any of them into an RGB ``PIL.Image``.

The LMDB layout, and the released tool's older one that :func:`load_lmdb` also reads, are
described in :mod:`plainmamba.data.classification.lmdb_format`.

Modules: ``readers`` (image folders, class files, annotation lists), ``lmdb_format`` (writing and
loading LMDBs), ``images`` (decoding a record's image) and ``registration`` (Detectron2's
catalogs).
"""

from .images import read_classification_image
from .lmdb_format import FORMAT, create_lmdb_dataset, load_lmdb, read_lmdb_metadata
from .readers import (
    IMAGE_EXTENSIONS,
    list_class_folders,
    load_annotation_list,
    load_image_folder,
    read_class_file,
)
from .registration import (
    classification_dataset,
    default_imagenet_root,
    imagenet_class_labels,
    register_classification_dataset,
    register_imagenet,
)

__all__ = [
    "FORMAT",
    "IMAGE_EXTENSIONS",
    "classification_dataset",
    "create_lmdb_dataset",
    "default_imagenet_root",
    "imagenet_class_labels",
    "list_class_folders",
    "load_annotation_list",
    "load_image_folder",
    "load_lmdb",
    "read_class_file",
    "read_classification_image",
    "read_lmdb_metadata",
    "register_classification_dataset",
    "register_imagenet",
]
