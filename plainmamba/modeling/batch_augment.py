"""Batch-level augmentation of the ImageNet recipe: Random Erasing, Mixup / CutMix, smoothing.

These act on the normalised batch on the training device, where timm applies them (after its
prefetcher), and they turn hard labels into soft targets for a soft-target cross-entropy.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

__all__ = ["BatchAugment"]


class BatchAugment(nn.Module):
    """Random Erasing, then Mixup or CutMix, with label smoothing; built from timm's classes.

    Args:
        num_classes: width of the soft targets.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables one. Released: 0.8 and 1.0.
        switch_prob: chance of CutMix instead of Mixup when both are on (released 0.5).
        prob: chance of mixing a batch at all (released 1.0).
        label_smoothing: folded into the soft targets (released 0.1).
        erasing_prob: chance of erasing one rectangle per image, filled with per-pixel normal
            noise in normalised units (MMClassification's ``mode='rand'``; released 0.25).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
        erasing_prob: float = 0.25,
    ):
        super().__init__()
        from timm.data import Mixup

        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.erasing_prob = erasing_prob
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=prob,
                switch_prob=switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self._erasers: dict = {}

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        from timm.data.random_erasing import RandomErasing

        key = str(x.device)
        eraser = self._erasers.get(key)
        if eraser is None:
            eraser = self._erasers[key] = RandomErasing(
                probability=self.erasing_prob, mode="pixel", device=key
            )
        return eraser(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W)`` normalised images, ``(N,)`` int labels -> images, ``(N, K)`` targets."""
        if self.erasing_prob > 0:
            x = self._erase(x)
        if self.mixup is not None:
            if x.shape[0] % 2:
                raise ValueError(
                    f"Mixup/CutMix pairs images within a batch and needs an even number of "
                    f"images per process, got {x.shape[0]}: change dataloader.train.total_batch_size"
                )
            return self.mixup(x, labels)
        from timm.data.mixup import one_hot

        off = self.label_smoothing / self.num_classes
        target = one_hot(
            labels, self.num_classes, on_value=1.0 - self.label_smoothing + off, off_value=off
        )
        return x, target
