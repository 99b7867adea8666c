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

from .atomic import atomic_torch_save
from .safe_pickle import RefusedGlobalError, restricted_pickle_load, restricted_torch_load

__all__ = [
    "CheckpointError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "load_official_file",
    "load_pickled_file",
    "convert_official_classification",
    "check_state_dict",
    "infer_arch",
    "released_state_dict",
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


class UnreadableCheckpointError(CheckpointError):
    """A file that is missing, empty, truncated or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle would call code outside the allow-list; nothing was called.

    Kept apart from unreadable files: a resume may fall back past a truncated checkpoint, but a
    poisoned one must stop the run.
    """


_TRUST_HINT = (
    "it could run code; load it only if you trust the file, with --trust-checkpoint "
    "(PlainMambaCheckpointer(trusted=True), load_official_file(trusted=True))"
)


def load_pickled_file(path: str, kind: str = "torch", trusted: bool = False) -> Any:
    """Unpickle a checkpoint file so that it cannot run code, unless ``trusted``.

    ``kind`` is ``"torch"`` (a ``torch.save`` file: tried with ``weights_only=True`` first, then
    with :func:`~.safe_pickle.restricted_torch_load`, which also reads released MM* files whose
    ``meta`` holds classes of packages that are not installed) or ``"pickle"`` (a plain pickle
    such as a Detectron2 ``.pkl``). A file that would call a global outside the allow-list raises
    :class:`CheckpointError` naming the file and the global; nothing is called.
    ``trusted=True`` unpickles everything (with a warning): only for files you made yourself.
    """
    if not os.path.isfile(path):
        raise UnreadableCheckpointError(f"{path}: no such checkpoint file")
    if trusted:
        logger.warning("%s: unpickling without restrictions (trusted); this can run code", path)
        if kind == "pickle":
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        if kind == "pickle":
            with open(path, "rb") as f:
                return restricted_pickle_load(f)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Globals outside torch's list, e.g. a released file's mmcv ConfigDict in ``meta``.
            return restricted_torch_load(path)
    except RefusedGlobalError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle: it calls {err.module}.{err.name}, which "
            f"is not a tensor or plain data; {_TRUST_HINT}"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise UnreadableCheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({err})"
        ) from err


def load_official_file(path: str, trusted: bool = False) -> Dict[str, Any]:
    """Read a ``torch.save`` checkpoint into a dict, safely (see :func:`load_pickled_file`)."""
    data = load_pickled_file(path, "torch", trusted=trusted)
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


def save_detectron2_checkpoint(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Write ``state`` in the format ``DetectionCheckpointer`` reads (``{"model": ...}``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Atomic: an interrupted conversion leaves no half-written file where a good one is expected.
    atomic_torch_save({"model": dict(state), "__author__": "plainmamba.convert"}, path)
