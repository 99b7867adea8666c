"""Training hooks added to Detectron2's: an exponential moving average of the weights, and a
periodic checkpointer whose ``max_to_keep`` holds across resumes."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from detectron2.engine import HookBase, hooks
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.atomic import list_checkpoints

__all__ = ["EMAHook", "KeepingPeriodicCheckpointer", "unwrap_model"]

logger = logging.getLogger("detectron2.plainmamba.engine")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else ``model``."""
    if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class EMAHook(HookBase):
    """Keep timm's ``ModelEmaV3`` of the model, updated after every optimizer step.

    ``ema = decay * ema + (1 - decay) * weights`` on parameters, buffers copied, as the
    released MMClassification ``EMAHook`` with momentum ``1 - decay``. Register
    :attr:`checkpointable` with the checkpointer (``checkpointer.add_checkpointable("ema",
    hook.checkpointable)``) so that periodic checkpoints hold the average under ``"ema"`` and
    ``--resume`` continues it. When training starts without a
    restored average (a new run, or fine-tuning from ``init_checkpoint``), the average starts
    from the weights loaded at that point.

    Args:
        model: the trained model (wrapped or not).
        decay: per-step decay (released momentum 1e-4 -> decay 0.9999).
        device: keep the copy on another device (``None``: the model's).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, device: Optional[str] = None):
        from timm.utils import ModelEmaV3

        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self._model = model
        self.decay = decay
        self.ema = ModelEmaV3(unwrap_model(model), decay=decay, device=device)
        self.ema.requires_grad_(False)
        self.restored = False

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode), for evaluation and export."""
        return self.ema.module

    @property
    def checkpointable(self) -> "_EMAState":
        """The average as a checkpointable; loading it marks the average as restored."""
        return _EMAState(self)

    def before_train(self) -> None:
        if not self.restored:
            self.ema.set(unwrap_model(self._model))
            logger.info("EMA of the weights (decay %s) starts from the current weights", self.decay)
        else:
            logger.info("EMA of the weights (decay %s) resumed from the checkpoint", self.decay)

    @torch.no_grad()
    def after_step(self) -> None:
        self.ema.update(unwrap_model(self._model))


class _EMAState:
    # Kept apart from the hook: Detectron2 also saves the state_dict of every hook inside the
    # trainer's state, which would store the average twice.
    def __init__(self, hook: EMAHook):
        self._hook = hook

    def state_dict(self) -> Dict[str, Any]:
        return self._hook.module.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._hook.module.load_state_dict(state)
        self._hook.restored = True


class KeepingPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's ``PeriodicCheckpointer`` whose ``max_to_keep`` also counts earlier processes'
    files.

    Detectron2's hook only deletes files it wrote itself, so every resume would leave up to
    ``max_to_keep`` more behind. This one starts from the ``{file_prefix}_NNNNNNN.pth`` files
    already in the output folder (up to the resumed iteration) and deletes the oldest periodic
    files until at most ``max_to_keep`` remain after each save; ``*_final.pth`` is never deleted.
    """

    def before_train(self) -> None:
        super().before_train()
        if self.max_to_keep is None:
            return
        start = self.trainer.start_iter
        save_dir = self.checkpointer.save_dir
        self.recent_checkpoints = [
            path for it, path in list_checkpoints(save_dir, self.file_prefix) if it < start
        ]

    def step(self, iteration: int, **kwargs: Any) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        if (iteration + 1) % self.period == 0:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(name, **state)
            if self.max_to_keep is not None:
                path = os.path.join(self.checkpointer.save_dir, name + ".pth")
                self.recent_checkpoints = [p for p in self.recent_checkpoints if p != path]
                self.recent_checkpoints.append(path)
                while len(self.recent_checkpoints) > self.max_to_keep:
                    old = self.recent_checkpoints.pop(0)
                    if os.path.isfile(old) and not old.endswith(f"{self.file_prefix}_final.pth"):
                        os.remove(old)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", **state)
