"""Parameter groups by module type and parameter name, and a readable listing of any groups."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List

import torch.nn as nn
from detectron2.solver import get_default_optimizer_params

__all__ = ["NO_WEIGHT_DECAY", "describe_param_groups", "get_param_groups"]

# Parameter names (the last component) that never get weight decay in get_param_groups. Norm
# layers and biases are exempt too (weight_decay_norm = weight_decay_bias = 0).
NO_WEIGHT_DECAY = ("pos_embed", "level_embed", "A_log", "D", "direction_Bs")


def get_param_groups(
    model: nn.Module,
    weight_decay: float = 0.05,
    base_lr: float | None = None,
    no_decay: Iterable[str] = NO_WEIGHT_DECAY,
    decay_bias: bool = False,
) -> List[Dict[str, Any]]:
    """Detectron2 parameter groups with no decay on norms, biases and ``no_decay`` names.

    ``decay_bias=True`` decays biases like weights (the released ADE20K recipe exempts norms and
    the ``no_decay`` names only; its COCO and ImageNet recipes exempt biases too).
    """
    return get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=0.0,
        weight_decay_bias=weight_decay if decay_bias else 0.0,
        overrides={name: {"weight_decay": 0.0} for name in no_decay},
    )


def describe_param_groups(
    model: nn.Module, groups: List[Dict[str, Any]], lr: float, weight_decay: float
) -> List[Dict[str, Any]]:
    """One row per optimizer group: its ``lr`` and ``weight_decay`` (the optimizer's defaults
    where the group sets none), ``tensors``, ``elements`` and the parameter ``names``."""
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for group in groups:
        params = list(group["params"])
        rows.append(
            {
                "lr": float(group.get("lr", lr)),
                "weight_decay": float(group.get("weight_decay", weight_decay)),
                "tensors": len(params),
                "elements": int(sum(p.numel() for p in params)),
                "names": [names.get(id(p), "?") for p in params],
            }
        )
    return rows
