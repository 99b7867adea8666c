"""The check of Detectron2-style model inputs that every meta-architecture here runs first.

:class:`~plainmamba.modeling.ImageClassifier`, :class:`~plainmamba.modeling.EncoderDecoderSegmentor`
and the detectors of :mod:`plainmamba.modeling.detectors` reject the same inputs with the same
messages.
"""

from __future__ import annotations

from typing import Any, List

import torch

__all__ = ["check_image_inputs"]


def check_image_inputs(batched_inputs: Any, channels: int, owner: str) -> List[torch.Tensor]:
    """The ``image`` tensors of a batch, once checked; raises ``ValueError`` naming the input.

    ``batched_inputs`` must be a non-empty list of dicts, each with a ``(channels, H, W)`` image
    tensor. Floating-point CPU images must hold finite values (on a GPU the check would force a
    host sync). ``owner`` names the model in the message about the list itself.
    """
    if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
        is_list = isinstance(batched_inputs, (list, tuple))
        got = "an empty list" if is_list else type(batched_inputs).__name__
        raise ValueError(f"{owner} expects a non-empty list of dicts with an 'image', got {got}")
    images = []
    for i, record in enumerate(batched_inputs):
        name = f"input {i}"
        if isinstance(record, dict) and "file_name" in record:
            name += f" ({record['file_name']})"
        image = record.get("image") if isinstance(record, dict) else None
        if not torch.is_tensor(image):
            raise ValueError(f"{name}: missing 'image' tensor")
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(
                f"{name}: expected a ({channels}, H, W) image, got shape {tuple(image.shape)}"
            )
        if image.is_floating_point() and image.device.type == "cpu":
            if not bool(torch.isfinite(image).all()):
                raise ValueError(f"{name}: image contains NaN or infinite values")
        images.append(image)
    return images
