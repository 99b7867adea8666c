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

Images and label maps are read at their own bit depth: a 16-bit grayscale image is scaled to
8 bits (Pillow's conversion clips it at 255, which turns it almost white) and a 16-bit label map
keeps its values (Detectron2 reads label maps as 8-bit ``L``, which clips every value above 255
to 255, the ignore value), so the class check sees them.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data import detection_utils as utils
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = [
    "ImageReadError",
    "SafeDatasetMapper",
    "read_label_map",
    "sanitize_annotations",
    "to_8bit",
]

logger = logging.getLogger(__name__)

# Warnings about dropped annotations a mapper logs (each DataLoader worker holds its own copy).
_MAX_DROP_WARNINGS = 10


class ImageReadError(OSError):
    """An image file could not be read; the message names the file and the original error."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        # Keep ``path`` when the error crosses a DataLoader worker boundary.
        return type(self), (str(self), self.path)


# One integer channel wider than 8 bits. Pillow opens 16-bit grayscale PNG/TIFF as "I;16*"
# (older releases as "I").
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(image: Image.Image, file_name: str) -> Image.Image:
    """``image`` unchanged, or a 16-bit grayscale ``image`` scaled to 8 bits (``L``, v / 257).

    Pillow's ``convert("L")``/``convert("RGB")`` clips such images at 255 instead of scaling
    them. Images with no fixed range (32-bit integer values above 65535 or below 0, 32-bit float)
    raise :class:`ImageReadError` naming ``file_name``.
    """
    if image.mode not in _WIDE_INT_MODES and image.mode != "F":
        return image
    values = np.asarray(image)
    if image.mode == "F" or (values.size and (values.min() < 0 or values.max() > 65535)):
        raise ImageReadError(
            f"image {file_name} has {'32-bit float' if image.mode == 'F' else '32-bit integer'} "
            f"pixels (PIL mode {image.mode}) with no fixed range; convert it to an 8-bit image",
            path=file_name,
        )
    scaled = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def _open_image(file_name: str) -> Image.Image:
    with PathManager.open(file_name, "rb") as f:
        # Detectron2's read_image applies the EXIF orientation; so does this reader.
        image = utils._apply_exif_orientation(Image.open(f))
        image.load()
    return image


def read_label_map(file_name: str) -> np.ndarray:
    """The label map in ``file_name`` as an HxW integer array of its stored values.

    Single-channel integer images are read at their own depth: 8-bit ``L``, palette ``P`` (its
    indices, as Detectron2's ``SemSegEvaluator`` reads them), 1-bit, 16- and 32-bit. Colour
    images become luminance, as ``detectron2.data.detection_utils.read_image(f, "L")`` does.
    Float label maps raise :class:`ImageReadError`. Other read errors propagate.
    """
    image = _open_image(file_name)
    if image.mode == "F":
        raise ImageReadError(
            f"label map {file_name} has float pixels (PIL mode F); label maps must hold integer "
            "class indices",
            path=file_name,
        )
    if image.mode in _WIDE_INT_MODES or image.mode in ("L", "P"):
        return np.array(image)
    if image.mode == "1":
        return np.array(image, dtype=np.uint8)
    return np.asarray(image.convert("L"))


@contextlib.contextmanager
def _named_read_errors(file_name: str, what: str):
    """Turn any error raised while opening or decoding ``file_name`` into an ImageReadError."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as e:
        # Anything raised while opening or decoding is a property of the file, whatever
        # exception type PIL or the path manager chose for it.
        raise ImageReadError(
            f"cannot read {what} {file_name!r}: {type(e).__name__}: {e}", path=file_name
        ) from e


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


def _usable_mask(anno: dict) -> dict | None:
    """``anno`` with its invalid polygons removed, or None if it has no usable mask."""
    # Detectron2's load_coco_json drops the key of an empty segmentation ("segmentation": []).
    segm = anno.get("segmentation")
    if isinstance(segm, dict):
        # RLE: Detectron2 decodes it as given; only an obviously empty one is unusable.
        return anno if segm.get("counts") and segm.get("size") else None
    if isinstance(segm, (list, tuple)):
        polys = [p for p in segm if _valid_polygon(p)]
        if not polys:
            return None
        return anno if len(polys) == len(segm) else dict(anno, segmentation=polys)
    return None


def _sanitize(annos: list[dict], use_instance_mask: bool) -> tuple[list[dict], int, int]:
    """Kept annotations, and how many non-crowd ones were dropped for their box, for their mask."""
    kept, bad_box, bad_mask = [], 0, 0
    for anno in annos:
        if anno.get("iscrowd", 0) != 0:
            continue
        if not _valid_box(anno):
            bad_box += 1
            continue
        if use_instance_mask:
            anno = _usable_mask(anno)
            if anno is None:
                bad_mask += 1
                continue
        kept.append(anno)
    return kept, bad_box, bad_mask


def sanitize_annotations(annos: list[dict], use_instance_mask: bool) -> list[dict]:
    """Return the annotations that are safe to train on, with invalid polygons removed.

    Drops crowd annotations (as Detectron2's mapper does), boxes that are missing, non-finite or
    of zero/negative width or height, and, when masks are used, annotations without a usable
    mask: no segmentation (Detectron2's loader removes an empty one), an empty RLE, or no polygon
    with at least three points and finite coordinates (invalid polygons are removed from the
    others).
    """
    return _sanitize(annos, use_instance_mask)[0]


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
        with _named_read_errors(file_name, what):
            image = to_8bit(_open_image(file_name), file_name)
            return utils.convert_PIL_to_numpy(image, image_format or self.image_format)

    def _read_label_map(self, file_name: str) -> np.ndarray:
        with _named_read_errors(file_name, "label map"):
            return read_label_map(file_name)

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
            if sem_seg.dtype != np.uint8 and sem_seg.size:
                low, high = int(sem_seg.min()), int(sem_seg.max())
                if low < 0 or high > 255:
                    raise ValueError(
                        f"label map {sem_seg_file!r} ({sem_seg.dtype}) has values in "
                        f"[{low}, {high}], outside 0..255; without sem_seg_num_classes only "
                        "8-bit labels are accepted: set sem_seg_num_classes (and ignore_label) "
                        "of the mapper to the data set's"
                    )
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

    def _warn_dropped(self, dataset_dict: dict, bad_box: int, bad_mask: int) -> None:
        count = getattr(self, "_drop_warnings", 0)
        if count >= _MAX_DROP_WARNINGS:
            return
        self._drop_warnings = count + 1
        reasons = []
        if bad_box:
            reasons.append(f"{bad_box} with a missing, non-finite or empty box")
        if bad_mask:
            reasons.append(
                f"{bad_mask} without a usable mask (empty or missing segmentation, or no polygon "
                "of three or more points)"
            )
        image = dataset_dict.get("file_name", "<unknown>")
        image_id = dataset_dict.get("image_id")
        more = (
            "; further such warnings of this mapper are not shown"
            if count + 1 == _MAX_DROP_WARNINGS
            else ""
        )
        logger.warning(
            "SafeDatasetMapper dropped %d invalid annotation(s) of image %s%s: %s%s",
            bad_box + bad_mask,
            image,
            "" if image_id is None else f" (image_id {image_id})",
            ", ".join(reasons),
            more,
        )

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        raw = dataset_dict.pop("annotations")
        annos_in, bad_box, bad_mask = _sanitize(raw, self.use_instance_mask)
        # Only annotations invalid in the data set are worth a warning; crops that empty a box
        # are routine and dropped silently, as Detectron2 does.
        if bad_box or bad_mask:
            self._warn_dropped(dataset_dict, bad_box, bad_mask)
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
        # A crop can shrink polygons below three points; those would crash PolygonMasks. Every
        # annotation left has a mask when masks are on: annotations_to_instances decides on
        # gt_masks from the first one only, and Mask R-CNN fails without the field.
        annos = sanitize_annotations(annos, self.use_instance_mask)

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
            sem_seg_gt = self._read_label_map(sem_seg_file)
            self._check_sem_seg(sem_seg_gt, image, sem_seg_file, dataset_dict["file_name"])
            if sem_seg_gt.dtype != np.uint8 and 0 <= sem_seg_gt.min() <= sem_seg_gt.max() <= 255:
                # Detectron2's resize handles only uint8 label maps (wider ones go to torch's
                # interpolate, which has no integer nearest mode).
                sem_seg_gt = sem_seg_gt.astype(np.uint8)
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
