"""Optimizer parameter groups, schedules and gradient clipping.

The task recipes (configs/ImageNet, COCO, ADE20K) use :func:`released_param_groups`, which gives
every parameter the weight decay the released MMCV ``paramwise_cfg`` gave it
(docs/recipes.md#weight-decay-per-parameter). :func:`get_param_groups` is a simpler rule by
module type, used by the small quickstart and test configs.

:func:`add_full_model_grad_clipping` is what ``train.clip_grad`` turns on in the training loop.
"""

from .grad_clip import add_full_model_grad_clipping
from .param_groups import NO_WEIGHT_DECAY, describe_param_groups, get_param_groups
from .released import (
    RELEASED_PARAMWISE,
    ParamDecision,
    released_name_map,
    released_param_decisions,
    released_param_groups,
)
from .schedules import MMCVWarmupParamScheduler, epoch_schedule

__all__ = [
    "NO_WEIGHT_DECAY",
    "RELEASED_PARAMWISE",
    "MMCVWarmupParamScheduler",
    "ParamDecision",
    "add_full_model_grad_clipping",
    "describe_param_groups",
    "epoch_schedule",
    "get_param_groups",
    "released_name_map",
    "released_param_decisions",
    "released_param_groups",
]
