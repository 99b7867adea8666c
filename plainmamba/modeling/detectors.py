"""Detectron2's detectors with the input check of the other models of this project.

Detectron2's own ``GeneralizedRCNN`` and ``RetinaNet`` broadcast a 1-channel or 2-D image against
the 3-channel pixel mean and return detections for it, and fail on other channel counts with a
bare broadcasting error. These subclasses run :func:`~plainmamba.modeling.inputs.check_image_inputs`
first; nothing else changes (same modules, same checkpoint keys).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.structures import ImageList

from .inputs import check_image_inputs

__all__ = ["CheckedGeneralizedRCNN", "CheckedRetinaNet"]


class CheckedGeneralizedRCNN(GeneralizedRCNN):
    """Detectron2's ``GeneralizedRCNN`` (here Mask R-CNN) that checks its inputs first."""

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        """:func:`check_image_inputs`, then Detectron2's normalisation and padding."""
        check_image_inputs(batched_inputs, len(self.pixel_mean), type(self).__name__)
        return super().preprocess_image(batched_inputs)


class CheckedRetinaNet(RetinaNet):
    """Detectron2's ``RetinaNet`` that checks its inputs first."""

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        """:func:`check_image_inputs`, then Detectron2's normalisation and padding."""
        check_image_inputs(batched_inputs, len(self.pixel_mean), type(self).__name__)
        return super().preprocess_image(batched_inputs)
