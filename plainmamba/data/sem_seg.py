"""Reading semantic-segmentation label maps for Detectron2's ``SemSegEvaluator``."""

from __future__ import annotations

from typing import Any

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["SemSegLabelReader"]


class SemSegLabelReader:
    """Reads a label image for ``SemSegEvaluator(sem_seg_loading_fn=SemSegLabelReader())``.

    Detectron2 0.7's default reader calls ``np.array(image, copy=False)``, which NumPy 2 refuses
    for a PIL image ("Unable to avoid copy"); this one lets NumPy copy. A class rather than a
    function so that a LazyConfig holding it still saves as YAML.
    """

    def __call__(self, filename: str, dtype: Any = None) -> np.ndarray:
        with PathManager.open(filename, "rb") as f:
            return np.array(Image.open(f), dtype=dtype)
