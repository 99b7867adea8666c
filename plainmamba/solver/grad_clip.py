"""Clipping the global gradient norm of everything an optimizer updates, inside its ``step``."""

from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.utils.events import get_event_storage

__all__ = ["add_full_model_grad_clipping"]


def add_full_model_grad_clipping(
    optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` first clip the global gradient norm of all its parameters.

    One norm over every parameter the optimizer updates, as MMDetection's ``grad_clip`` (and
    unlike Detectron2's per-parameter ``CLIP_GRADIENTS``). Under AMP ``GradScaler.step``
    unscales before it calls ``step``, so the clipping sees the true gradients. The norm before
    clipping is logged as ``grad_norm`` when an event storage is active. Returns ``optimizer``,
    modified in place: its class becomes a generated subclass, so its state dict is unchanged.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if "step" in vars(optimizer):
        # An instance-level step (e.g. torch's LRScheduler call-counting wrapper) holds the old
        # class's function and would bypass the subclass.
        raise ValueError(
            "optimizer.step is wrapped on the instance (an LR scheduler was created already?); "
            "add gradient clipping before creating schedulers"
        )
    # Applying twice replaces the previous setting instead of clipping twice.
    base = getattr(type(optimizer), "_full_model_clip_base", type(optimizer))
    base_step = base.step
    max_norm, norm_type = float(max_norm), float(norm_type)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            total = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            try:
                get_event_storage().put_scalar("grad_norm", float(total))
            except AssertionError:  # no storage outside a Detectron2 trainer
                pass
        ret = base_step(self)
        return loss if closure is not None else ret

    # torch re-wraps a class's step with its hook/profiler wrapper (on load_state_dict, too)
    # unless marked; base_step is wrapped already, so wrapping ours would run hooks twice.
    step.hooked = True
    optimizer.__class__ = type(
        base.__name__ + "WithFullModelGradClip",
        (base,),
        {"step": step, "_full_model_clip_base": base},
    )
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        # Fused optimizers unscale inside step(); GradScaler must unscale before we clip.
        optimizer._step_supports_amp_scaling = False
    return optimizer
