"""MMDetection 2.x training rules that Detectron2's detectors do otherwise (docs/recipes.md).

The released detectors were trained with MMDetection; these classes keep Detectron2's modules and
parameter names and change only what the released training did differently:

* :class:`MaxIoUMatcher`: MMDetection's ``MaxIoUAssigner`` rule for low-quality matches. Each
  ground truth whose best IoU reaches ``min_low_quality`` claims its best predictions (ties
  included), a later ground truth winning a prediction that is best for several; Detectron2
  promotes them whatever the IoU and leaves their match at the arg-max ground truth.
* :class:`ReleasedRCNN` and :class:`ReleasedRetinaNet`: MMDetection's initialisation of the FPN
  and of the heads (:func:`mmdet_head_init_`); the RetinaNet also normalises its losses as
  MMDetection does (:meth:`ReleasedRetinaNet.losses`).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
from detectron2.modeling.matcher import Matcher

from .detectors import CheckedGeneralizedRCNN, CheckedRetinaNet

__all__ = ["MaxIoUMatcher", "ReleasedRCNN", "ReleasedRetinaNet", "mmdet_head_init_"]


class MaxIoUMatcher(Matcher):
    """Detectron2's :class:`Matcher` with MMDetection's low-quality matches.

    Args:
        thresholds, labels: as Detectron2's (e.g. RPN ``[0.3, 0.7]``, ``[0, -1, 1]``).
        allow_low_quality_matches: MMDetection's ``match_low_quality``.
        min_low_quality: MMDetection's ``min_pos_iou``: a ground truth claims its best
            predictions only if their IoU is at least this (RPN 0.3, R-CNN 0.5, RetinaNet 0).
    """

    def __init__(
        self,
        thresholds: List[float],
        labels: List[int],
        allow_low_quality_matches: bool = False,
        min_low_quality: float = 0.0,
    ):
        super().__init__(thresholds, labels, allow_low_quality_matches=False)
        self.mmdet_low_quality = bool(allow_low_quality_matches)
        self.min_low_quality = float(min_low_quality)

    def __call__(self, match_quality_matrix: torch.Tensor):
        matches, match_labels = super().__call__(match_quality_matrix)
        if not self.mmdet_low_quality or match_quality_matrix.numel() == 0:
            return matches, match_labels
        best, _ = match_quality_matrix.max(dim=1)
        # A ground truth that overlaps nothing would claim every prediction (IoU 0 == its best);
        # MMDetection and Detectron2 both drop such boxes from the targets before matching.
        eligible = (best >= self.min_low_quality) & (best > 0)
        claims = (match_quality_matrix == best[:, None]) & eligible[:, None]
        # MMDetection assigns ground truths in order, so the last claim on a prediction wins.
        order = torch.arange(1, claims.shape[0] + 1, device=claims.device)[:, None]
        last = (claims * order).max(dim=0).values
        won = last > 0
        matches[won] = last[won] - 1
        match_labels[won] = 1
        return matches, match_labels


@torch.no_grad()
def mmdet_head_init_(model: nn.Module) -> None:
    """Re-initialise what MMDetection 2.x initialises otherwise than Detectron2.

    The FPN (``model.backbone`` minus its ``bottom_up``): ``Xavier(layer='Conv2d',
    distribution='uniform')``, bias 0, for every conv, the RetinaNet's P6/P7 convs included
    (Detectron2: ``c2_xavier_fill``). The box head's fully connected layers: Xavier uniform
    (``ConvFCBBoxHead``; Detectron2: ``c2_xavier_fill``). The mask predictor: Kaiming normal,
    fan-out (``FCNMaskHead.conv_logits``; Detectron2: normal, std 0.001). The rest already
    agree: RPN and RetinaNet heads normal std 0.01 (RetinaNet's class bias from prior 0.01), box
    head convs and the mask head's convs and deconv Kaiming normal fan-out, box predictors normal
    std 0.01 / 0.001, BatchNorms 1 / 0.
    """
    for name, m in model.backbone.named_modules():
        if name.split(".")[0] == "bottom_up":
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is None:
        return
    for m in roi_heads.box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    predictor = getattr(getattr(roi_heads, "mask_head", None), "predictor", None)
    if predictor is not None:
        nn.init.kaiming_normal_(predictor.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(predictor.bias)


def _check_init(init: str) -> str:
    if init not in ("mmdet", "detectron2"):
        raise ValueError(f"init must be 'mmdet' or 'detectron2', got {init!r}")
    return init


class ReleasedRCNN(CheckedGeneralizedRCNN):
    """Detectron2's ``GeneralizedRCNN`` (input-checked) initialised as MMDetection initialised the
    released one.

    Args:
        init: ``"mmdet"`` (:func:`mmdet_head_init_`) or ``"detectron2"`` (Detectron2's own).
        **kwargs: ``GeneralizedRCNN``'s arguments.
    """

    def __init__(self, *, init: str = "mmdet", **kwargs):
        super().__init__(**kwargs)
        if _check_init(init) == "mmdet":
            mmdet_head_init_(self)


class ReleasedRetinaNet(CheckedRetinaNet):
    """Detectron2's ``RetinaNet`` (input-checked) with MMDetection's initialisation and loss
    normaliser.

    Detectron2 divides the losses by a moving average (momentum 0.9) of the batch's positive
    anchors; MMDetection's ``AnchorHead`` by this batch's count, each image counting at least
    one (``sum(max(positives_i, 1))``), on each GPU.

    Args:
        init: ``"mmdet"`` (:func:`mmdet_head_init_`) or ``"detectron2"``.
        loss_normalizer: ``"mmdet"`` (per batch) or ``"detectron2"`` (moving average).
        **kwargs: ``RetinaNet``'s arguments.
    """

    def __init__(self, *, init: str = "mmdet", loss_normalizer: str = "mmdet", **kwargs):
        super().__init__(**kwargs)
        if loss_normalizer not in ("mmdet", "detectron2"):
            raise ValueError(
                f"loss_normalizer must be 'mmdet' or 'detectron2', got {loss_normalizer!r}"
            )
        self.loss_normalizer_mode = loss_normalizer
        self._batch_positives = 1.0
        if _check_init(init) == "mmdet":
            mmdet_head_init_(self)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        if self.loss_normalizer_mode == "mmdet":
            labels = torch.stack(gt_labels)
            positives = ((labels >= 0) & (labels != self.num_classes)).sum(dim=1)
            self._batch_positives = float(positives.clamp(min=1).sum().item())
        return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def _ema_update(self, name: str, value: float, initial_value: float, momentum: float = 0.9):
        if name == "loss_normalizer" and self.loss_normalizer_mode == "mmdet":
            return self._batch_positives
        return super()._ema_update(name, value, initial_value, momentum)
