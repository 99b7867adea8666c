"""RetinaNet on the PlainMamba-Adapter, as released (docs/model.md#heads).

The adapter's strides 8-32 into a SyncBN FPN whose P6/P7 come from P5's output through two
normalised 3x3 stride-2 convs (no ReLU between them), the 4-conv RetinaNet head, focal loss
(alpha 0.25, gamma 2) and an L1 box loss. MMDetection's initialisation of the FPN, its
low-quality matching rule and its loss normaliser (the batch's positive anchors, each image
counting at least one; ``plainmamba.modeling.mmdet_rules``; docs/recipes.md#coco-1x).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from plainmamba.modeling import (
    PIXEL_MEAN,
    PIXEL_STD,
    LastLevelP6P7Conv,
    MaxIoUMatcher,
    ReleasedRetinaNet,
)

from .plainmamba_adapter import adapter

model = get_config("common/models/retinanet.py").model
# CheckedRetinaNet (rejects images of the wrong shape with a clear error) with MMDetection's
# initialisation of the FPN and its loss normaliser.
model._target_ = ReleasedRetinaNet
model.init = "mmdet"
model.loss_normalizer = "mmdet"
# MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0), match_low_quality's default True
model.anchor_matcher = L(MaxIoUMatcher)(
    thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True, min_low_quality=0.0
)
model.backbone.bottom_up = adapter
model.backbone.bottom_up.out_features = ["res3", "res4", "res5"]
model.backbone.in_features = ["res3", "res4", "res5"]
model.backbone.norm = "SyncBN"
model.backbone.top_block = L(LastLevelP6P7Conv)(
    in_channels="${..out_channels}", out_channels="${..out_channels}", norm="${..norm}"
)
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)
model.input_format = "RGB"
model.smooth_l1_beta = 0.0
