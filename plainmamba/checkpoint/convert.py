"""Released MMClassification checkpoints -> Detectron2 checkpoints of this project.

Our modules keep the released names (``backbone.*``, ``head.fc.*``), so a classification
checkpoint converts by selecting keys, optionally swapping in the EMA copies, and checking every
key and shape against the target model. Anything that does not fit raises :class:`CheckpointError`
naming the file, the keys and the shapes.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointError",
    "load_official_file",
    "convert_official_classification",
    "check_state_dict",
    "infer_arch",
    "released_state_dict",
    "PlainMambaCheckpointer",
    "save_detectron2_checkpoint",
]

logger = logging.getLogger(__name__)

# (embed_dim, depth) -> published size; used to name what a checkpoint holds.
_ARCHS = {(192, 24): "L1", (384, 24): "L2", (448, 36): "L3"}
_CLS_PREFIXES = ("backbone.", "head.")
# Where the trunk sits in a classifier and in a detector (FPN -> adapter -> trunk).
_TRUNK_PREFIXES = ("backbone.", "backbone.bottom_up.trunk.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def load_official_file(path: str) -> Dict[str, Any]:
    """Read a checkpoint file into a dict, with an error naming the file if it is unreadable.

    Tensors-only files load with ``weights_only=True``; released MM* files also pickle their
    config (``meta``), for which we fall back to a full unpickling: only use files you trust.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
    return dict(data)


def _state_dict_of(ckpt: Mapping[str, Any], source: str) -> Dict[str, Any]:
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            return dict(ckpt[key])
    if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return dict(ckpt)
    raise CheckpointError(
        f"{source}: no 'state_dict' or 'model' entry and not a bare state dict "
        f"(top-level keys: {sorted(ckpt)[:10]})"
    )


def released_state_dict(
    ckpt: Mapping[str, Any] | str, source: Optional[str] = None
) -> Tuple[Dict[str, Any], str]:
    """The state dict of a released file (path or loaded dict), without DDP ``module.`` prefixes.

    Returns ``(state, source)``, where ``source`` names the file for error messages.
    """
    if isinstance(ckpt, str):
        source = source or ckpt
        ckpt = load_official_file(ckpt)
    source = source or "checkpoint"
    state = _state_dict_of(ckpt, source)
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, source


def convert_official_classification(
    ckpt: Mapping[str, Any] | str, use_ema: bool = False, source: Optional[str] = None
) -> Dict[str, torch.Tensor]:
    """Convert a released classification checkpoint (file path or loaded dict) to our keys.

    Returns a state dict for :class:`plainmamba.modeling.ImageClassifier`. ``ema_*`` buffers are
    dropped, or with ``use_ema`` replace the parameters they shadow.
    """
    state, source = released_state_dict(ckpt, source)
    ema = {k: v for k, v in state.items() if k.startswith("ema_")}
    state = {k: v for k, v in state.items() if not k.startswith("ema_")}
    if use_ema:
        if not ema:
            raise CheckpointError(
                f"{source}: --ema requested but the checkpoint has no ema_* buffers"
            )
        used = 0
        for name in list(state):
            shadow = ema.get("ema_" + name.replace(".", "_"))
            if shadow is not None:
                if shadow.shape != state[name].shape:
                    raise CheckpointError(
                        f"{source}: EMA copy of {name} has shape {tuple(shadow.shape)}, "
                        f"parameter has {tuple(state[name].shape)}"
                    )
                state[name] = shadow
                used += 1
        logger.info("%s: took %d of %d EMA tensors", source, used, len(ema))

    foreign = sorted(k for k in state if not k.startswith(_CLS_PREFIXES))
    if foreign:
        raise CheckpointError(
            f"{source}: not a PlainMamba classification checkpoint; unexpected keys "
            f"{foreign[:8]}{' ...' if len(foreign) > 8 else ''}"
        )
    for k, v in state.items():
        if not torch.is_tensor(v):
            raise CheckpointError(f"{source}: entry {k} is a {type(v).__name__}, not a tensor")
    return state


def infer_arch(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Name the published size (L1/L2/L3) a state dict holds, or ``None`` for a custom one.

    Works for classifiers (``backbone.*``) and detectors (``backbone.bottom_up.trunk.*``).
    """
    for prefix in _TRUNK_PREFIXES:
        pos = state.get(prefix + "pos_embed")
        if pos is None:
            continue
        layers = prefix + "layers."
        depth = 1 + max(
            (int(k[len(layers) :].split(".")[0]) for k in state if k.startswith(layers)),
            default=-1,
        )
        return _ARCHS.get((int(pos.shape[-1]), depth))
    return None


def check_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    ignore_missing: Iterable[str] = (),
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    ignore = tuple(ignore_missing)
    missing = sorted(k for k in expected if k not in state and not k.startswith(ignore))
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not fit the model:"]
    arch = infer_arch(state)
    if arch:
        lines.append(f"  the checkpoint holds PlainMamba-{arch}")
    for k, got, want in shapes[:10]:
        lines.append(f"  shape mismatch {k}: checkpoint {got}, model {want}")
    if len(shapes) > 10:
        lines.append(f"  ... and {len(shapes) - 10} more shape mismatches")
    if missing:
        lines.append(f"  missing in checkpoint ({len(missing)}): {missing[:8]}")
    if unexpected:
        lines.append(f"  not in model ({len(unexpected)}): {unexpected[:8]}")
    raise CheckpointError("\n".join(lines))


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
        # Imported here because convert_mmdet and convert_mmseg build on this module.
        from .convert_mmdet import convert_mmdet_detector, is_mmdet_detector
        from .convert_mmseg import convert_mmseg_upernet, is_mmseg_upernet

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


def save_detectron2_checkpoint(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Write ``state`` in the format ``DetectionCheckpointer`` reads (``{"model": ...}``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": dict(state), "__author__": "plainmamba.convert"}, path)
