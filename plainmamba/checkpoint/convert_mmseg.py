"""Released MMSegmentation (v0.x) PlainMamba UperNets -> state dicts of this project.

The released ADE20K files hold ``backbone.*`` (the trunk with its ``norm_layer{i}`` taps and
``ln1``), ``decode_head.*`` (``UPerHead``) and ``auxiliary_head.*`` (``FCNHead``), each conv
block an MMCV ``ConvModule`` (``conv`` without bias, ``bn``). ``EncoderDecoderSegmentor`` keeps
those attribute names and its heads keep MMSegmentation's module names, so every key maps to
itself; the table below lists them all so that a key it does not cover, or one it expects but the
file lacks, raises :class:`CheckpointError` instead of being dropped or left at its initial
value. The heads' loss modules hold no state in MMSegmentation 0.x, so nothing else is expected.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional

import torch

from .convert import CheckpointError, released_state_dict

__all__ = ["convert_mmseg_upernet", "is_mmseg_upernet", "upernet_keys"]

logger = logging.getLogger(__name__)

_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")
# Released module prefix -> ours. The same names: kept as a table so a rename is one line.
_RENAME = {
    "backbone.": "backbone.",
    "decode_head.": "decode_head.",
    "auxiliary_head.": "auxiliary_head.",
}
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_CONV_BN = ("conv.weight", *(f"bn.{p}" for p in _BN))
_PLAIN = ("weight", "bias")


def upernet_keys(
    num_levels: int = 4, num_pool_scales: int = 4, aux_num_convs: int = 1, auxiliary: bool = True
) -> List[str]:
    """Every head key of a released UperNet (``decode_head.*`` and ``auxiliary_head.*``).

    Defaults are the released ADE20K configs: four input maps, pool scales (1, 2, 3, 6), and an
    FCN auxiliary head of one conv without ``conv_cat``.
    """
    modules = [f"decode_head.psp_modules.{i}.1" for i in range(num_pool_scales)]
    modules.append("decode_head.bottleneck")
    for i in range(num_levels - 1):  # the top level goes through the pyramid instead
        modules += [f"decode_head.lateral_convs.{i}", f"decode_head.fpn_convs.{i}"]
    modules.append("decode_head.fpn_bottleneck")
    keys = [f"{m}.{p}" for m in modules for p in _CONV_BN]
    keys += [f"decode_head.conv_seg.{p}" for p in _PLAIN]
    if auxiliary:
        keys += [f"auxiliary_head.convs.{i}.{p}" for i in range(aux_num_convs) for p in _CONV_BN]
        keys += [f"auxiliary_head.conv_seg.{p}" for p in _PLAIN]
    return keys


def is_mmseg_upernet(state: Mapping[str, Any]) -> bool:
    """Whether a released state dict holds an MMSegmentation segmentor (``decode_head.*`` keys)."""
    return any(k.startswith("decode_head.") for k in state)


def _list_keys(keys: List[str], limit: int = 10) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"({len(keys)}): {keys[:limit]}{more}"


def _rename(key: str) -> str:
    for src, dst in _RENAME.items():
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(key)


def convert_mmseg_upernet(
    ckpt_or_path: Mapping[str, Any] | str,
    source: Optional[str] = None,
    **structure: Any,
) -> Dict[str, torch.Tensor]:
    """Convert a released MMSegmentation PlainMamba UperNet (file path or loaded dict).

    Returns the state dict of :class:`plainmamba.modeling.EncoderDecoderSegmentor`
    (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``). ``ema_*`` buffers and DDP
    ``module.`` prefixes are dropped. ``structure`` passes :func:`upernet_keys`'s arguments for
    a non-released head layout. Raises :class:`CheckpointError` naming the file if a key is not
    recognised, an expected key is absent, or the file holds no segmentor.
    """
    state, source = released_state_dict(ckpt_or_path, source)
    ema = [k for k in state if k.startswith("ema_")]
    if ema:
        logger.info("%s: ignoring %d ema_* buffers", source, len(ema))
        state = {k: v for k, v in state.items() if not k.startswith("ema_")}
    if not is_mmseg_upernet(state):
        found = sorted({".".join(k.split(".")[:2]) + "." for k in state})
        raise CheckpointError(
            f"{source}: not a released MMSegmentation UperNet checkpoint (no decode_head.* keys; "
            f"found key prefixes {found[:12]}{' ...' if len(found) > 12 else ''})"
        )
    for k, v in state.items():
        if not torch.is_tensor(v):
            raise CheckpointError(f"{source}: entry {k} is a {type(v).__name__}, not a tensor")

    expected = set(upernet_keys(**structure))
    unknown = sorted(k for k in state if not k.startswith("backbone.") and k not in expected)
    if unknown:
        raise CheckpointError(
            f"{source}: keys not recognised for a released UperNet checkpoint "
            f"{_list_keys(unknown)}"
        )
    missing = sorted(k for k in expected if k not in state)
    if not any(k.startswith("backbone.") for k in state):
        missing.insert(0, "backbone.*")
    if missing:
        raise CheckpointError(
            f"{source}: UperNet checkpoint lacks expected keys {_list_keys(missing)}"
        )
    return {_rename(k): v for k, v in state.items()}
