"""The released recipes' per-parameter lr and weight decay, as MMCV 1.x's optimizer constructor
reads ``paramwise_cfg`` (docs/recipes.md#weight-decay-per-parameter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch.nn as nn
from detectron2.solver.build import reduce_param_groups

__all__ = [
    "RELEASED_PARAMWISE",
    "ParamDecision",
    "released_name_map",
    "released_param_decisions",
    "released_param_groups",
]

# ``paramwise_cfg`` of the released configs (docs/recipes.md#weight-decay-per-parameter lists
# the files). ``custom_keys`` maps a substring of the released parameter name to its
# ``(lr_mult, decay_mult)``.
RELEASED_PARAMWISE: Dict[str, Dict[str, Any]] = {
    # plain_mamba_configs/plain_mamba_l{1,2,3}_in1k_300e.py
    "imagenet": dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            ".cls_token": (1.0, 0.0),
            ".pos_embed": (1.0, 0.0),
            ".A_log": (1.0, 0.0),
            ".D": (1.0, 0.0),
            ".direction_Bs": (1.0, 0.0),
        },
    ),
    # downstream/mmdetection/plain_mamba_det_configs/template/{maskrcnn,retinanet}_1x.py
    "coco": dict(
        custom_keys={
            "level_embed": (1.0, 0.0),
            "pos_embed": (1.0, 0.0),
            "norm": (1.0, 0.0),
            "bias": (1.0, 0.0),
            ".pos_embed": (1.0, 0.0),
            ".A_log": (1.0, 0.0),
            ".D": (1.0, 0.0),
            ".direction_Bs": (1.0, 0.0),
        },
    ),
    # downstream/mmsegmentation/plain_mamba_seg_configs/l{1,2,3}_upernet.py
    "ade20k": dict(
        custom_keys={
            ".absolute_pos_embed": (1.0, 0.0),
            ".relative_position_bias_table": (1.0, 0.0),
            "pos_block": (1.0, 0.0),
            "norm": (1.0, 0.0),
            ".pos_embed": (1.0, 0.0),
            ".A_log": (1.0, 0.0),
            ".D": (1.0, 0.0),
            ".direction_Bs": (1.0, 0.0),
        },
    ),
}

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_NORM_TYPES += (nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ParamDecision:
    """What the released optimizer constructor decides for one parameter."""

    name: str  # ours
    released_name: str
    lr_mult: float
    decay_mult: float
    # What decided: "key '.A_log'", "norm_decay_mult=0", "dwconv_decay_mult=1",
    # "bias_decay_mult=0" or "default=1".
    rule: str


def _mmdet_names(model: nn.Module) -> Dict[str, str]:
    # Inverse of the converter's tables: the released key of each of our detector parameters.
    from ..checkpoint.convert_mmdet import _TABLES, adapter_key

    kind = "mask_rcnn" if hasattr(model, "roi_heads") else "retinanet"
    inverse = {ours: released for released, ours in _TABLES[kind]().items()}
    out = {}
    for name, _ in model.named_parameters():
        if name.startswith("backbone.bottom_up."):
            rest = name[len("backbone.bottom_up.") :]
            released = rest[len("trunk.") :] if rest.startswith("trunk.") else rest
            if adapter_key(released) != rest:  # not a key the converter would produce
                raise KeyError(f"{name}: no released backbone key converts to it")
            out[name] = "backbone." + released
        elif name in inverse:
            out[name] = inverse[name]
        else:
            raise KeyError(f"{name}: no released {kind} key converts to it")
    return out


def _mmseg_names(model: nn.Module) -> Dict[str, str]:
    from ..checkpoint.convert_mmseg import _RENAME

    out = {}
    for name, _ in model.named_parameters():
        src = next((s for s, d in _RENAME.items() if name.startswith(d)), None)
        if src is None:
            raise KeyError(f"{name}: no released UperNet key converts to it")
        out[name] = src + name[len(_RENAME[src]) :]
    return out


def released_name_map(model: nn.Module, recipe: str) -> Dict[str, str]:
    """Our parameter name -> the released one, through the checkpoint converters' key tables.

    ImageNet classifiers keep the released names (``backbone.*``, ``head.fc.*``).
    """
    if recipe == "imagenet":
        return {name: name for name, _ in model.named_parameters()}
    if recipe == "coco":
        return _mmdet_names(model)
    if recipe == "ade20k":
        return _mmseg_names(model)
    raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RELEASED_PARAMWISE)}")


def released_param_decisions(
    model: nn.Module, recipe: str, names: Optional[Mapping[str, str]] = None
) -> List[ParamDecision]:
    """The lr and weight-decay multipliers MMCV 1.x gives each trainable parameter of ``model``.

    MMCV's ``DefaultOptimizerConstructor.add_params``: the longest ``custom_keys`` entry that is
    a substring of the released name decides alone; otherwise a parameter of a norm layer gets
    ``norm_decay_mult``, one of a depthwise conv ``dwconv_decay_mult`` (its bias too), another
    ``bias`` ``bias_decay_mult``, and the rest the plain decay. Module types are ours, which are
    those of the released modules (norm, conv, linear) for every parameter.
    """
    paramwise = RELEASED_PARAMWISE[recipe]
    names = released_name_map(model, recipe) if names is None else names
    custom = paramwise.get("custom_keys", {})
    keys = sorted(sorted(custom), key=len, reverse=True)
    seen = set()
    out: List[ParamDecision] = []
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{pname}" if module_name else pname
            released = names[name]
            # MMCV matches f"{prefix}.{name}": a top-level parameter reads ".name".
            target = released if "." in released else "." + released
            key = next((k for k in keys if k in target), None)
            if key is not None:
                lr_mult, decay_mult = custom[key]
                rule = f"key {key!r}"
            else:
                lr_mult = 1.0
                if pname == "bias" and not is_norm:
                    lr_mult = paramwise.get("bias_lr_mult", 1.0)
                if is_norm:
                    rule = "norm_decay_mult"
                elif is_dwconv:
                    rule = "dwconv_decay_mult"
                elif pname == "bias":
                    rule = "bias_decay_mult"
                else:
                    rule = "default"
                decay_mult = 1.0 if rule == "default" else paramwise.get(rule, 1.0)
                rule = f"{rule}={decay_mult:g}"
            out.append(ParamDecision(name, released, float(lr_mult), float(decay_mult), rule))
    return out


def released_param_groups(
    model: nn.Module, recipe: str, weight_decay: float, base_lr: Optional[float] = None
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups whose lr and weight decay are the released recipe's, per
    parameter (:func:`released_param_decisions`), merged into as few groups as possible.

    ``recipe`` is ``"imagenet"``, ``"coco"`` or ``"ade20k"``. Groups carry ``lr`` only when
    ``base_lr`` is given (the released recipes scale no lr, so the optimizer's lr applies).
    """
    groups = []
    params = dict(model.named_parameters())
    for d in released_param_decisions(model, recipe):
        group: Dict[str, Any] = {
            "params": [params[d.name]],
            "weight_decay": weight_decay * d.decay_mult,
        }
        if base_lr is not None:
            group["lr"] = base_lr * d.lr_mult
        elif d.lr_mult != 1.0:
            raise ValueError(f"{d.name}: lr multiplier {d.lr_mult} needs base_lr")
        groups.append(group)
    return reduce_param_groups(groups)
