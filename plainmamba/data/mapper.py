"""A Detectron2 ``DatasetMapper`` that fails clearly on bad images and skips bad annotations.

Detectron2's own mapper surfaces an unreadable image as whatever PIL raised, often without the
file name, and a single degenerate annotation (NaN box, two-point polygon, empty segmentation)
crashes a training run deep inside ``PolygonMasks`` or the box losses. ``SafeDatasetMapper``
keeps Detectron2's behaviour for good data and its constructor (so ``@configurable`` and LazyConfig
``L(SafeDatasetMapper)(...)`` work unchanged), but names the file when an image cannot be read and
drops annotations that cannot be trained on.

For semantic segmentation it also checks each label map against its image before any
augmentation: the sizes must agree, and, when ``sem_seg_num_classes`` is given, every value must
be a class index or the ignore value. A wrongly prepared data set (ADE20K labels not shifted, a
label folder from another release) then fails on its first image with the file named, instead
of training on garbage or failing inside the loss.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from detectron2.utils.logger import log_first_n

__all__ = ["ImageReadError", "SafeDatasetMapper", "sanitize_annotations"]


class ImageReadError(OSError):
    """An image file could not be read; the message names the file and the original error."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        # Keep ``path`` when the error crosses a DataLoader worker boundary.
        return type(self), (str(self), self.path)


def _valid_polygon(poly) -> bool:
    try:
        arr = np.asarray(poly, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return arr.size >= 6 and arr.size % 2 == 0 and bool(np.isfinite(arr).all())


def _valid_box(anno: dict) -> bool:
    bbox = anno.get("bbox")
    if bbox is None:
        return False
    try:
        arr = np.asarray(bbox, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    if arr.size < 4 or not np.isfinite(arr).all():
        return False
    mode = anno.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode in (BoxMode.XYWH_ABS, BoxMode.XYWH_REL, BoxMode.XYWHA_ABS):
        return arr[2] > 0 and arr[3] > 0
    if mode in (BoxMode.XYXY_ABS, BoxMode.XYXY_REL):
        return arr[2] > arr[0] and arr[3] > arr[1]
    return True


def sanitize_annotations(annos: list[dict], use_instance_mask: bool) -> list[dict]:
    """Return the annotations that are safe to train on, with invalid polygons removed.

    Drops crowd annotations (as Detectron2's mapper does), boxes that are missing, non-finite or
    of zero/negative width or height, and, when masks are used, polygons with fewer than three
    points or non-finite coordinates; an annotation left without any valid polygon is dropped.
    """
    kept = []
    for anno in annos:
        if anno.get("iscrowd", 0) != 0 or not _valid_box(anno):
            continue
        if use_instance_mask and "segmentation" in anno:
            segm = anno["segmentation"]
            if isinstance(segm, dict):
                # RLE: Detectron2 decodes it as given; only an obviously empty one is unusable.
                if not segm.get("counts") or not segm.get("size"):
                    continue
            elif isinstance(segm, (list, tuple)):
                polys = [p for p in segm if _valid_polygon(p)]
                if not polys:
                    continue
                if len(polys) != len(segm):
                    anno = dict(anno, segmentation=polys)
            else:
                continue
        kept.append(anno)
    return kept


class SafeDatasetMapper(DatasetMapper):
    """``DatasetMapper`` with clear image-read errors and degenerate-annotation filtering.

    Takes the arguments of :class:`detectron2.data.DatasetMapper`, plus two keyword-only ones
    for label maps (``sem_seg_file_name``):

    - ``sem_seg_num_classes``: if given, label values must lie in ``[0, sem_seg_num_classes)`` or
      equal ``ignore_label``; if None, only the label map's size is checked.
    - ``ignore_label``: the value that marks unlabelled pixels (255, Detectron2's convention).
    """

    def __init__(
        self,
        *args,
        sem_seg_num_classes: int | None = None,
        ignore_label: int = 255,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if sem_seg_num_classes is not None and int(sem_seg_num_classes) < 1:
            raise ValueError(f"sem_seg_num_classes must be >= 1, got {sem_seg_num_classes}")
        self.sem_seg_num_classes = None if sem_seg_num_classes is None else int(sem_seg_num_classes)
        self.ignore_label = int(ignore_label)

    def _read_image(
        self, file_name: str, image_format: str | None = None, what: str = "image"
    ) -> np.ndarray:
        try:
            return utils.read_image(file_name, format=image_format or self.image_format)
        except ImageReadError:
            raise
        except Exception as e:
            # Anything raised while opening or decoding is a property of the file, whatever
            # exception type PIL or the path manager chose for it.
            raise ImageReadError(
                f"cannot read {what} {file_name!r}: {type(e).__name__}: {e}", path=file_name
            ) from e

    def _check_sem_seg(
        self, sem_seg: np.ndarray, image: np.ndarray, sem_seg_file: str, image_file: str
    ) -> None:
        """Raise ``ValueError`` if the label map does not fit its image or has unknown values."""
        if sem_seg.shape[:2] != image.shape[:2]:
            (lh, lw), (ih, iw) = sem_seg.shape[:2], image.shape[:2]
            raise ValueError(
                f"label map {sem_seg_file!r} is {lh}x{lw} (HxW) but its image {image_file!r} "
                f"is {ih}x{iw}"
            )
        num_classes = self.sem_seg_num_classes
        if num_classes is None:
            return
        valid = ((sem_seg >= 0) & (sem_seg < num_classes)) | (sem_seg == self.ignore_label)
        if valid.all():
            return
        bad = np.unique(sem_seg[~valid])
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise ValueError(
            f"label map {sem_seg_file!r} has values [{shown}] outside [0, {num_classes}) "
            f"(the ignore value {self.ignore_label} is also allowed); was the data set prepared "
            f"for this number of classes (e.g. ADE20K labels shifted by "
            f"datasets/prepare_ade20k_sem_seg.py)?"
        )

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        raw = dataset_dict.pop("annotations")
        annos_in = sanitize_annotations(raw, self.use_instance_mask)
        # Only annotations invalid in the data set are worth a warning; crops that empty a box
        # are routine and dropped silently, as Detectron2 does.
        dropped = sum(a.get("iscrowd", 0) == 0 for a in raw) - len(annos_in)
        if dropped:
            log_first_n(
                logging.WARNING,
                f"SafeDatasetMapper dropped {dropped} invalid annotation(s) of "
                f"{dataset_dict.get('file_name', '<unknown>')}",
                n=10,
            )
        annos = []
        for obj in annos_in:
            obj = dict(obj)
            if not self.use_instance_mask:
                obj.pop("segmentation", None)
            if not self.use_keypoint:
                obj.pop("keypoints", None)
            annos.append(
                utils.transform_instance_annotations(
                    obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
                )
            )
        # A crop can shrink polygons below three points; those would crash PolygonMasks.
        annos = sanitize_annotations(annos, self.use_instance_mask)
        # annotations_to_instances decides on masks from the first annotation only.
        if self.use_instance_mask and any("segmentation" in a for a in annos):
            annos = [a for a in annos if "segmentation" in a]

        instances = utils.annotations_to_instances(
            annos, image_shape, mask_format=self.instance_mask_format
        )
        if self.use_instance_mask and not instances.has("gt_masks") and len(annos) == 0:
            # Detectron2 adds no gt_masks field for an image without annotations, which breaks
            # recompute_boxes and any code that expects the field whenever masks are on.
            if self.instance_mask_format == "polygon":
                instances.gt_masks = PolygonMasks([])
            else:
                instances.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
        if self.recompute_boxes and instances.has("gt_masks"):
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def __call__(self, dataset_dict: dict) -> dict:
        """Map one Detectron2 dataset dict to model inputs, as ``DatasetMapper`` does."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict["file_name"])
        utils.check_image_size(dataset_dict, image)

        if "sem_seg_file_name" in dataset_dict:
            sem_seg_file = dataset_dict.pop("sem_seg_file_name")
            sem_seg_gt = self._read_image(sem_seg_file, "L", what="label map").squeeze(2)
            self._check_sem_seg(sem_seg_gt, image, sem_seg_file, dataset_dict["file_name"])
        else:
            sem_seg_gt = None

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg

        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
