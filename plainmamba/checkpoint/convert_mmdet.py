"""Released MMDetection (v2.x) PlainMamba detectors -> Detectron2 state dicts of this project.

The released Mask R-CNN and RetinaNet files name their modules the MMDetection way (``neck``,
``rpn_head``, ``roi_head``, ``bbox_head``, MMCV ``ConvModule`` with ``conv``/``bn`` children).
Every key is renamed through explicit tables below; a key that no table covers, or a table entry
that the file lacks, raises :class:`CheckpointError` so that nothing is dropped or left at its
initial value silently.

Facts the tables rely on (checked against MMDetection v2 and the installed Detectron2):

* Both FPNs name levels by stride; MMDetection counts from its first input (stride 4 for Mask
  R-CNN, 8 for RetinaNet with ``start_level=1``), Detectron2 by ``log2(stride)``.
* Both box heads flatten RoI features as ``(C, H, W)``, put the background class last
  (index K) and lay class-specific deltas out class-major as ``(dx, dy, dw, dh)``.
* Dense heads lay channels out anchor-major (``a * K + k``) in both, but the anchors of one
  location are ordered differently; see :func:`mmdet_to_d2_anchor_permutation`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .convert import CheckpointError, released_state_dict

__all__ = [
    "MMDET_KINDS",
    "convert_mmdet_detector",
    "detect_mmdet_kind",
    "is_mmdet_detector",
    "mmdet_to_d2_anchor_permutation",
]

logger = logging.getLogger(__name__)

MMDET_KINDS = ("mask_rcnn", "retinanet")
_DETECTOR_PREFIXES = ("neck.", "rpn_head.", "roi_head.", "bbox_head.")

# First components of ``backbone.*`` keys that belong to the adapter; all others are trunk keys.
_ADAPTER_KEYS = frozenset(
    ["spm", "level_embed", "interactions", "up", "ad_norm1", "ad_norm2", "ad_norm3", "ad_norm4"]
)

# Parameter tables: MMDetection name inside a module -> Detectron2 name inside its counterpart.
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# ConvModule + SyncBN: MMCV calls the norm ``bn`` and drops the conv bias; Detectron2's Conv2d
# keeps its norm as ``norm``.
_CONV_BN = {"conv.weight": "weight", **{f"bn.{p}": f"norm.{p}" for p in _BN}}
_CONV_BIAS = {"conv.weight": "weight", "conv.bias": "bias"}  # ConvModule without a norm
_PLAIN = {"weight": "weight", "bias": "bias"}  # nn.Conv2d / nn.Linear / nn.ConvTranspose2d

# RetinaNet: 3 octave scales x 3 aspect ratios per location; the RPN has 1 scale x 3 ratios.
_RETINA_SCALES, _RETINA_RATIOS = 3, 3


def adapter_key(released: str) -> str:
    """Name inside :class:`PlainMambaAdapter` of a released adapter-backbone key.

    ``released`` is the key without its ``backbone.`` prefix: adapter parts keep their names,
    trunk parts move under ``trunk.``.
    """
    return released if released.split(".")[0] in _ADAPTER_KEYS else f"trunk.{released}"


def mmdet_to_d2_anchor_permutation(num_scales: int = 3, num_ratios: int = 3) -> List[int]:
    """Anchor order map: Detectron2 anchor ``a`` is MMDetection anchor ``perm[a]``.

    MMDetection's ``AnchorGenerator.gen_single_level_base_anchors`` (``scale_major=True``, the
    v2 default) builds widths as ``w_ratios[:, None] * scales[None, :]`` and flattens, so the
    anchors of a location are ratio-major: ``index = ratio_idx * num_scales + scale_idx``.
    Detectron2's ``DefaultAnchorGenerator.generate_cell_anchors`` loops ``for size: for ratio``,
    so its anchors are size-major: ``index = size_idx * num_ratios + ratio_idx``. Both define the
    ratio as h / w and both lay head outputs out anchor-major, so taking output block
    ``perm[a]`` of an MMDetection predictor gives block ``a`` of the Detectron2 one. With a single
    scale (the RPN) the permutation is the identity.
    """
    return [
        ratio * num_scales + scale for scale in range(num_scales) for ratio in range(num_ratios)
    ]


def _permute_anchor_blocks(
    value: torch.Tensor, perm: List[int], name: str, source: str
) -> torch.Tensor:
    """Reorder the per-anchor blocks of output channels (dim 0) of a conv weight or bias."""
    num_anchors = len(perm)
    if value.shape[0] % num_anchors:
        raise CheckpointError(
            f"{source}: {name} has {value.shape[0]} output channels, not a multiple of "
            f"{num_anchors} anchors"
        )
    blocks = value.reshape(num_anchors, value.shape[0] // num_anchors, *value.shape[1:])
    return blocks[torch.tensor(perm)].reshape(value.shape).contiguous()


def _expand(modules: List[Tuple[str, str, Mapping[str, str]]]) -> Dict[str, str]:
    """Turn ``(mmdet module, d2 module, parameter table)`` rows into a key -> key table."""
    return {f"{src}.{p}": f"{dst}.{q}" for src, dst, params in modules for p, q in params.items()}


def _mask_rcnn_table() -> Dict[str, str]:
    rows: List[Tuple[str, str, Mapping[str, str]]] = []
    for i in range(4):  # strides 4..32 -> Detectron2 stages 2..5; P6 is a parameter-free pool
        rows.append((f"neck.lateral_convs.{i}", f"backbone.fpn_lateral{i + 2}", _CONV_BN))
        rows.append((f"neck.fpn_convs.{i}", f"backbone.fpn_output{i + 2}", _CONV_BN))
    rpn = "proposal_generator.rpn_head"
    rows += [
        ("rpn_head.rpn_conv", f"{rpn}.conv", _PLAIN),
        ("rpn_head.rpn_cls", f"{rpn}.objectness_logits", _PLAIN),
        ("rpn_head.rpn_reg", f"{rpn}.anchor_deltas", _PLAIN),
    ]
    box, mask = "roi_head.bbox_head", "roi_head.mask_head"
    for k in range(4):
        rows.append((f"{box}.shared_convs.{k}", f"roi_heads.box_head.conv{k + 1}", _CONV_BN))
        rows.append((f"{mask}.convs.{k}", f"roi_heads.mask_head.mask_fcn{k + 1}", _CONV_BIAS))
    rows += [
        (f"{box}.shared_fcs.0", "roi_heads.box_head.fc1", _PLAIN),
        (f"{box}.fc_cls", "roi_heads.box_predictor.cls_score", _PLAIN),
        (f"{box}.fc_reg", "roi_heads.box_predictor.bbox_pred", _PLAIN),
        (f"{mask}.upsample", "roi_heads.mask_head.deconv", _PLAIN),
        (f"{mask}.conv_logits", "roi_heads.mask_head.predictor", _PLAIN),
    ]
    return _expand(rows)


def _retinanet_table() -> Dict[str, str]:
    rows: List[Tuple[str, str, Mapping[str, str]]] = []
    for i in range(3):  # start_level=1: strides 8..32 -> Detectron2 stages 3..5
        rows.append((f"neck.lateral_convs.{i}", f"backbone.fpn_lateral{i + 3}", _CONV_BN))
        rows.append((f"neck.fpn_convs.{i}", f"backbone.fpn_output{i + 3}", _CONV_BN))
    # add_extra_convs='on_output': fpn_convs.3 makes P6 from P5's output, fpn_convs.4 P7 from P6.
    rows.append(("neck.fpn_convs.3", "backbone.top_block.p6", _CONV_BN))
    rows.append(("neck.fpn_convs.4", "backbone.top_block.p7", _CONV_BN))
    for k in range(4):  # Detectron2 subnets are Sequential(conv, ReLU, ...): convs at 0, 2, 4, 6
        rows.append((f"bbox_head.cls_convs.{k}", f"head.cls_subnet.{2 * k}", _CONV_BIAS))
        rows.append((f"bbox_head.reg_convs.{k}", f"head.bbox_subnet.{2 * k}", _CONV_BIAS))
    rows += [
        ("bbox_head.retina_cls", "head.cls_score", _PLAIN),
        ("bbox_head.retina_reg", "head.bbox_pred", _PLAIN),
    ]
    return _expand(rows)


_TABLES = {"mask_rcnn": _mask_rcnn_table, "retinanet": _retinanet_table}
# Outputs whose channels hold per-anchor blocks in MMDetection's order.
_ANCHOR_PERMUTED = {
    "retinanet": ("bbox_head.retina_cls.", "bbox_head.retina_reg."),
    "mask_rcnn": (),  # RPN: one scale, so MMDetection's order is already Detectron2's
}


def _prefix_summary(keys: Any) -> List[str]:
    """The distinct ``first.second.`` prefixes of ``keys``, to say what a checkpoint holds."""
    return sorted({".".join(k.split(".")[:2]) + "." for k in keys})


def is_mmdet_detector(state: Mapping[str, Any]) -> bool:
    """Whether a released state dict holds an MMDetection detector (neck / head keys)."""
    return any(k.startswith(_DETECTOR_PREFIXES) for k in state)


def detect_mmdet_kind(state: Mapping[str, Any], source: str = "checkpoint") -> str:
    """Tell a released Mask R-CNN (``"mask_rcnn"``) from a RetinaNet (``"retinanet"``) by keys.

    Raises :class:`CheckpointError` naming the key prefixes found if it is neither.
    """
    has = {p: any(k.startswith(p) for k in state) for p in _DETECTOR_PREFIXES}
    masks = any(k.startswith("roi_head.mask_head.") for k in state)
    # Decide on the defining heads only, so that a stray key is reported by the conversion as
    # unrecognised rather than making the whole file unclassifiable.
    mask_rcnn = has["rpn_head."] and masks
    retinanet = "bbox_head.retina_cls.weight" in state
    if mask_rcnn != retinanet:
        return "mask_rcnn" if mask_rcnn else "retinanet"
    found = _prefix_summary(state)
    hint = ""
    if mask_rcnn:
        hint = " (it has both Mask R-CNN and RetinaNet heads)"
    elif not any(has.values()):
        hint = " (no neck/head keys: a classification or backbone-only checkpoint?)"
    elif has["roi_head."]:
        hint = " (a two-stage detector without a mask head is not supported)"
    raise CheckpointError(
        f"{source}: not a released MMDetection Mask R-CNN or RetinaNet checkpoint{hint}; "
        f"found key prefixes {found[:12]}{' ...' if len(found) > 12 else ''}"
    )


def _list_keys(keys: List[str], limit: int = 10) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"({len(keys)}): {keys[:limit]}{more}"


def convert_mmdet_detector(
    ckpt_or_path: Mapping[str, Any] | str,
    kind: Optional[str] = None,
    source: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """Convert a released MMDetection PlainMamba detector (file path or loaded dict).

    ``kind`` is ``"mask_rcnn"`` or ``"retinanet"``; ``None`` detects it from the keys. Returns
    the Detectron2 state dict (``backbone.bottom_up[.trunk].*``, FPN, heads). ``ema_*`` buffers
    are dropped. Raises :class:`CheckpointError` naming the file if a key is not recognised, an
    expected key is absent, or the checkpoint is of another kind.
    """
    state, source = released_state_dict(ckpt_or_path, source)
    ema = [k for k in state if k.startswith("ema_")]
    if ema:
        logger.info("%s: ignoring %d ema_* buffers", source, len(ema))
        state = {k: v for k, v in state.items() if not k.startswith("ema_")}

    detected = detect_mmdet_kind(state, source) if is_mmdet_detector(state) else None
    if kind is None:
        kind = detected or detect_mmdet_kind(state, source)
    elif kind not in MMDET_KINDS:
        raise CheckpointError(f"unknown detector kind {kind!r}; expected one of {MMDET_KINDS}")
    elif detected is None:
        raise CheckpointError(
            f"{source}: asked for a {kind} checkpoint, but it has no detector keys (found "
            f"{_prefix_summary(state)}); it looks like a classification or backbone-only "
            f"checkpoint"
        )
    elif detected != kind:
        raise CheckpointError(f"{source}: asked for a {kind} checkpoint, but it holds a {detected}")

    for k, v in state.items():
        if not torch.is_tensor(v):
            raise CheckpointError(f"{source}: entry {k} is a {type(v).__name__}, not a tensor")

    table = _TABLES[kind]()
    permuted = _ANCHOR_PERMUTED[kind]
    perm = mmdet_to_d2_anchor_permutation(_RETINA_SCALES, _RETINA_RATIOS)
    out: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, value in state.items():
        if key.startswith("backbone."):
            out["backbone.bottom_up." + adapter_key(key[len("backbone.") :])] = value
        elif key in table:
            if key.startswith(permuted):
                value = _permute_anchor_blocks(value, perm, key, source)
            out[table[key]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: keys not recognised for a released {kind} checkpoint "
            f"{_list_keys(sorted(unknown))}"
        )
    missing = sorted(k for k in table if k not in state)
    if not any(k.startswith("backbone.") for k in state):
        missing.insert(0, "backbone.*")
    if missing:
        raise CheckpointError(
            f"{source}: {kind} checkpoint lacks expected keys {_list_keys(missing)}"
        )
    return out
