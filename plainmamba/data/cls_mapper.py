"""Per-image pipeline and data loaders of the ImageNet recipe (docs/model.md#imagenet-1k).

The augmentations come from timm: ``RandomResizedCrop`` (bicubic), horizontal flip and
RandAugment (``rand-m9-mstd0.5-inc1``: magnitude 9, std 0.5, increasing policies, 2 ops) per image
here; Random Erasing, Mixup / CutMix and label smoothing work on the normalised batch and live in
:class:`plainmamba.modeling.BatchAugment`, as timm applies them after its prefetcher.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torchvision import transforms as TV

__all__ = [
    "ClassificationMapper",
    "build_classification_train_loader",
    "RELEASED_RANDAUGMENT",
]

logger = logging.getLogger(__name__)

#: timm's name for the released RandAugment policy.
RELEASED_RANDAUGMENT = "rand-m9-mstd0.5-inc1"

_INTERPOLATIONS = {
    "bicubic": TV.InterpolationMode.BICUBIC,
    "bilinear": TV.InterpolationMode.BILINEAR,
    "nearest": TV.InterpolationMode.NEAREST,
}


def _to_chw_uint8(image: Any) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class ClassificationMapper:
    """Turn a classification record into ``{"image": (3, H, W) uint8 RGB, "label": int, ...}``.

    Args:
        is_train: training augmentation (random resized crop, flip, RandAugment) or the
            test pipeline (resize the short side to ``image_size / crop_pct``, centre crop).
        image_size: output side.
        interpolation: ``bicubic`` as released, or ``bilinear`` / ``nearest``.
        scale, ratio: RandomResizedCrop's area and aspect ranges.
        hflip: flip probability.
        auto_augment: a timm auto-augment string (``None`` disables it).
        crop_pct: test-time crop fraction (224 / 256 as released).
        read_image: ``record -> PIL RGB image``; defaults to
            :func:`plainmamba.data.read_classification_image` (image files and LMDB records).
    """

    def __init__(
        self,
        is_train: bool,
        image_size: int = 224,
        *,
        interpolation: str = "bicubic",
        scale: Tuple[float, float] = (0.08, 1.0),
        ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip: float = 0.5,
        auto_augment: Optional[str] = RELEASED_RANDAUGMENT,
        crop_pct: float = 0.875,
        read_image: Optional[Callable[[Dict[str, Any]], Any]] = None,
    ):
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation={interpolation!r}; choose one of {', '.join(_INTERPOLATIONS)}"
            )
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.is_train = is_train
        self.image_size = image_size
        if is_train:
            from timm.data.transforms_factory import transforms_imagenet_train

            # separate=True returns (crop+flip, auto-augment, to-tensor/normalise/erase); the
            # last stage is dropped: the model normalises, and erasing runs on the batch.
            primary, secondary, _ = transforms_imagenet_train(
                img_size=image_size,
                scale=tuple(scale),
                ratio=tuple(ratio),
                hflip=hflip,
                auto_augment=auto_augment,
                interpolation=interpolation,
                separate=True,
            )
            self.transform = TV.Compose([primary, secondary])
        else:
            resize = int(round(image_size / crop_pct))
            self.transform = TV.Compose(
                [
                    TV.Resize(resize, interpolation=_INTERPOLATIONS[interpolation]),
                    TV.CenterCrop(image_size),
                ]
            )
        if read_image is None:
            from .classification import read_classification_image

            read_image = read_classification_image
        self.read_image = read_image

    def image_tensor(self, image: Any) -> torch.Tensor:
        """This pipeline on one PIL RGB image: a ``(3, size, size)`` uint8 tensor."""
        return _to_chw_uint8(self.transform(image))

    def __call__(self, record: Dict[str, Any]) -> Dict[str, Any]:
        if "label" not in record:
            where = record.get("file_name", record.get("image_id", "?"))
            raise KeyError(f"classification record {where} has no 'label'")
        image = self.read_image(record)
        out = {k: v for k, v in record.items() if k in ("file_name", "image_id", "label")}
        out["image"] = self.image_tensor(image)
        out["height"], out["width"] = self.image_size, self.image_size
        return out


def build_classification_train_loader(
    dataset: Union[List[Dict[str, Any]], torch.utils.data.Dataset],
    mapper: Callable[[Dict[str, Any]], Dict[str, Any]],
    total_batch_size: int,
    num_workers: int = 0,
    seed: Optional[int] = None,
    shuffle: bool = True,
    **kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A :func:`~plainmamba.data.build_resumable_train_loader` without aspect-ratio grouping.

    Every batch holds ``total_batch_size / world_size`` images per process. The order and the
    augmentation of every image depend only on the seed and the position in the stream, so the
    engine continues a resumed run with the samples, crops and flips the interrupted one would
    have used, whatever ``num_workers`` is.
    """
    from .resumable import build_resumable_train_loader

    return build_resumable_train_loader(
        dataset=dataset,
        mapper=mapper,
        total_batch_size=total_batch_size,
        num_workers=num_workers,
        seed=seed,
        shuffle=shuffle,
        aspect_ratio_grouping=False,
        **kwargs,
    )
