"""Optimizer parameter groups: the one place that says which parameters skip weight decay."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List

import torch.nn as nn
from detectron2.solver import get_default_optimizer_params

__all__ = ["NO_WEIGHT_DECAY", "epoch_schedule", "get_param_groups"]

# Parameter names (the last component) that never get weight decay, as in the released recipes.
# Norm layers and biases are exempt too (weight_decay_norm = weight_decay_bias = 0).
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


def epoch_schedule(
    *,
    epochs: int,
    warmup_epochs: float,
    num_images: int,
    total_batch_size: int,
) -> Dict[str, int]:
    """Translate an epoch-based recipe into iterations for Detectron2's iteration-based engine.

    One epoch is ``ceil(num_images / total_batch_size)`` steps: the released recipes keep the
    last, partial batch of an epoch (``drop_last=False``), so they take that many steps per epoch.
    Returns ``iters_per_epoch``, ``max_iter`` and ``warmup_iters``.
    """
    if num_images <= 0 or total_batch_size <= 0 or epochs <= 0:
        raise ValueError(
            f"epoch_schedule needs positive sizes, got num_images={num_images}, "
            f"total_batch_size={total_batch_size}, epochs={epochs}"
        )
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs={warmup_epochs} must be within [0, epochs={epochs}]")
    per_epoch = -(-num_images // total_batch_size)
    return {
        "iters_per_epoch": per_epoch,
        "max_iter": epochs * per_epoch,
        "warmup_iters": int(round(warmup_epochs * per_epoch)),
    }
