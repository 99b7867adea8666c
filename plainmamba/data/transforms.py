"""Detectron2 augmentations that reproduce MMSegmentation 0.x's ADE20K training transforms.

The published UperNet results were trained with MMSegmentation's ``Resize`` (scale (2048, 512)
times a random ratio, aspect ratio kept) and ``PhotoMetricDistortion``. Detectron2 has neither
with the same semantics: ``ResizeScale`` scales the target box differently and its resize runs
through PIL, whose bilinear filter antialiases when shrinking, while MMCV calls
``cv2.resize``. The classes here are ordinary ``Augmentation``s, so they compose with
``RandomCrop_CategoryAreaConstraint``, ``RandomFlip`` and ``AugInput(image, sem_seg=...)``.

Both draw their random numbers from NumPy's global generator in the order MMSegmentation does,
so with the same seed they pick the same parameters.
"""

from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = [
    "CV2ResizeTransform",
    "PhotoMetricDistortion",
    "PhotoMetricTransform",
    "ResizeByRatioRange",
    "mmcv_rescale_size",
]

# Depths that cv2.resize accepts per mode. Outside them, nearest uses an equivalent NumPy gather
# (int64 label maps, bool masks) and bilinear works in float32.
_CV2_NEAREST_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)
_CV2_LINEAR_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def mmcv_rescale_size(
    old_size: tuple[int, int], scale: tuple[int, int] | float
) -> tuple[tuple[int, int], float]:
    """MMCV's ``rescale_size(old_size, scale, return_scale=True)``: ``((new_w, new_h), factor)``.

    ``old_size`` is ``(w, h)``. A tuple ``scale`` is a box: the long edge ends at most
    ``max(scale)`` and the short edge at most ``min(scale)``. Sizes round half up
    (``int(x * factor + 0.5)``), as MMCV's ``_scale_size`` does.
    """
    w, h = old_size
    if isinstance(scale, (int, float)):
        if scale <= 0:
            raise ValueError(f"invalid scale {scale}, must be positive")
        factor = float(scale)
    else:
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(w * factor + 0.5), int(h * factor + 0.5)), factor


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    # OpenCV's INTER_NEAREST rule, floating-point steps included: floor(i * (1 / (dst / src))),
    # clamped to the last pixel. (i * src / dst differs from it where the product is an integer.)
    idx = np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(np.int64)
    return np.minimum(idx, src - 1)


class CV2ResizeTransform(T.ResizeTransform):
    """``ResizeTransform`` that resizes with OpenCV like MMCV: bilinear images, nearest labels.

    Coordinates and the inverse behave as in Detectron2's ``ResizeTransform``.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__(h, w, new_h, new_w, interp=Image.BILINEAR)

    def _resize(self, img: np.ndarray, interpolation: int) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"CV2ResizeTransform expects an array of {self.h}x{self.w}, got {img.shape[:2]}"
            )
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        nearest = interpolation == cv2.INTER_NEAREST
        too_many_channels = img.ndim == 3 and img.shape[2] > 512
        if nearest and (img.dtype.type not in _CV2_NEAREST_DTYPES or too_many_channels):
            rows = _nearest_indices(self.h, self.new_h)
            cols = _nearest_indices(self.w, self.new_w)
            return img[rows[:, None], cols[None, :]]
        if not nearest and img.dtype.type not in _CV2_LINEAR_DTYPES:
            img = img.astype(np.float32)
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=interpolation)
        # cv2 drops a trailing channel axis of length 1.
        return out.reshape(self.new_h, self.new_w, *img.shape[2:])

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """Bilinear (``cv2.INTER_LINEAR``) resize, or nearest if ``interp`` is PIL's NEAREST."""
        nearest = interp is not None and interp == Image.NEAREST
        return self._resize(img, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize, so label values are never blended."""
        return self._resize(segmentation, cv2.INTER_NEAREST)


class ResizeByRatioRange(T.Augmentation):
    """MMSegmentation's ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    Draws ``r`` uniformly from ``ratio_range``, takes the box ``(int(img_scale[0] * r),
    int(img_scale[1] * r))`` and rescales the image, aspect ratio kept, as large as fits: the
    long edge at most the box's long side, the short edge at most its short side (see
    :func:`mmcv_rescale_size`). With ``ratio_range=None`` it is the single-scale test resize.
    With ``size_divisor`` each side is then rounded up to a multiple of it, as the released
    test pipeline's ``AlignedResize`` does (here in one interpolation instead of two).
    """

    def __init__(
        self,
        img_scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] | None = (0.5, 2.0),
        size_divisor: int | None = None,
    ):
        super().__init__()
        img_scale = tuple(int(s) for s in img_scale)
        if len(img_scale) != 2 or min(img_scale) <= 0:
            raise ValueError(f"img_scale must be two positive ints, got {img_scale}")
        if ratio_range is not None:
            ratio_range = tuple(float(r) for r in ratio_range)
            if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
                raise ValueError(f"ratio_range must be (min, max), 0 < min <= max: {ratio_range}")
        if size_divisor is not None and int(size_divisor) <= 0:
            raise ValueError(f"size_divisor must be positive, got {size_divisor}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> CV2ResizeTransform:
        """A resize of ``image`` to the size drawn for it."""
        h, w = image.shape[:2]
        if self.ratio_range is None:
            scale = self.img_scale
        else:
            lo, hi = self.ratio_range
            # Same expression and generator as MMSegmentation's random_sample_ratio.
            ratio = np.random.random_sample() * (hi - lo) + lo
            scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
        (new_w, new_h), _ = mmcv_rescale_size((w, h), scale)
        if self.size_divisor:
            d = int(self.size_divisor)
            new_w, new_h = -(-new_w // d) * d, -(-new_h // d) * d
        # MMCV would hand cv2 a zero size for an extreme aspect ratio; keep at least one pixel.
        return CV2ResizeTransform(h, w, max(new_h, 1), max(new_w, 1))


def _scale_clip_u8(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # MMSegmentation's ``convert``: float32 arithmetic, clip, then truncate (not round) to uint8.
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


class PhotoMetricTransform(T.Transform):
    """The image-only colour changes chosen by :class:`PhotoMetricDistortion`.

    ``None`` skips a step. Geometry is unchanged, so coordinates and label maps pass through.
    """

    def __init__(
        self,
        brightness: float | None = None,
        contrast: float | None = None,
        contrast_first: bool = False,
        saturation: float | None = None,
        hue: int | None = None,
        image_format: str = "RGB",
    ):
        super().__init__()
        self._set_attributes(locals())

    def _hsv_codes(self) -> tuple[int, int]:
        if self.image_format == "BGR":
            return cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR
        return cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Apply brightness, contrast, saturation and hue in MMSegmentation's order."""
        if img.dtype != np.uint8:
            raise ValueError(f"PhotoMetricDistortion expects a uint8 image, got {img.dtype}")
        needs_hsv = self.saturation is not None or self.hue is not None
        if needs_hsv and (img.ndim != 3 or img.shape[2] != 3):
            raise ValueError(
                f"PhotoMetricDistortion needs an HxWx3 colour image for saturation/hue, "
                f"got shape {img.shape}"
            )
        to_hsv, from_hsv = self._hsv_codes()
        if self.brightness is not None:
            img = _scale_clip_u8(img, beta=self.brightness)
        if self.contrast is not None and self.contrast_first:
            img = _scale_clip_u8(img, alpha=self.contrast)
        # Saturation and hue make separate uint8 HSV round trips, as MMSegmentation does.
        if self.saturation is not None:
            hsv = cv2.cvtColor(np.ascontiguousarray(img), to_hsv)
            hsv[..., 1] = _scale_clip_u8(hsv[..., 1], alpha=self.saturation)
            img = cv2.cvtColor(hsv, from_hsv)
        if self.hue is not None:
            hsv = cv2.cvtColor(np.ascontiguousarray(img), to_hsv)
            # OpenCV's 8-bit hue runs over 0..179.
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + self.hue) % 180
            img = cv2.cvtColor(hsv, from_hsv)
        if self.contrast is not None and not self.contrast_first:
            img = _scale_clip_u8(img, alpha=self.contrast)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Unchanged: the transform moves no pixels."""
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Unchanged: labels are not colours."""
        return segmentation

    def inverse(self) -> T.Transform:
        """Geometrically the identity (as Detectron2's ``ColorTransform``)."""
        return T.NoOpTransform()


class PhotoMetricDistortion(T.Augmentation):
    """MMSegmentation's ``PhotoMetricDistortion`` for uint8 images; label maps are untouched.

    Each step happens with probability 0.5: brightness (add ``U(-brightness_delta,
    brightness_delta)``), contrast (multiply by ``U(*contrast_range)``), saturation (scale HSV S
    by ``U(*saturation_range)``) and hue (shift OpenCV's 0..179 hue by an integer in
    ``[-hue_delta, hue_delta)``, as ``np.random.randint`` draws). A fair coin puts contrast
    straight after brightness or after the HSV steps. Every step clips to 0..255 and truncates
    to uint8. ``image_format`` ("RGB" or "BGR", the mapper's) picks the HSV conversion, so a
    colour gets the same hue shift either way.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        image_format: str = "RGB",
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        contrast_range = tuple(contrast_range)
        saturation_range = tuple(saturation_range)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> PhotoMetricTransform:
        """Draw which steps run and their strengths, in MMSegmentation's order of draws."""
        rand = np.random
        brightness = contrast = saturation = hue = None
        if rand.randint(2):
            brightness = rand.uniform(-self.brightness_delta, self.brightness_delta)
        # MMSegmentation's mode 1 runs contrast first.
        contrast_first = bool(rand.randint(2))
        if contrast_first and rand.randint(2):
            contrast = rand.uniform(*self.contrast_range)
        if rand.randint(2):
            saturation = rand.uniform(*self.saturation_range)
        if rand.randint(2):
            hue = int(rand.randint(-self.hue_delta, self.hue_delta))
        if not contrast_first and rand.randint(2):
            contrast = rand.uniform(*self.contrast_range)
        return PhotoMetricTransform(
            brightness, contrast, contrast_first, saturation, hue, self.image_format
        )
