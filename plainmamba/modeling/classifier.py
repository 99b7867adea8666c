"""Image classification meta-architecture for Detectron2's engine.

Takes Detectron2-style inputs ``[{"image": (3, H, W) RGB tensor in 0-255, "label": int}, ...]``,
returns ``{"loss_cls": ...}`` in training and ``[{"logits": (num_classes,)}]`` in eval mode.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inputs import check_image_inputs
from .plainmamba import PlainMamba

__all__ = [
    "ImageClassifier",
    "LinearClsHead",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "released_classifier_init_",
    "soft_target_cross_entropy",
]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class LinearClsHead(nn.Module):
    """Mean-pool the tokens, then one linear layer (released name ``head.fc``)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(tokens.mean(dim=1)))


class ImageClassifier(nn.Module):
    """A PlainMamba trunk with a pooled linear head.

    Args:
        backbone: the trunk; its final tokens (after ``ln1``) are pooled.
        num_classes: classifier outputs.
        pixel_mean, pixel_std: RGB normalisation in 0-255 units.
        label_smoothing: for the hard-label cross-entropy loss.
        head_dropout: dropout before the classifier.
        batch_augment: applied in training to the normalised batch and its labels, returning
            soft targets (:class:`~plainmamba.modeling.BatchAugment`: Random Erasing, Mixup /
            CutMix, label smoothing); the loss is then the soft-target cross-entropy.
        init: ``"released"`` re-initialises the whole classifier as the released recipe did
            (:func:`released_classifier_init_`: every ``nn.Linear``, ``dt_proj`` included,
            truncated normal std 0.02 with zero bias, so ``dt_proj``'s bias starts at 0), the
            initialisation behind the published weights; ``"mamba"`` keeps the trunk's own
            (Mamba's ``dt_proj`` initialisation) and a truncated-normal head.
    """

    def __init__(
        self,
        *,
        backbone: PlainMamba,
        num_classes: int = 1000,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        label_smoothing: float = 0.0,
        head_dropout: float = 0.0,
        batch_augment: Optional[nn.Module] = None,
        init: str = "released",
    ):
        super().__init__()
        if init not in ("released", "mamba"):
            raise ValueError(f"init must be 'released' or 'mamba', got {init!r}")
        self.backbone = backbone
        self.head = LinearClsHead(backbone.embed_dim, num_classes, head_dropout)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.batch_augment = batch_augment
        if batch_augment is not None and getattr(batch_augment, "num_classes", num_classes) != (
            num_classes
        ):
            raise ValueError(
                f"batch_augment.num_classes={batch_augment.num_classes} differs from the "
                f"classifier's num_classes={num_classes}"
            )
        # Not persistent: checkpoints hold only learned state, as the released ones do.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.init = init
        if init == "released":
            released_classifier_init_(self)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """Validate, stack and normalise the images of a batch (all of one size)."""
        images = check_image_inputs(batched_inputs, self.backbone.in_chans, type(self).__name__)
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise ValueError(
                f"all images of a classification batch must have one size, got {sizes}"
            )
        x = torch.stack(images).to(self.device, non_blocking=True).float()
        return (x - self.pixel_mean) / self.pixel_std

    def forward(
        self, batched_inputs: List[Dict[str, Any]]
    ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        x = self.preprocess_image(batched_inputs)
        if not self.training:
            return [{"logits": row} for row in self.head(self.backbone.forward_features(x)[0])]
        if self.batch_augment is not None and not all("soft_label" in r for r in batched_inputs):
            x, target = self.batch_augment(x, self.labels(batched_inputs))
            logits = self.head(self.backbone.forward_features(x)[0])
            return {"loss_cls": soft_target_cross_entropy(logits, target)}
        logits = self.head(self.backbone.forward_features(x)[0])
        return {"loss_cls": self.losses(logits, batched_inputs)}

    def labels(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """The ``label`` ints of a batch as a tensor on the model's device, range-checked."""
        missing: Optional[int] = next(
            (i for i, r in enumerate(batched_inputs) if "label" not in r), None
        )
        if missing is not None:
            raise ValueError(f"training input {missing} has no 'label' (or 'soft_label')")
        labels = torch.as_tensor([int(r["label"]) for r in batched_inputs], device=self.device)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(f"label {int(bad[0])} outside [0, {self.num_classes})")
        return labels

    def losses(self, logits: torch.Tensor, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """Cross-entropy on ``label`` (int) or soft-target cross-entropy on ``soft_label``."""
        if all("soft_label" in r for r in batched_inputs):
            target = torch.stack([torch.as_tensor(r["soft_label"]) for r in batched_inputs])
            return soft_target_cross_entropy(logits, target.to(logits.device))
        labels = self.labels(batched_inputs)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


@torch.no_grad()
def released_classifier_init_(model: ImageClassifier) -> None:
    """The initialisation ``model.init_weights()`` gave the released MMClassification classifier.

    MMCV applies the classifier's ``init_cfg`` first, to every submodule by class name:
    ``TruncNormal(layer='Linear', std=0.02, bias=0)`` reaches every ``nn.Linear`` (MMCV does not
    know Mamba's ``_no_reinit`` mark, so ``dt_proj`` loses its Mamba initialisation: weight
    truncated normal, bias 0) and ``Constant(layer='LayerNorm', val=1, bias=0)`` every
    ``LayerNorm``. Then the children's own ``init_weights`` run: the trunk redraws ``pos_embed``
    (truncated normal, std 0.02) and ``LinearClsHead``'s default ``init_cfg``,
    ``Normal(layer='Linear', std=0.01)``, redraws the classifier (bias 0). Convolutions and
    BatchNorms keep PyTorch's defaults; ``A_log``, ``D`` and ``direction_Bs`` keep theirs.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    pos_embed = getattr(model.backbone, "pos_embed", None)
    if pos_embed is not None:
        nn.init.trunc_normal_(pos_embed, std=0.02, a=-2.0, b=2.0)
    nn.init.normal_(model.head.fc.weight, std=0.01)
    nn.init.zeros_(model.head.fc.bias)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(target * log_softmax(logits))``, computed in float32."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return torch.sum(-target.to(log_p.dtype) * log_p, dim=-1).mean()
