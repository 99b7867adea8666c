"""The Detectron2 checkpointer of this project: reads released files, strict by default."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

from .convert import (
    CheckpointError,
    convert_official_classification,
    load_official_file,
    released_state_dict,
)
from .convert_mmdet import convert_mmdet_detector, is_mmdet_detector
from .convert_mmseg import convert_mmseg_upernet, is_mmseg_upernet

__all__ = ["PlainMambaCheckpointer"]


class PlainMambaCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads released checkpoints and is strict.

    A file with the released layout (a ``state_dict`` entry) is converted on the fly: an
    MMSegmentation UperNet (``decode_head.*`` keys) with :func:`convert_mmseg_upernet`, an
    MMDetection Mask R-CNN / RetinaNet file (``neck.*``, ``rpn_head.*``, ``roi_head.*`` or
    ``bbox_head.*`` keys) with :func:`convert_mmdet_detector`, anything else as a classification
    file. A classification checkpoint loaded into a detector or segmentor initialises its trunk
    only. With ``strict=True`` (default) any missing, unexpected or wrongly shaped key raises
    :class:`CheckpointError` instead of a logged warning.
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, strict: bool = True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict

    def _torch_load(self, f: str) -> Dict[str, Any]:
        data = load_official_file(f)
        if "model" not in data and "state_dict" in data:
            state, _ = released_state_dict(data, f)
            if is_mmseg_upernet(state):
                model = convert_mmseg_upernet(data, source=f)
            elif is_mmdet_detector(state):
                model = convert_mmdet_detector(data, source=f)
            else:
                model = convert_official_classification(data, source=f)
            return {"model": model, "__author__": f}
        return data

    def _trunk_prefix(self) -> Optional[str]:
        """Where a detector or segmentor keeps its PlainMamba trunk, e.g. ``backbone.``.

        ``None`` for a classifier: its trunk and head sit where a classification checkpoint has
        them, so there is nothing to re-key.
        """
        keys = self.model.state_dict()
        for key in keys:
            if key.endswith("pos_embed") and key != "backbone.pos_embed":
                return key[: -len("pos_embed")]
        # A segmentor keeps its trunk at ``backbone.`` like a classifier, but has no ``head.``.
        if "backbone.pos_embed" in keys and not any(k.startswith("head.") for k in keys):
            return "backbone."
        return None

    def _as_backbone_init(self, checkpoint: Dict[str, Any]) -> Optional[str]:
        """Re-key an ImageNet classifier checkpoint onto a downstream model's trunk, in place.

        Returns the trunk prefix when it did so. Only the trunk is initialised: the classifier's
        head and final norm are dropped, the downstream parts keep their fresh initialisation.
        """
        prefix = self._trunk_prefix()
        state = checkpoint.get("model", {})
        if prefix is None or "backbone.pos_embed" not in state:
            return None
        if prefix == "backbone.":
            # Same trunk prefix: only a file with a classifier head is a backbone init.
            if not any(k.startswith("head.") for k in state):
                return None
        elif any(k.startswith(prefix) for k in state):
            return None
        model_keys = set(self.model.state_dict())
        mapped, dropped = {}, []
        for key, value in state.items():
            target = prefix + key[len("backbone.") :] if key.startswith("backbone.") else None
            if target in model_keys:
                mapped[target] = value
            else:
                dropped.append(key)
        self.logger.info(
            f"Initialising the trunk ({prefix}*) from a classification checkpoint: "
            f"{len(mapped)} tensors; not used: {sorted(dropped)[:8]}"
            + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
        )
        checkpoint["model"] = mapped
        return prefix

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        trunk_prefix = self._as_backbone_init(checkpoint)
        incompatible = super()._load_model(checkpoint)
        if trunk_prefix is not None:
            # Backbone initialisation: everything outside the trunk is new by design, so only
            # the trunk has to be complete. The segmentation taps' norm_layer{i} do not exist in
            # a classifier; the released UperNets start them fresh too.
            taps = trunk_prefix + "norm_layer"
            fresh = [k for k in incompatible.missing_keys if k.startswith(taps)]
            if fresh:
                self.logger.info(f"Trunk keys not in the classification checkpoint: {fresh}")
            incompatible.missing_keys[:] = [
                k
                for k in incompatible.missing_keys
                if k.startswith(trunk_prefix) and not k.startswith(taps)
            ]
        if self.strict:
            problems = []
            for k, got, want in incompatible.incorrect_shapes:
                problems.append(f"  shape mismatch {k}: checkpoint {got}, model {want}")
            if incompatible.missing_keys:
                problems.append(f"  missing in checkpoint: {incompatible.missing_keys[:8]}")
            if incompatible.unexpected_keys:
                problems.append(f"  not in model: {incompatible.unexpected_keys[:8]}")
            if problems:
                raise CheckpointError("checkpoint does not fit the model:\n" + "\n".join(problems))
        return incompatible
