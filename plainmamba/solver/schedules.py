"""Schedules: epoch-based recipes in iterations, and MMCV's multiplicative warm-up."""

from __future__ import annotations

from typing import Callable, Dict

from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["MMCVWarmupParamScheduler", "epoch_schedule"]


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


class MMCVWarmupParamScheduler(ParamScheduler):
    """A warm-up that multiplies the schedule's own value, as MMCV 1.x's ``LrUpdaterHook`` does.

    MMCV's linear warm-up at iteration ``i < W`` uses ``regular(i) * (1 - (1 - i / W) * (1 -
    ratio))``: the main schedule (cosine, poly) runs from iteration 0 and the ramp scales it.
    Detectron2's ``WarmupParamScheduler`` instead interpolates linearly between ``ratio *
    regular(0)`` and ``regular(W)``; the two differ by up to about 1% during the warm-up.

    Args:
        scheduler: the main schedule, a function of the progress ``where`` in [0, 1].
        warmup_factor: MMCV's ``warmup_ratio``, the multiplier at iteration 0.
        warmup_length: warm-up iterations / total iterations.
        warmup_method: ``"linear"`` or ``"constant"`` (MMCV's two non-exponential modes).
    """

    def __init__(
        self,
        scheduler: Callable[[float], float],
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
    ):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
        if not 0.0 <= warmup_length < 1.0:
            raise ValueError(f"warmup_length must be in [0, 1), got {warmup_length}")
        self.scheduler = scheduler
        self.warmup_factor = float(warmup_factor)
        self.warmup_length = float(warmup_length)
        self.warmup_method = warmup_method

    def __call__(self, where: float) -> float:
        value = self.scheduler(where)
        if where >= self.warmup_length:
            return value
        if self.warmup_method == "constant":
            return value * self.warmup_factor
        k = (1.0 - where / self.warmup_length) * (1.0 - self.warmup_factor)
        return value * (1.0 - k)
