"""The EMA of the released ImageNet L2 / L3 recipes (docs/recipes.md#ema-of-the-weights).

The released MMClassification runs used PlainMamba's ``EMACheckpointHook``
(``mmcls/plain_mamba_dev/hooks/ema_checkpoint.py``), which differs from an EMA kept beside the
model (:class:`~plainmamba.engine.hooks.EMAHook`):

* it averages the parameters only; BatchNorm statistics and other buffers stay the model's;
* after every iteration ``ema = (1 - m) * ema + m * weight`` with ``m = min(momentum, (1 + i) /
  (warm_up + i))``; with momentum 1e-4 and warm_up 100 the second term never wins, so the
  "warm-up" changes nothing and ``m`` is 1e-4 from the first step;
* the momentum is multiplied by ``decay_factor`` for each of ``decay_epochs`` that has passed
  (the released code returns ``None`` from epoch 250 on, and ``1 - None`` then raises; here the
  evident intent, 1e-3 from epoch 250, is used; ``decay_epochs=()`` keeps it constant);
* at the end of every epoch it swaps the average into the model, so the checkpoint saved and the
  evaluation run at that point hold the average (the live weights sit in the ``ema_*``
  buffers), and swaps back before the next epoch trains; after the last epoch the model keeps
  the average. The released L2 / L3 checkpoints' ``state_dict`` weights are therefore the
  averages.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.engine import HookBase

from .hooks import unwrap_model

__all__ = ["ReleasedEMAHook"]

logger = logging.getLogger("detectron2.plainmamba.engine")


class ReleasedEMAHook(HookBase):
    """Parameter EMA with the released momentum schedule, swapped in at every epoch's end.

    Register it before the checkpointer and the evaluation hook, and register
    :attr:`checkpointable` with the checkpointer (``checkpointer.add_checkpointable("ema",
    hook.checkpointable)``): a checkpoint then records the other copy of the weights and whether
    the model held the average when it was saved, and ``--resume`` continues exactly.

    Args:
        model: the trained model (wrapped or not).
        iters_per_epoch: iterations of one epoch; the swap happens after each.
        momentum: weight of the new value per step (released 1e-4).
        warm_up: ``m = min(momentum, (1 + i) / (warm_up + i))`` at iteration ``i``.
        decay_epochs: epochs from which the momentum is multiplied by ``decay_factor`` again.
        decay_factor: that multiplier (released 10).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        iters_per_epoch: int,
        momentum: float = 1e-4,
        warm_up: int = 100,
        decay_epochs: Sequence[int] = (250,),
        decay_factor: float = 10.0,
    ):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"EMA momentum must be in (0, 1), got {momentum}")
        if int(iters_per_epoch) <= 0:
            raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
        self._model = model
        self.iters_per_epoch = int(iters_per_epoch)
        self.momentum = float(momentum)
        self.warm_up = int(warm_up)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        named = [(n, p) for n, p in unwrap_model(model).named_parameters()]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self._params]
        self.swapped = False  # True while the model holds the average and ``shadow`` the weights
        self.restored = False

    @property
    def module(self) -> Optional[nn.Module]:
        """``None``: the average lives in the model itself at evaluation time."""
        return None

    @property
    def checkpointable(self) -> "_ReleasedEMAState":
        return _ReleasedEMAState(self)

    def momentum_at(self, iteration: int) -> float:
        """The released momentum of the update after ``iteration`` (0-based)."""
        m = min(self.momentum, (1 + iteration) / (self.warm_up + iteration))
        epoch = iteration // self.iters_per_epoch
        return m * self.decay_factor ** sum(epoch >= e for e in self.decay_epochs)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's parameters and ``shadow`` (in place: optimizer state stays)."""
        for param, other in zip(self._params, self.shadow):
            tmp = param.detach().clone()
            param.copy_(other)
            other.copy_(tmp)
        self.swapped = not self.swapped

    @torch.no_grad()
    def before_train(self) -> None:
        if not self.restored:
            # As released (before_run): the average starts from the weights training starts with.
            for param, avg in zip(self._params, self.shadow):
                avg.copy_(param)
            logger.info("Released EMA (momentum %g) starts from the current weights", self.momentum)
        else:
            logger.info("Released EMA resumed from the checkpoint (swapped=%s)", self.swapped)

    def before_step(self) -> None:
        if self.swapped:  # the released before_train_epoch: the live weights train again
            self.swap()

    @torch.no_grad()
    def after_step(self) -> None:
        iteration = self.trainer.iter
        m = self.momentum_at(iteration)
        torch._foreach_mul_(self.shadow, 1.0 - m)
        torch._foreach_add_(self.shadow, [p.detach() for p in self._params], alpha=m)
        if (iteration + 1) % self.iters_per_epoch == 0:
            # The released after_train_epoch: the average goes into the model before the
            # checkpointer and the evaluation of this step.
            self.swap()


class _ReleasedEMAState:
    # Kept apart from the hook, as for EMAHook: Detectron2 also saves the state of every hook.
    def __init__(self, hook: ReleasedEMAHook):
        self._hook = hook

    def state_dict(self) -> Dict[str, Any]:
        return {
            "shadow": {n: t for n, t in zip(self._hook._names, self._hook.shadow)},
            "swapped": self._hook.swapped,
        }

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"shadow", "swapped"}:
            raise ValueError(
                "the checkpoint's 'ema' entry is not a released-EMA state (saved with another "
                "train.ema.kind?); keys: " + ", ".join(sorted(map(str, state))[:5])
            )
        shadow = state["shadow"]
        missing = [n for n in self._hook._names if n not in shadow]
        if missing:
            raise KeyError(f"released EMA state lacks {len(missing)} parameters: {missing[:5]}")
        for name, avg in zip(self._hook._names, self._hook.shadow):
            avg.copy_(shadow[name])
        self._hook.swapped = bool(state["swapped"])
        self._hook.restored = True
