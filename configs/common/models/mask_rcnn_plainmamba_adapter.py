"""Mask R-CNN on the PlainMamba-Adapter, as released (docs/model.md#heads).

Detectron2's Mask R-CNN FPN with: the adapter's four levels into a SyncBN FPN (max-pool P6), the
standard RPN, a 4-conv + 1-fc box head with SyncBN and the 4-conv mask head; L1 box losses.
MMDetection's initialisation of the FPN and heads and its low-quality matching rule
(``plainmamba.modeling.mmdet_rules``; docs/recipes.md#coco-1x).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from plainmamba.modeling import PIXEL_MEAN, PIXEL_STD, MaxIoUMatcher, ReleasedRCNN

from .plainmamba_adapter import adapter

model = get_config("common/models/mask_rcnn_fpn.py").model
# CheckedGeneralizedRCNN (rejects images of the wrong shape with a clear error) with
# MMDetection's initialisation of the FPN and heads.
model._target_ = ReleasedRCNN
model.init = "mmdet"
# MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
model.proposal_generator.anchor_matcher = L(MaxIoUMatcher)(
    thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True, min_low_quality=0.3
)
# MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True)
model.roi_heads.proposal_matcher = L(MaxIoUMatcher)(
    thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=True, min_low_quality=0.5
)
model.backbone.bottom_up = adapter
model.backbone.in_features = ["res2", "res3", "res4", "res5"]
model.backbone.norm = "SyncBN"
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)
model.input_format = "RGB"

model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = "SyncBN"
# MMDetection's L1 losses: smooth L1 with beta 0.
model.proposal_generator.smooth_l1_beta = 0.0
model.roi_heads.box_predictor.smooth_l1_beta = 0.0
