"""AdamW with the project's no-decay groups (see plainmamba.solver.NO_WEIGHT_DECAY)."""

import torch
from detectron2.config import LazyCall as L

from plainmamba.solver import get_param_groups

AdamW = L(torch.optim.AdamW)(
    params=L(get_param_groups)(weight_decay=0.05),  # the trainer sets params.model
    lr=1e-4,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.05,
)
